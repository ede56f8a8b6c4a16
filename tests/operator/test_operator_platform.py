"""Cluster platform fit (issue 13) through the real operator process against the emulator: gated-model
tokens by reference only, Kueue queueing, locked-down stage pods."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from consistency_core.names import parse_rfc3339
from kmock_cluster import EmulatedCluster
from operator_harness import (
    CT,
    CTS,
    JobController,
    OperatorProcess,
    campaign_body,
    events_for,
    get_ct,
    wait_events,
    wait_status,
)

pytestmark = pytest.mark.timeout(120)

NS = "team-a"
TOKEN = "hf_emulatorSecretTokenValue42"


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


def test_kueue_job_stays_queued_until_admitted_and_the_wait_costs_nothing(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "queued"
    body = campaign_body(name)
    body["spec"]["resources"]["queueName"] = "gpu-queue"
    cluster.create(CT, CTS, body, namespace=NS)
    jobs.succeed(jobs.wait_job(NS, name, "prepare"), {"selection": 10, "scan": 10, "eval": 10})

    baseline = jobs.wait_job(NS, name, "baseline-evaluate")
    assert baseline["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert baseline["spec"]["suspend"] is True  # no pod before admission
    assert baseline["spec"]["activeDeadlineSeconds"] == 6 * 3600  # Kubernetes counts it from resumption
    obj = wait_status(cluster, NS, name, "baseline queued",
                      lambda s: s["stage"] == "baseline-evaluate" and s["stageStatus"] == "Queued")
    record = obj["status"]["stages"][-1]
    assert record["outcome"] == "Queued" and record["queuedTime"]
    assert "waits for admission in queue gpu-queue" in obj["status"]["message"]

    # The queue keeps it suspended a while (status updates arrive meanwhile): it stays Queued, one Event.
    meta = baseline["metadata"]
    cluster.patch("batch/v1", "jobs", NS, meta["name"], {"status": {"conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}}, sub="status")
    time.sleep(2.2)  # real queue time passes (status times have one-second resolution)
    assert get_ct(cluster, NS, name)["status"]["stageStatus"] == "Queued"

    # Admission: the queue unsuspends the Job.
    cluster.patch("batch/v1", "jobs", NS, meta["name"], {"spec": {"suspend": False}})
    obj = wait_status(cluster, NS, name, "baseline admitted", lambda s: s["stageStatus"] == "Running")
    record = obj["status"]["stages"][-1]
    assert record["outcome"] == "Running" and "queuedTime" not in record
    assert record["queuedSeconds"] >= 2
    events = wait_events(cluster, NS, name, "Queued", "Admitted")
    queued = [e for e in events if e["reason"] == "Queued"]
    assert [e["message"].split(" ")[0] for e in queued] == ["prepare", "baseline-evaluate"]  # once per Job

    # The worker reports no duration of its own: cost is measured from admission, not from creation.
    jobs.succeed(cluster.get("batch/v1", "jobs", NS, meta["name"]), {"problems": 10, "consistency": 0.1,
                                                                     "accuracy": {"math": 0.2}}, seconds=None)
    obj = wait_status(cluster, NS, name, "baseline done", lambda s: s["stages"][1]["outcome"] == "Succeeded")
    done = obj["status"]["stages"][1]
    ran = (parse_rfc3339(done["endTime"]) - parse_rfc3339(done["startTime"])).total_seconds()
    # Stage time starts at admission, not at the Job's creation; cost is 1 GPU x time since admission
    # (status times are whole seconds, the cost clock is not).
    waited = (parse_rfc3339(done["startTime"]) - parse_rfc3339(meta["creationTimestamp"])).total_seconds()
    assert waited >= 2 and done["queuedSeconds"] >= 2
    assert done["gpuHours"] * 3600 <= ran + 1
    generate = jobs.wait_job(NS, name, "1b1-i1-generate")
    assert generate["spec"]["suspend"] is True
    wait_status(cluster, NS, name, "generate queued", lambda s: s["stage"] == "1b1-i1-generate"
                and s["stageStatus"] == "Queued")


def test_campaign_runs_stage_pods_under_a_runtime_class_in_a_user_namespace(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "locked"
    body = campaign_body(name)
    body["spec"]["resources"].update(runtimeClassName="gvisor", hostUsers=False)
    cluster.create(CT, CTS, body, namespace=NS)
    prepare = jobs.wait_job(NS, name, "prepare")
    jobs.succeed(prepare, {"selection": 10, "scan": 10, "eval": 10})
    for job in (prepare, jobs.wait_job(NS, name, "baseline-evaluate")):
        pod = job["spec"]["template"]["spec"]
        assert pod["runtimeClassName"] == "gvisor" and pod["hostUsers"] is False
        # The stage pods' labels are the ones the chart's NetworkPolicy selects.
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "consistency-operator"
        assert labels["app.kubernetes.io/name"] == "consistency-worker"
