"""Fail closed, against the emulator with the real operator: permanent API errors end a campaign Failed,
transient ones are retried with backoff, an over-long name fails at once, a deleted Job counts as an
attempt, and the tenant rules hold even without an admission policy."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from kmock_cluster import EmulatedCluster
from operator_harness import (
    CT,
    CTS,
    JobController,
    OperatorProcess,
    campaign_body,
    condition,
    events_for,
    get_ct,
    wait_events,
    wait_status,
)

pytestmark = pytest.mark.timeout(120)

NS = "default"
JOBS_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs"


@pytest.fixture
def faults(cluster: EmulatedCluster) -> Iterator[EmulatedCluster]:
    try:
        yield cluster
    finally:
        cluster.clear_faults()


def _job_posts(cluster: EmulatedCluster, name: str) -> list[float]:
    assert cluster.server is not None
    posts = [(t, obj, agent) for t, method, path, obj, agent in list(cluster.server.timeline)
             if method == "POST" and path == JOBS_PATH]
    return [t for t, obj, agent in posts if obj == name and agent.startswith("consistency-operator")]


@pytest.mark.parametrize(("status", "reason", "message"), [
    (422, "Invalid", 'Job.batch "x" is invalid: metadata.labels: Invalid value: must be no more than 63 characters'),
    (403, "Forbidden", 'jobs.batch is forbidden: ValidatingAdmissionPolicy "consistency-tenants" denied request'),
    (400, "BadRequest", "quantities must match the regular expression"),
    (404, "NotFound", 'namespaces "default" not found'),
])
def test_a_permanent_api_error_fails_the_campaign_with_the_servers_message(
        faults: EmulatedCluster, operator: OperatorProcess, status: int, reason: str, message: str) -> None:
    name = f"refused-{status}"
    faults.inject_fault("POST", JOBS_PATH, status, reason, message)
    faults.create(CT, CTS, campaign_body(name), namespace=NS)

    obj = wait_status(faults, NS, name, "Failed", lambda s: s["phase"] == "Failed")
    failed = condition(obj, "Failed")
    assert failed["reason"] == "ApiRefused"
    assert message in failed["message"] and f"HTTP {status}" in failed["message"]
    assert obj["status"]["stages"][0]["outcome"] == "Failed"  # the stage whose Job was refused
    events = wait_events(faults, NS, name, "ApiRefused", "CampaignFailed")
    assert all(e["type"] == "Warning" for e in events if e["reason"] in ("ApiRefused", "CampaignFailed"))
    # Failed is final: no further create attempts.
    assert len(_job_posts(faults, f"{name}-prepare")) == 1


def test_a_server_error_is_retried_with_backoff_until_the_job_is_created(
        faults: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "flaky-500"
    faults.inject_fault("POST", JOBS_PATH, 500, "InternalError", "etcdserver: request timed out", times=2)
    faults.create(CT, CTS, campaign_body(name), namespace=NS)

    jobs.wait_job(NS, name, "prepare", timeout=40)
    obj = get_ct(faults, NS, name)
    assert obj["status"]["phase"] == "Running" and condition(obj, "Failed") is None
    posts = _job_posts(faults, f"{name}-prepare")
    assert len(posts) == 3  # two refused, the third created
    gaps = [b - a for a, b in itertools.pairwise(posts)]
    # Backoff 5 s then 10 s (apierrors.backoff): never a tight loop.
    assert gaps[0] >= 4.5 and gaps[1] >= 9.5, gaps


def test_a_name_too_long_for_job_names_and_labels_fails_at_once(
        cluster: EmulatedCluster, operator: OperatorProcess) -> None:
    name = "n" * 100  # a real API server refuses it by the CRD's CEL rule; the operator too
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    obj = wait_status(cluster, NS, name, "Failed", lambda s: s["phase"] == "Failed")
    failed = condition(obj, "Failed")
    assert failed["reason"] == "InvalidName" and "metadata.name: 100 characters; at most 30" in failed["message"]
    wait_events(cluster, NS, name, "InvalidName")
    assert not cluster.list("batch/v1", "jobs", NS, labels={"consistency.dev/campaign": name})


def test_a_name_taken_by_an_unowned_job_fails_instead_of_waiting_forever(
        cluster: EmulatedCluster, operator: OperatorProcess) -> None:
    name = "squatted"
    cluster.create("batch/v1", "jobs", {"kind": "Job", "metadata": {"name": f"{name}-prepare"},
                                        "spec": {"template": {"spec": {"containers": []}}}}, namespace=NS)
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    obj = wait_status(cluster, NS, name, "Failed", lambda s: s["phase"] == "Failed")
    assert condition(obj, "Failed")["reason"] == "ApiRefused"
    assert "nothing will remove it" in obj["status"]["message"]


def _stage_records(obj: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [s for s in obj["status"]["stages"] if s["key"] == key]


def test_a_deleted_job_is_an_attempt_with_a_warning_and_stage_retries_runs_out(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "deleted-job"
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)  # retry.stageRetries: 1
    first = jobs.wait_job(NS, name, "prepare")
    wait_status(cluster, NS, name, "prepare recorded", lambda s: s["stages"][0]["jobName"] == f"{name}-prepare")

    cluster.delete("batch/v1", "jobs", NS, first["metadata"]["name"])
    second = jobs.wait_job(NS, name, "prepare", attempt=2)
    assert second["metadata"]["name"] == f"{name}-prepare-a2"
    obj = wait_status(cluster, NS, name, "attempt 2 recorded", lambda s: len(s["stages"]) == 2)
    [one, two] = _stage_records(obj, "prepare")
    assert one["outcome"] == "Deleted" and "deleted outside the operator" in one["message"]
    assert two["outcome"] == "Running" and two["attempt"] == 2
    [warning] = [e for e in wait_events(cluster, NS, name, "JobDeleted") if e["reason"] == "JobDeleted"]
    assert warning["type"] == "Warning" and f"Job {name}-prepare was deleted" in warning["message"]

    cluster.delete("batch/v1", "jobs", NS, second["metadata"]["name"])
    obj = wait_status(cluster, NS, name, "Failed after the retries", lambda s: s["phase"] == "Failed")
    assert [s["outcome"] for s in _stage_records(obj, "prepare")] == ["Deleted", "Deleted"]
    assert "failed after 2 attempt(s)" in obj["status"]["message"]
    assert not cluster.get("batch/v1", "jobs", NS, f"{name}-prepare-a3")
    assert sum(e["reason"] == "JobDeleted" for e in events_for(cluster, NS, name)) >= 1


# ---- tenants -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def operator(cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The chart's defaults: no ServiceAccount/RuntimeClass overrides, images from allowed registries only,
    default store credentials only under s3://campaigns/<namespace>/."""
    workdir = tmp_path_factory.mktemp("operator-fenced")
    op = OperatorProcess(cluster.write_kubeconfig(workdir / "kubeconfig"), workdir, "default,team-a", {
        "CONSISTENCY_ALLOW_RUNTIME_CLASS_OVERRIDE": "false",
        "CONSISTENCY_ALLOWED_REGISTRIES": "registry.test/,ghcr.io/consistency-dev/"})
    op.start()
    try:
        yield op
    finally:
        op.stop()


def _refused_spec(cluster: EmulatedCluster, name: str, field: str) -> dict[str, Any]:
    obj = wait_status(cluster, NS, name, f"refused for {field}",
                      lambda s: any(c["type"] == "Ready" and c["status"] == "False" and field in c["message"]
                                    for c in s["conditions"]))
    assert condition(obj, "Ready")["reason"] == "InvalidSpec" and not obj["status"].get("stages")
    wait_events(cluster, NS, name, "InvalidSpec")
    assert not cluster.list("batch/v1", "jobs", NS, labels={"consistency.dev/campaign": name})
    return obj


@pytest.mark.parametrize(("name", "resources", "field"), [
    ("fence-image", {"workerImage": "evil.example/miner:latest"}, "spec.resources.workerImage"),
    ("fence-sa", {"serviceAccountName": "cluster-admin-sa"}, "spec.resources.serviceAccountName"),
    ("fence-runtime", {"runtimeClassName": "runc-privileged"}, "spec.resources.runtimeClassName"),
    ("fence-toleration", {"tolerations": [{"operator": "Exists"}]}, "spec.resources.tolerations[0]"),
    ("fence-cpu-toleration", {"cpuTolerations": [{"operator": "Exists", "effect": "NoExecute"}]},
     "spec.resources.cpuTolerations[0]"),
])
def test_a_tenant_cannot_ask_for_other_images_identities_runtimes_or_every_taint(
        cluster: EmulatedCluster, operator: OperatorProcess, name: str, resources: dict[str, Any],
        field: str) -> None:
    body = campaign_body(name)
    body["spec"]["resources"].update(resources)
    cluster.create(CT, CTS, body, namespace=NS)
    _refused_spec(cluster, name, field)


def test_an_allowed_image_runs(cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    body = campaign_body("fence-ok-image")
    body["spec"]["resources"]["workerImage"] = "ghcr.io/consistency-dev/consistency-worker:0.2.0"
    cluster.create(CT, CTS, body, namespace=NS)
    job = jobs.wait_job(NS, "fence-ok-image", "prepare")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == body["spec"]["resources"]["workerImage"]


@pytest.mark.parametrize(("name", "store"), [
    ("deputy-bucket", {"uri": "s3://attacker-bucket/loot"}),
    ("deputy-other-ns", {"uri": "s3://campaigns/team-a/runs"}),
    ("deputy-endpoint", {"uri": "s3://campaigns/default/runs", "endpoint": "https://evil.example"}),
])
def test_default_store_credentials_are_not_lent_outside_the_namespaces_prefix(
        cluster: EmulatedCluster, operator: OperatorProcess, name: str, store: dict[str, str]) -> None:
    cluster.create(CT, CTS, campaign_body(name, store=store), namespace=NS)
    obj = _refused_spec(cluster, name, "spec.store.credentialsSecret")
    assert "under s3://campaigns/default/" in condition(obj, "Ready")["message"]


def test_default_store_credentials_are_lent_under_the_namespaces_prefix(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "deputy-ok"
    cluster.create(CT, CTS, campaign_body(name, store={"uri": "s3://campaigns/default/runs"}), namespace=NS)
    job = jobs.wait_job(NS, name, "prepare")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "default-store-creds"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://store.default.svc:9000"  # the operator's own


def test_a_campaign_started_before_the_name_limit_keeps_running(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "an-older-campaign-with-a-long-name-x"  # 36 characters: over today's 30, within the label limit
    body = campaign_body(name)
    # As an earlier operator left it: prepare done (KMock keeps a status given on create).
    body["status"] = {"phase": "Running", "trainingPhase": "1B.1", "iteration": 1, "stages": [
        {"key": "prepare", "stage": "prepare", "phase": "1B.1", "iteration": 1, "attempt": 1,
         "jobName": f"{name}-prepare", "outcome": "Succeeded", "startTime": "2026-01-01T00:00:00Z",
         "endTime": "2026-01-01T00:05:00Z"}]}
    cluster.create(CT, CTS, body, namespace=NS)
    job = jobs.wait_job(NS, name, "baseline-evaluate")
    assert len(job["metadata"]["name"]) <= 52 and job["metadata"]["labels"]["consistency.dev/campaign"] == name
    assert get_ct(cluster, NS, name)["status"]["phase"] == "Running"
