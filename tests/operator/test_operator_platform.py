"""Cluster platform fit (issue 13) through the real operator process against the emulator: gated-model
tokens by reference only, Kueue queueing, locked-down stage pods."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kmock_cluster import EmulatedCluster
from operator_harness import CT, CTS, JobController, OperatorProcess, campaign_body, events_for, wait_status

pytestmark = pytest.mark.timeout(120)

NS = "team-a"
TOKEN = "hf_emulatorSecretTokenValue42"


@pytest.fixture(scope="module")
def operator(cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator-platform")
    op = OperatorProcess(cluster.write_kubeconfig(workdir / "kubeconfig"), workdir, "default,team-a")
    op.start()
    try:
        yield op
    finally:
        op.stop()


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_hub_token_reaches_pods_by_reference_and_never_appears_anywhere(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "gated"
    cluster.create("v1", "secrets", {"kind": "Secret", "metadata": {"name": "hf-gated"},
                                     "data": {"HF_TOKEN": base64.b64encode(TOKEN.encode()).decode()}},
                   namespace=NS)
    body = campaign_body(name, model={"uri": "hf://meta-llama/Llama-3.2-1B-Instruct", "tokenSecret": "hf-gated"})
    cluster.create(CT, CTS, body, namespace=NS)

    prepare = jobs.wait_job(NS, name, "prepare")
    assert env_of(prepare)["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "hf-gated", "key": "HF_TOKEN"}}}
    jobs.succeed(prepare, {"selection": 10, "scan": 10, "eval": 10})
    baseline = jobs.wait_job(NS, name, "baseline-evaluate")
    assert "secretKeyRef" in env_of(baseline)["HF_TOKEN"]["valueFrom"]
    # A worker failure whose (already redacted) message is folded into status, Events and the retry.
    jobs.fail(baseline, exit_code=75, message='{"key": "baseline-evaluate", "ok": false, "retryable": true, '
                                              '"message": "OSError: 401 for hf://meta-llama/... token ***"}')
    jobs.wait_job(NS, name, "baseline-evaluate", attempt=2)
    wait_status(cluster, NS, name, "baseline retried", lambda s: s["stages"][-1]["attempt"] == 2)

    # The value exists only in the Secret: not in any Job, the status, an Event or the operator's log.
    everywhere = json.dumps([jobs.jobs(NS, name), cluster.get(CT, CTS, NS, name), events_for(cluster, NS, name)])
    assert "hf-gated" in everywhere and TOKEN not in everywhere
    assert TOKEN not in operator.logs()
    # The operator never even reads Secrets (the RBAC it is granted has none).
    assert not [r for r in cluster.requests_snapshot() if "/secrets" in r.url.path
                and "operator-tests" not in r.headers.get("User-Agent", "")]
