"""The real operator process against KMock's stateful Kubernetes emulator over HTTP.

The tests play the Job controller (see ``JobController``): they mark Jobs complete or failed and
create the Pods whose termination messages carry the stage results.  KMock has no garbage collector:
the deletion test asserts the ownerReferences the real collector acts on and then simulates it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from consistency_core.crd import crd
from consistency_core.stage_wire import StageConfig
from kmock_cluster import EmulatedCluster
from operator_harness import (
    BASELINE,
    CT,
    CTS,
    DISTILL,
    FAILING,
    GENERATE,
    PASSING,
    PREPARE,
    TRAIN,
    JobController,
    OperatorProcess,
    campaign_body,
    condition,
    get_ct,
    pruned_fields,
    run_quick_fix,
    wait_events,
    wait_status,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(120)

NS = "default"

def stage_config(job: dict[str, Any]) -> StageConfig:
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    return StageConfig.from_json(env["CONSISTENCY_STAGE_CONFIG"]["value"])


def test_applied_cr_gets_a_prepare_job_with_the_full_pod_spec(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    cr = cluster.create(CT, CTS, campaign_body("spec-check"), namespace=NS)
    job = jobs.wait_job(NS, "spec-check", "prepare")

    meta = job["metadata"]
    assert meta["name"] == "spec-check-prepare"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "consistency-operator", "app.kubernetes.io/name": "consistency-worker",
        "app.kubernetes.io/component": "prepare", "consistency.dev/campaign": "spec-check",
        "consistency.dev/stage": "prepare", "consistency.dev/phase": "1B.1", "consistency.dev/iteration": "1",
        "consistency.dev/key": "prepare", "consistency.dev/attempt": "1"}
    [owner] = meta["ownerReferences"]
    assert owner["uid"] == cr["metadata"]["uid"] and owner["kind"] == "ConsistencyTraining"
    assert owner["controller"] is True and owner["blockOwnerDeletion"] is True

    spec = job["spec"]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 3600
    assert spec["ttlSecondsAfterFinished"] == 86400 and spec["completions"] == 1
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}} \
        in spec["podFailurePolicy"]["rules"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # CPU stage: only the CPU scheduling, never the GPU nodes' selector or tolerations.
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["priorityClassName"] == "batch-high"
    assert pod["tolerations"] == [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]
    [container] = pod["containers"]
    assert container["image"] == "registry.test/consistency-worker:test"  # operator default
    assert container["command"] == ["consistency-worker"]
    assert container["args"] == ["prepare", "--config", "env:CONSISTENCY_STAGE_CONFIG"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/cache"}
    # CPU stage: no GPU requested, even though the spec overrides only prepare's memory.
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "16Gi"}
    env = {e["name"]: e for e in container["env"]}
    # The CR's store settings win over the operator defaults.
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "store-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "store-creds"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.store.svc:9000"
    config = stage_config(job)
    assert (config.stage.value, config.key, config.campaign, config.namespace) == (
        "prepare", "prepare", "spec-check", NS)
    assert config.output_uri == "s3://campaigns/runs/default/spec-check/prepare"

    obj = wait_status(cluster, NS, "spec-check", "Running on prepare",
                      lambda s: s["phase"] == "Running" and s["stage"] == "prepare")
    assert condition(obj, "Ready")["status"] == "True"
    assert obj["status"]["stages"][0]["jobName"] == "spec-check-prepare"
    wait_events(cluster, NS, "spec-check", "CampaignStarted", "StageStarted")

    # Next: the GPU baseline evaluation, then the sharded (Indexed) generate Job.
    jobs.succeed(job, PREPARE)
    baseline = jobs.wait_job(NS, "spec-check", "baseline-evaluate")
    limits = baseline["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert baseline["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert baseline["spec"]["template"]["spec"]["nodeSelector"] == {"gpu.type": "h100"}
    jobs.succeed(baseline, BASELINE, {"report": "s3://campaigns/runs/default/spec-check/baseline-evaluate/r.json"})
    generate = jobs.wait_job(NS, "spec-check", "1b1-i1-generate")
    assert generate["spec"]["completionMode"] == "Indexed"
    assert generate["spec"]["completions"] == generate["spec"]["parallelism"] == 2
    assert stage_config(generate).params.shards == 2
    assert stage_config(generate).params.problems_uri.endswith("/prepare/selection.jsonl")


def test_gate_pass_promotes_to_expansion_and_succeeds(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "happy"
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    run_quick_fix(jobs, name, PASSING)

    obj = wait_status(cluster, NS, name, "promoted to 1B.2", lambda s: s["trainingPhase"] == "1B.2")
    assert condition(obj, "GatePassed")["status"] == "True"
    scan = jobs.wait_job(NS, name, "1b2-generate")
    scan_config = stage_config(scan)
    assert scan_config.phase == "1B.2" and scan_config.params.problems_uri.endswith("/prepare/scan.jsonl")
    assert scan_config.params.adapter_uri == f"s3://campaigns/runs/{NS}/{name}/1b1-i1-train/adapter"
    assert scan["metadata"]["labels"]["consistency.dev/phase"] == "1B.2"
    jobs.succeed(scan, {"problems": 4400, "completions": 26400})
    jobs.succeed(jobs.wait_job(NS, name, "1b2-distill"), {"examples": 2500})
    train = jobs.wait_job(NS, name, "1b2-train")
    assert stage_config(train).params.init_adapter_uri == f"s3://campaigns/runs/{NS}/{name}/1b1-i1-train/adapter"
    jobs.succeed(train, TRAIN, {"adapter": f"s3://campaigns/runs/{NS}/{name}/1b2-train/adapter"})
    final = {"problems": 1483, "consistency": 0.71, "meanAgreement": 0.86, "accuracy": {"math": 0.6, "code": 0.61},
             "primary": {**PASSING["primary"], "difference": 0.2, "low": 0.15, "high": 0.25}}
    evaluate_final = jobs.wait_job(NS, name, "1b2-evaluate")
    # 1B.2 compares with the passing 1B.1 evaluation; its primary endpoint is still measured from the baseline
    final_params = stage_config(evaluate_final).params
    assert final_params.baseline_report_uri.endswith("/1b1-i1-evaluate/report.json")
    assert final_params.primary_baseline_uri.endswith("/baseline-evaluate/report.json")
    jobs.succeed(evaluate_final, final)

    # The last stage: the CPU report stage, told the best adapter and a snapshot of the campaign.
    report = jobs.wait_job(NS, name, "report")
    pod = report["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert report["spec"]["activeDeadlineSeconds"] == 3600
    report_config = stage_config(report)
    assert report_config.params.adapter_uri == f"s3://campaigns/runs/{NS}/{name}/1b2-train/adapter"
    assert [e["phase"] for e in report_config.params.status["evaluations"]] == ["baseline", "1B.1", "1B.2"]
    out = f"s3://campaigns/runs/{NS}/{name}/report"
    jobs.succeed(report, {"figures": 4}, {"report": f"{out}/report.md", "adapter": f"{out}/adapter",
                                          "modelCard": f"{out}/adapter/README.md"})

    obj = wait_status(cluster, NS, name, "Succeeded", lambda s: s["phase"] == "Succeeded")
    assert obj["status"]["outputs"] == {"report": f"{out}/report.md", "adapter": f"{out}/adapter",
                                        "modelCard": f"{out}/adapter/README.md"}
    status = obj["status"]
    assert condition(obj, "Complete")["status"] == "True"
    assert status["consistency"] == 0.71 and status["mathAccuracy"] == 0.6
    assert status["adapter"] == f"s3://campaigns/runs/{NS}/{name}/1b2-train/adapter"
    assert [(e["phase"], e["iteration"]) for e in status["evaluations"]] == [("baseline", 0), ("1B.1", 1), ("1B.2", 1)]
    # The two shards of the Indexed generate Job each reported half; the status holds the sum.
    [generate] = [s for s in status["stages"] if s["key"] == "1b1-i1-generate"]
    assert generate["result"]["metrics"] == {"problems": 664, "completions": 3984}
    assert status["cost"]["gpuHours"] > 0 and status["cost"]["usd"] > 0
    # One Job per stage, none duplicated.
    keys = sorted(j["metadata"]["labels"]["consistency.dev/key"] for j in jobs.jobs(NS, name))
    assert keys == sorted(["prepare", "baseline-evaluate", "1b1-i1-generate", "1b1-i1-distill", "1b1-i1-train",
                           "1b1-i1-evaluate", "1b2-generate", "1b2-distill", "1b2-train", "1b2-evaluate",
                           "report"])
    wait_events(cluster, NS, name, "GatePassed", "Promoted", "StageSucceeded", "CampaignSucceeded")

    # Everything written to status survives the real CRD's structural schema, and the printer columns
    # (kubectl get ct) find their values.
    version = crd()["spec"]["versions"][0]
    assert pruned_fields(status, version["schema"]["openAPIV3Schema"]["properties"]["status"], ".status") == []
    assert status["primaryChange"] == 0.2
    assert status["evaluations"][-1]["primary"]["figure"] == "math pairwise agreement"
    for column in version["additionalPrinterColumns"]:
        # none runs now: no stage, no stage status
        if column["jsonPath"].startswith(".status.") and column["name"] not in ("Stage", "Stage Status"):
            value: Any = obj
            for part in column["jsonPath"].strip(".").split("."):
                value = value[part]
            assert value not in (None, ""), column["name"]


def test_gate_fail_starts_iteration_two_with_adjusted_knobs(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "iterate"
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    run_quick_fix(jobs, name, FAILING)
    obj = wait_status(cluster, NS, name, "iteration 2", lambda s: s["iteration"] == 2)
    gate = condition(obj, "GatePassed")
    assert gate["status"] == "False" and "consistency 0.310 < 0.60" in gate["message"]

    generate = stage_config(jobs.wait_job(NS, name, "1b1-i2-generate"))
    assert generate.params.sampling.temperature == 0.2  # first entry of the default schedule (iteration 1: 0.7)
    assert generate.iteration == 2
    jobs.succeed(jobs.wait_job(NS, name, "1b1-i2-generate"), GENERATE)
    jobs.succeed(jobs.wait_job(NS, name, "1b1-i2-distill"), DISTILL)
    train = jobs.wait_job(NS, name, "1b1-i2-train")
    assert stage_config(train).params.training.epochs == 3  # 2 + epochsStep
    assert train["metadata"]["labels"]["consistency.dev/iteration"] == "2"
    jobs.succeed(train, TRAIN)
    # maxIterations is 2 in these campaigns: a second failed gate fails the campaign with the numbers.
    jobs.succeed(jobs.wait_job(NS, name, "1b1-i2-evaluate"), FAILING)
    obj = wait_status(cluster, NS, name, "Failed", lambda s: s["phase"] == "Failed")
    failed = condition(obj, "Failed")
    assert failed["reason"] == "GateFailed" and "consistency 0.310 < 0.60" in failed["message"]
    wait_events(cluster, NS, name, "GateFailed", "IterationStarted", "CampaignFailed")


def test_failed_job_is_retried_then_fails_the_campaign_with_the_reason(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "flaky"
    cluster.create(CT, CTS, campaign_body(name, evaluation={"baseline": False}), namespace=NS)
    jobs.succeed(jobs.wait_job(NS, name, "prepare"), PREPARE)
    first = jobs.wait_job(NS, name, "1b1-i1-generate")
    jobs.fail(first, exit_code=137, message="OOMKilled")
    second = jobs.wait_job(NS, name, "1b1-i1-generate", attempt=2)
    assert second["metadata"]["name"] == f"{name}-1b1-i1-generate-a2"
    obj = get_ct(cluster, NS, name)
    assert [s["outcome"] for s in obj["status"]["stages"] if s["key"] == "1b1-i1-generate"] == ["Failed", "Running"]
    jobs.fail(second, exit_code=137, message="OOMKilled")

    obj = wait_status(cluster, NS, name, "Failed", lambda s: s["phase"] == "Failed")
    failed = condition(obj, "Failed")
    assert failed["reason"] == "StageFailed"
    assert "1b1-i1-generate failed after 2 attempt(s)" in failed["message"]
    assert "BackoffLimitExceeded" in failed["message"] and "OOMKilled" in failed["message"]
    assert len([j for j in jobs.jobs(NS, name) if "generate" in j["metadata"]["name"]]) == 2
    wait_events(cluster, NS, name, "StageRetried", "StageFailed", "CampaignFailed")


def test_permanent_worker_failure_is_not_retried(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "bad-data"
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    job = jobs.wait_job(NS, name, "prepare")
    verdict = {"key": "prepare", "ok": False, "retryable": False,
               "message": "spec.datasets[0]: row 17: missing field 'question'"}
    jobs.fail(job, exit_code=2, message=json.dumps(verdict), reason="PodFailurePolicy")
    obj = wait_status(cluster, NS, name, "Failed", lambda s: s["phase"] == "Failed")
    assert "row 17: missing field 'question'" in condition(obj, "Failed")["message"]
    assert len(jobs.jobs(NS, name)) == 1


def test_operator_killed_mid_stage_resumes_without_duplicates(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "restart"
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    jobs.succeed(jobs.wait_job(NS, name, "prepare"), PREPARE)
    baseline = jobs.wait_job(NS, name, "baseline-evaluate")

    operator.kill()
    # While it is down: the running Job finishes, and (as if a previous operator had crashed between
    # creating the next Job and recording it) the next Job already exists.
    jobs.succeed(baseline, BASELINE, {"report": "s3://r/baseline.json"})
    cr = get_ct(cluster, NS, name)
    ghost = dict(baseline)
    ghost_name = f"{name}-1b1-i1-generate"
    ghost = {"kind": "Job", "metadata": {
        "name": ghost_name, "namespace": NS,
        "labels": {**baseline["metadata"]["labels"], "consistency.dev/key": "1b1-i1-generate",
                   "consistency.dev/stage": "generate"},
        "ownerReferences": baseline["metadata"]["ownerReferences"]}, "spec": baseline["spec"]}
    cluster.create("batch/v1", "jobs", ghost, namespace=NS)
    operator.start()

    obj = wait_status(cluster, NS, name, "generate running", lambda s: s["stage"] == "1b1-i1-generate")
    assert obj["metadata"]["uid"] == cr["metadata"]["uid"]
    assert [s["outcome"] for s in obj["status"]["stages"]] == ["Succeeded", "Succeeded", "Running"]
    assert obj["status"]["stages"][2]["jobName"] == ghost_name
    names = [j["metadata"]["name"] for j in jobs.jobs(NS, name)]
    assert sorted(names) == sorted([f"{name}-prepare", f"{name}-baseline-evaluate", ghost_name])
    # Same outcome as without the restart: the campaign carries on from the adopted Job.
    jobs.succeed(jobs.wait_job(NS, name, "1b1-i1-generate"), GENERATE)
    jobs.wait_job(NS, name, "1b1-i1-distill")
    assert len(jobs.jobs(NS, name)) == 4


def test_deleted_cr_takes_its_jobs_along(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "short-lived"
    cr = cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    jobs.succeed(jobs.wait_job(NS, name, "prepare"), PREPARE)
    jobs.wait_job(NS, name, "baseline-evaluate")
    owned = jobs.jobs(NS, name)
    assert len(owned) == 2
    for job in owned:
        # What the real garbage collector acts on (foreground/background cascading deletion).
        [ref] = job["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (cr["metadata"]["uid"], True, True)

    assert cluster.delete(CT, CTS, NS, name)
    cluster.wait_for("CR gone", lambda: cluster.get(CT, CTS, NS, name) is None)
    # KMock has no garbage collector: simulate it from those ownerReferences (Jobs, then their Pods).
    deleted = cluster.collect_garbage() + cluster.collect_garbage()
    assert {n for kind, _, n in deleted if kind == "jobs"} == {j["metadata"]["name"] for j in owned}
    assert jobs.jobs(NS, name) == []
    assert not [p for p in cluster.list("v1", "pods", NS) if p["metadata"]["name"].startswith(f"{name}-")]
    # The operator saw the deletion (its series for the campaign are gone) and recreated nothing.
    cluster.wait_for("campaign series dropped", lambda: f'campaign="{name}"' not in operator.scrape())
    assert jobs.jobs(NS, name) == []


def test_invalid_cr_gets_a_condition_and_an_event_and_no_jobs(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "invalid"
    body = campaign_body(name, thresholds={"consistency": 1.5, "accuracy": {"chemistry": 0.5}})
    cluster.create(CT, CTS, body, namespace=NS)
    obj = wait_status(cluster, NS, name, "Ready=False", lambda s: any(
        c["type"] == "Ready" and c["status"] == "False" for c in s["conditions"]))
    ready = condition(obj, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert "spec.thresholds.consistency" in ready["message"] and "chemistry" in ready["message"]
    [invalid] = [e for e in wait_events(cluster, NS, name, "InvalidSpec") if e["reason"] == "InvalidSpec"]
    assert invalid["type"] == "Warning" and "spec.thresholds.consistency" in invalid["message"]
    assert jobs.jobs(NS, name) == []

    # Fixing the spec starts the campaign.
    # (JSON merge patch: null removes the bad key.)
    cluster.patch(CT, CTS, NS, name, {"spec": {"thresholds": {"consistency": 0.6, "accuracy": {"chemistry": None}}}})
    jobs.wait_job(NS, name, "prepare")
    obj = wait_status(cluster, NS, name, "Ready=True", lambda s: any(
        c["type"] == "Ready" and c["status"] == "True" for c in s["conditions"]))
    assert obj["status"]["phase"] == "Running"


def test_spec_edits_mid_run_follow_the_documented_rules(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "edited"
    cluster.create(CT, CTS, campaign_body(name, evaluation={"baseline": False}), namespace=NS)
    jobs.succeed(jobs.wait_job(NS, name, "prepare"), PREPARE)
    generate = jobs.wait_job(NS, name, "1b1-i1-generate")

    # A pinned field (the model) is rejected; a knob (samples) applies from the next stage.
    cluster.patch(CT, CTS, NS, name, {"spec": {"model": {"uri": "hf://someone/else"},
                                               "quickFix": {"maxPerProblem": 1, "minAgreement": 0.8}}})
    obj = wait_status(cluster, NS, name, "SpecChangeRejected", lambda s: any(
        c["type"] == "SpecChangeRejected" and c["status"] == "True" for c in s["conditions"]))
    assert "spec.model" in condition(obj, "SpecChangeRejected")["message"]
    wait_events(cluster, NS, name, "SpecChangeRejected")
    jobs.succeed(generate, GENERATE)
    distill = stage_config(jobs.wait_job(NS, name, "1b1-i1-distill"))
    assert distill.model.uri == "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
    assert distill.params.filter.min_agreement == 0.8 and distill.params.filter.max_per_problem == 1

    # Reverting the pinned field clears the condition.
    cluster.patch(CT, CTS, NS, name, {"spec": {"model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}}})
    wait_status(cluster, NS, name, "SpecChangeRejected cleared", lambda s: any(
        c["type"] == "SpecChangeRejected" and c["status"] == "False" for c in s["conditions"]))


def test_budget_stops_before_an_over_budget_stage(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "thrifty"
    # Baseline evaluation of 1483 problems x 9 answers (greedy + evaluation k 8) x 512 tokens at 2000 tok/s
    # ~ 0.95 GPU-h ~ $2.8.
    cluster.create(CT, CTS, campaign_body(name, budget={"gpuHourUsd": 3.0, "maxUsd": 1.0}), namespace=NS)
    jobs.succeed(jobs.wait_job(NS, name, "prepare"), PREPARE)
    obj = wait_status(cluster, NS, name, "Failed", lambda s: s["phase"] == "Failed")
    failed = condition(obj, "Failed")
    assert failed["reason"] == "BudgetExceeded" and "baseline-evaluate" in failed["message"]
    assert [j["metadata"]["labels"]["consistency.dev/key"] for j in jobs.jobs(NS, name)] == ["prepare"]
    # The plan written when the campaign was accepted, by hand (GPU-h at 2000 generated / 3000 training tok/s):
    # evaluate 1483 x 9 x 512 tokens = 0.94912; 1B.1 generate 664 x 6 x 512 = 0.28331; train 1328 examples
    # x 2 epochs x 256 = 0.06296 (iteration 2: 3 epochs, 0.09444); 1B.2 generate 8847 x 6 x 512 = 3.77472;
    # 1B.2 train (2500 + 625 replayed) x 2 x 256 = 0.14815. First pass: baseline + iteration 1 + 1B.2 =
    # 7.11651 GPU-h = $21.35; worst: both iterations, every stage twice (stageRetries 1) = 16.88675 GPU-h = $50.66.
    plan = obj["status"]["forecast"]
    assert plan["firstPassUsd"] == pytest.approx(21.350, abs=1e-3)
    assert plan["worstCaseUsd"] == pytest.approx(50.660, abs=1e-3)
    assert plan["verdict"] == "ExceedsBudget" and plan["maxUsd"] == 1.0
    assert [s["key"] for s in plan["stages"] if not s["firstPass"]] == [
        "1b1-i2-generate", "1b1-i2-distill", "1b1-i2-train", "1b1-i2-evaluate"]
    # `kubectl get ct` shows it: the printer column reads the value the status holds.
    [column] = [c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"] if c["name"] == "Worst USD"]
    assert column["jsonPath"] == ".status.forecast.worstCaseUsd" and column["type"] == "number"


def test_second_watched_namespace_works_and_unwatched_is_ignored(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    cluster.create(CT, CTS, campaign_body("elsewhere"), namespace="team-a")
    cluster.create(CT, CTS, campaign_body("ignored"), namespace="unwatched")
    job = jobs.wait_job("team-a", "elsewhere", "prepare")
    assert job["metadata"]["namespace"] == "team-a"
    assert stage_config(job).output_uri == "s3://campaigns/runs/team-a/elsewhere/prepare"
    assert get_ct(cluster, "unwatched", "ignored").get("status") is None
    assert jobs.jobs("unwatched", "ignored") == []


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels`` (None if absent)."""
    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def series(text: str, name: str, **labels: str) -> list[dict[str, str]]:
    return [s.labels for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_metrics_endpoint_reports_what_happened(
        cluster: EmulatedCluster, operator: OperatorProcess, jobs: JobController) -> None:
    name = "metered"
    # An invalid campaign of this test's own, so the reconcile-error counter is this test's to check.
    cluster.create(CT, CTS, campaign_body("metered-invalid", thresholds={"consistency": 1.5}), namespace=NS)
    wait_events(cluster, NS, "metered-invalid", "InvalidSpec")
    cluster.create(CT, CTS, campaign_body(name), namespace=NS)
    run_quick_fix(jobs, name, PASSING)
    jobs.wait_job(NS, name, "1b2-generate")
    ids = {"namespace": NS, "campaign": name}

    text = cluster.wait_for("metrics of the campaign", lambda: (
        t if series(t := operator.scrape(), "consistency_stage_start_timestamp_seconds", stage="1b2-generate",
                    **ids) else None))
    q = {**ids, "phase": "1B.1", "iteration": "1"}
    assert sample(text, "consistency_evaluation_consistency_ratio", **q) == 0.64
    assert sample(text, "consistency_evaluation_mean_agreement_ratio", **q) == 0.81
    assert sample(text, "consistency_evaluation_accuracy_ratio", **q, domain="math") == 0.57
    assert sample(text, "consistency_evaluation_accuracy_ratio", **ids, phase="baseline", iteration="0",
                  domain="code") == 0.58
    assert sample(text, "consistency_examples_produced_total", **ids, phase="1B.1") == 412
    assert sample(text, "consistency_evaluation_pairwise_agreement_ratio", **q, domain="code") == 0.52
    primary = {**q, "endpoint": "math pairwise agreement"}
    assert [sample(text, "consistency_evaluation_primary_endpoint_change_ratio", **primary, bound=b)
            for b in ("estimate", "low", "high")] == [0.13, 0.08, 0.18]
    status = get_ct(cluster, NS, name)["status"]
    assert status["primaryChange"] == 0.13  # the `kubectl get ct` column
    cost = sample(text, "consistency_campaign_cost_usd", **ids)
    assert cost == pytest.approx(status["cost"]["usd"]) and cost > 0
    gpu_seconds = sample(text, "consistency_campaign_gpu_seconds", **ids)
    assert gpu_seconds == pytest.approx(status["cost"]["gpuHours"] * 3600)
    assert sample(text, "consistency_campaign_budget_usd", **ids) == 500.0
    # Running-stage gauges exist for the running stage only.
    assert [s["stage"] for s in series(text, "consistency_stage_start_timestamp_seconds", **ids)] == ["1b2-generate"]
    assert sample(text, "consistency_stage_deadline_seconds", **ids, stage="1b2-generate") == 21600
    # Forecast against actual per stage, as the status records them.
    records = {r["key"]: r for r in status["stages"]}
    assert sample(text, "consistency_stage_forecast_seconds", **ids, stage="1b2-generate") == pytest.approx(
        records["1b2-generate"]["expectedSeconds"]) and records["1b2-generate"]["expectedSeconds"] > 0
    assert sample(text, "consistency_stage_measured_seconds", **ids, stage="1b1-i1-train") == pytest.approx(
        records["1b1-i1-train"]["seconds"]) and records["1b1-i1-train"]["seconds"] > 0
    assert not series(text, "consistency_stage_measured_seconds", stage="1b2-generate", **ids)  # still running
    # Counters and histograms cover every campaign this operator process has driven.
    assert sample(text, "consistency_job_outcomes_total", stage="train", outcome="succeeded") >= 1
    assert sample(text, "consistency_stage_duration_seconds_count", stage="distill", phase="1B.1") >= 1
    assert sample(text, "consistency_campaigns", phase="Running") >= 1
    assert sample(text, "consistency_reconcile_errors_total", kind="invalid_spec") >= 1


def test_liveness_and_readiness_probes(operator: OperatorProcess) -> None:
    import requests
    assert requests.get(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{operator.metrics_port}/readyz", timeout=5).status_code == 200


def test_rbac_list_matches_what_the_operator_actually_called(cluster: EmulatedCluster,
                                                             operator: OperatorProcess) -> None:
    """Runs last in the module: by now the operator has been through every scenario above."""
    from consistency_operator import rbac

    # The operator's own client and kopf identify themselves; the tests' requests are left out.
    called = cluster.rbac_used(user_agent_prefix="consistency-operator") | cluster.rbac_used(
        user_agent_prefix="kopf/")
    assert called - set(rbac.REQUIRED_PERMISSIONS) == set(), "called without a declared permission"
    # Standalone and watching two namespaces: everything but the peering rules is exercised here.
    expected = set(rbac.CAMPAIGN_PERMISSIONS) | set(rbac.NAMESPACE_PERMISSIONS)
    assert expected - called == set(), "declared but never called"
