"""Fixtures: one KMock API server and one real operator process per test module."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("kmock")
pytest.importorskip("kopf")

# The helpers live next to this file; make them importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kmock_cluster import EmulatedCluster
from operator_harness import JobController, OperatorProcess


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    workdir = tmp_path_factory.mktemp("kmock")
    c = EmulatedCluster(workdir, namespaces=("default", "team-a", "unwatched")).start()
    c.http.headers["User-Agent"] = "operator-tests"
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def operator(cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(cluster.write_kubeconfig(workdir / "kubeconfig"), workdir, "default,team-a")
    op.start()
    try:
        yield op
    finally:
        op.stop()
        if os.environ.get("CONSISTENCY_TEST_SHOW_LOGS"):
            print(op.logs())


@pytest.fixture(scope="module")
def jobs(cluster: EmulatedCluster) -> JobController:
    return JobController(cluster)
