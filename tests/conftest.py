"""Shared fixtures: a real S3 server over HTTP (moto's server mode) and the reference datasets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"

# Fake credentials: the moto server accepts any; real ones must never be picked up by tests.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-log",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    # Short retries so failure-mode tests stay fast; the bound is what they check.
    "CONSISTENCY_S3_MAX_ATTEMPTS": "2",
    "CONSISTENCY_S3_CONNECT_TIMEOUT": "1",
    "CONSISTENCY_S3_READ_TIMEOUT": "5",
}


class S3Server:
    """A moto S3 server on a free localhost port; `stop()` really closes the socket."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        self._server.stop()
        # ThreadedMotoServer.stop() leaves the listening socket open: clients would hang, not fail.
        wsgi = self._server._server
        if wsgi is not None:
            wsgi.server_close()
        self.running = False

    def env(self) -> dict[str, str]:
        return {**S3_TEST_ENV, "AWS_ENDPOINT_URL": self.endpoint}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server")
    server = S3Server()
    yield server
    server.stop()


def _reset_default_store() -> None:
    from consistency_worker.store import facade as store

    store._default = None


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment pointing boto3 (and the worker's store) at the test S3 server."""
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    _reset_default_store()
    yield env
    _reset_default_store()


def make_bucket(endpoint: str, name: str | None = None) -> str:
    import boto3

    name = name or f"test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_bucket(s3_env: dict[str, str]) -> str:
    """A fresh, empty bucket on the test server; returns `s3://<bucket>`."""
    return "s3://" + make_bucket(s3_env["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The reference datasets beside the repository (../shared/datasets); skip when absent."""
    if not (SHARED_DATASETS / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"reference datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
