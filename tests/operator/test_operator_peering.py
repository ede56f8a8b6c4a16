"""Active/standby pair through kopf peering: only the higher priority acts; the standby takes over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kmock_cluster import EmulatedCluster
from operator_harness import CT, CTS, JobController, OperatorProcess, campaign_body, wait_status

pytestmark = pytest.mark.timeout(120)

NS = "peered"
PEERING = "consistency-operator"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatedCluster, OperatorProcess,
                                                                     OperatorProcess]]:
    workdir: Path = tmp_path_factory.mktemp("peering")
    cluster = EmulatedCluster(workdir, namespaces=(NS,)).start()
    cluster.http.headers["User-Agent"] = "operator-tests"
    # What the Helm chart installs next to the Deployment when peering is on.
    cluster.create("kopf.dev/v1", "kopfpeerings", {"kind": "KopfPeering", "metadata": {"name": PEERING}},
                   namespace=NS)
    env = {"CONSISTENCY_PEERING": PEERING, "CONSISTENCY_PEERING_LIFETIME": "3"}
    kubeconfig = cluster.write_kubeconfig()
    active = OperatorProcess(kubeconfig, workdir, NS, {**env, "CONSISTENCY_PRIORITY": "20"}, name="active")
    standby = OperatorProcess(kubeconfig, workdir, NS, {**env, "CONSISTENCY_PRIORITY": "10"}, name="standby")
    active.start()
    standby.start()
    try:
        yield cluster, active, standby
    finally:
        standby.stop()
        active.stop()
        cluster.stop()


def test_standby_stays_idle_then_takes_over(
        pair: tuple[EmulatedCluster, OperatorProcess, OperatorProcess]) -> None:
    cluster, active, standby = pair
    jobs = JobController(cluster)
    # Both have announced themselves in the peering object before anything happens.
    cluster.wait_for("both peers registered", lambda: len(
        (cluster.get("kopf.dev/v1", "kopfpeerings", NS, PEERING) or {}).get("status") or {}) == 2)
    cluster.wait_for("active resumed", lambda: "Resuming the watch-stream for consistencytrainings" in active.logs())
    assert "Pausing the watch-stream for consistencytrainings" in standby.logs()

    cluster.create(CT, CTS, campaign_body("ha"), namespace=NS)
    jobs.succeed(jobs.wait_job(NS, "ha", "prepare"), {"selection": 10, "scan": 10, "eval": 10})
    jobs.wait_job(NS, "ha", "baseline-evaluate")
    assert "Handler 'reconcile' succeeded" in active.logs()
    assert "Handler 'reconcile'" not in standby.logs()
    assert "Resuming the watch-stream for consistencytrainings" not in standby.logs()

    active.kill()  # no goodbye: the standby must notice the silence (peering lifetime 3 s)
    jobs.succeed(jobs.wait_job(NS, "ha", "baseline-evaluate"),
                 {"problems": 10, "consistency": 0.1, "meanAgreement": 0.4, "accuracy": {"math": 0.4}})
    jobs.wait_job(NS, "ha", "1b1-i1-generate", timeout=30)
    obj = wait_status(cluster, NS, "ha", "generate running", lambda s: s["stage"] == "1b1-i1-generate")
    assert [s["outcome"] for s in obj["status"]["stages"]] == ["Succeeded", "Succeeded", "Running"]
    assert "Resuming operations" in standby.logs()
    assert len(jobs.jobs(NS, "ha")) == 3

    # The peering rules of rbac.py are the ones a pair uses (namespaced peering here).
    from consistency_operator import rbac
    called = cluster.rbac_used("consistency-operator") | cluster.rbac_used("kopf/")
    peering_called = {r for r in called if r[0] == "kopf.dev"}
    assert peering_called == {r for r in rbac.PEERING_PERMISSIONS if r[1] == "kopfpeerings"}
