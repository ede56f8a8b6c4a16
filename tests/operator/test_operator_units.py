"""Pure parts of the operator: settings, the Job manifest, result reading, status patches, spec pins,
metric families.  No processes, no network."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("kopf")

from consistency_core import statemachine as sm
from consistency_core.spec import parse_spec
from consistency_core.stage_wire import StageResult
from consistency_operator import specrules
from consistency_operator.config import OperatorConfig, parse_config
from consistency_operator.jobs import build_job
from consistency_operator.metrics import FAMILY_NAMES, Metrics, build_metrics
from consistency_operator.observe import CampaignObserver
from consistency_operator.reconcile import merge_patch
from consistency_operator.results import read_result

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BASE_SPEC: dict[str, Any] = {"model": {"uri": "hf://org/model"}, "store": {"uri": "s3://bucket/runs"}}


# ---- settings ----------------------------------------------------------------------------------------

def test_config_defaults_and_env() -> None:
    cfg = parse_config([], env={})
    assert cfg.clusterwide and cfg.health_port == 8080 and cfg.metrics_port == 9090
    assert cfg.gpu_resource == "nvidia.com/gpu" and cfg.peering == ""
    cfg = parse_config([], env={"CONSISTENCY_WATCH_NAMESPACES": " a, b ,,", "CONSISTENCY_PEERING": "pair",
                                "CONSISTENCY_GPU_RESOURCE": "amd.com/gpu", "CONSISTENCY_STORE_SECRET": "s3"})
    assert cfg.namespaces == ("a", "b") and not cfg.clusterwide
    assert (cfg.peering, cfg.gpu_resource, cfg.store_secret) == ("pair", "amd.com/gpu", "s3")


def test_flags_override_env() -> None:
    env = {"CONSISTENCY_WATCH_NAMESPACES": "a", "CONSISTENCY_METRICS_PORT": "1"}
    assert parse_config(["-n", "x,y", "-n", "z", "--metrics-port", "9100"], env=env).namespaces == ("x", "y", "z")
    assert parse_config(["--all-namespaces"], env=env).clusterwide


def test_bad_settings_name_the_variable() -> None:
    with pytest.raises(SystemExit, match="CONSISTENCY_HEALTH_PORT='eighty'"):
        parse_config([], env={"CONSISTENCY_HEALTH_PORT": "eighty"})
    with pytest.raises(SystemExit, match="--metrics-port=70000"):
        parse_config(["--metrics-port", "70000"], env={})


# ---- the Job manifest ---------------------------------------------------------------------------------

def first_action(spec_raw: dict[str, Any]) -> tuple[Any, sm.RunStage]:
    spec = parse_spec(spec_raw)
    decision = sm.decide(spec, None, campaign="c1", namespace="ns", now=NOW)
    assert isinstance(decision.action, sm.RunStage)
    return spec, decision.action


def test_spec_overrides_operator_defaults_in_the_job() -> None:
    spec, action = first_action({**BASE_SPEC, "resources": {
        "workerImage": "my/worker:1", "gpuResourceName": "amd.com/gpu", "serviceAccountName": "runner",
        "stages": {"prepare": {"gpus": 2, "cpu": "1", "memory": "1Gi", "ephemeralStorage": "50Gi"}}}})
    settings = OperatorConfig(worker_image="default/worker:0", worker_service_account="default-sa")
    job = build_job(config=action.config, record=action.record, resources=action.resources, spec=spec,
                    settings=settings)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "my/worker:1" and pod["serviceAccountName"] == "runner"
    assert container["resources"]["limits"]["amd.com/gpu"] == "2"
    assert container["resources"]["limits"]["ephemeral-storage"] == "50Gi"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert any(v["name"] == "dshm" for v in pod["volumes"])
    # No Secret anywhere: no credentials env at all (the worker then uses its ambient identity).
    names = {e["name"] for e in container["env"]}
    assert "AWS_ACCESS_KEY_ID" not in names and "AWS_ENDPOINT_URL" not in names


def test_operator_defaults_fill_in_store_settings() -> None:
    spec, action = first_action(BASE_SPEC)  # store s3://bucket/runs, namespace default
    job = build_job(config=action.config, record=action.record, resources=action.resources, spec=spec,
                    settings=OperatorConfig(store_secret="shared", store_endpoint="http://minio:9000",
                                            store_allowed_prefix="s3://bucket/"))
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "shared",
                                                                         "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert json.loads(env["CONSISTENCY_STAGE_CONFIG"]["value"])["key"] == "prepare"
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    assert "completionMode" not in job["spec"]


def test_default_store_credentials_stay_home() -> None:
    spec, action = first_action(BASE_SPEC)
    for prefix in (None, "s3://bucket/<namespace>/", "s3://other/"):
        job = build_job(config=action.config, record=action.record, resources=action.resources, spec=spec,
                        settings=OperatorConfig(store_secret="shared", store_allowed_prefix=prefix))
        names = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "AWS_ACCESS_KEY_ID" not in names, prefix


def pod_spec_of(spec: Any, action: sm.RunStage, settings: OperatorConfig, gpu_stage: bool = False) -> dict:
    resources = spec.resources.stages.generate if gpu_stage else action.resources
    return build_job(config=action.config, record=action.record, resources=resources, spec=spec,
                     settings=settings)["spec"]["template"]["spec"]


def test_chart_worker_scheduling_defaults_apply_when_the_spec_sets_none() -> None:
    env = {"CONSISTENCY_WORKER_NODE_SELECTOR": '{"pool": "gpu"}',
           "CONSISTENCY_WORKER_TOLERATIONS": '[{"key": "dedicated", "operator": "Exists"}]',
           "CONSISTENCY_WORKER_CPU_NODE_SELECTOR": '{"pool": "cpu"}',
           "CONSISTENCY_WORKER_CPU_TOLERATIONS": '[{"key": "spot", "operator": "Exists"}]'}
    settings = parse_config([], env=env)
    spec, action = first_action(BASE_SPEC)
    gpu_pod = pod_spec_of(spec, action, settings, gpu_stage=True)
    assert gpu_pod["nodeSelector"] == {"pool": "gpu"}
    assert gpu_pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"},
                                      {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu_pod = pod_spec_of(spec, action, settings)  # prepare
    assert cpu_pod["nodeSelector"] == {"pool": "cpu"}
    assert cpu_pod["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    spec, action = first_action({**BASE_SPEC, "resources": {"nodeSelector": {"zone": "a"},
                                                            "cpuNodeSelector": {"zone": "b"}}})
    assert pod_spec_of(spec, action, settings, gpu_stage=True)["nodeSelector"] == {"zone": "a"}
    assert pod_spec_of(spec, action, settings)["nodeSelector"] == {"zone": "b"}
    with pytest.raises(SystemExit, match="CONSISTENCY_WORKER_TOLERATIONS"):
        parse_config([], env={"CONSISTENCY_WORKER_TOLERATIONS": '{"not": "a list"}'})
    with pytest.raises(SystemExit, match="CONSISTENCY_WORKER_CPU_NODE_SELECTOR"):
        parse_config([], env={"CONSISTENCY_WORKER_CPU_NODE_SELECTOR": '["a list"]'})


def test_cpu_stages_get_no_gpu_scheduling_even_with_partial_overrides() -> None:
    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    spec, action = first_action({**BASE_SPEC, "resources": {
        "nodeSelector": {"gpu.type": "h100"}, "tolerations": [gpu_toleration],
        "stages": {"prepare": {"memory": "16Gi"}, "distill": {"deadlineSeconds": 600}}}})
    pod = pod_spec_of(spec, action, OperatorConfig())
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "16Gi"}
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert not any(v["name"] == "dshm" for v in pod["volumes"])
    distill = spec.resources.stages.distill
    assert (distill.gpus, distill.cpu, distill.memory, distill.deadline_seconds) == (0, "2", "8Gi", 600)
    gpu_pod = pod_spec_of(spec, action, OperatorConfig(), gpu_stage=True)
    assert gpu_pod["nodeSelector"] == {"gpu.type": "h100"} and gpu_pod["tolerations"] == [gpu_toleration]


# ---- results ---------------------------------------------------------------------------------------------

def job(state: str, reason: str = "") -> dict[str, Any]:
    cond = {"type": state, "status": "True", **({"reason": reason} if reason else {})}
    return {"metadata": {"name": "c1-x"}, "status": {"conditions": [cond]}}


def pod(message: str, phase: str = "Succeeded", index: str = "0", created: str = "2026-01-01T00:00:00Z",
        exit_code: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": f"p{index}{created[-3:-1]}", "creationTimestamp": created,
                         "annotations": {"batch.kubernetes.io/job-completion-index": index}},
            "status": {"phase": phase, "containerStatuses": [{"name": "worker", "state": {"terminated": {
                "exitCode": exit_code, "message": message, "finishedAt": created}}}]}}


def msg(**kw: Any) -> str:
    return json.dumps({"key": "k", "ok": True, **kw})


def test_shards_add_up_and_the_newest_pod_of_an_index_wins() -> None:
    pods = [pod(msg(metrics={"problems": 5}, seconds=10), index="0"),
            pod(msg(metrics={"problems": 99}), index="1", created="2026-01-01T00:00:01Z"),
            pod(msg(metrics={"problems": 7}, seconds=30), index="1", created="2026-01-01T00:00:09Z")]
    result, problems = read_result(job("Complete"), pods, "k")
    assert result.ok and result.metrics == {"problems": 12} and result.seconds == 30 and problems == []


def test_complete_job_without_a_readable_result_is_a_retryable_failure() -> None:
    result, problems = read_result(job("Complete"), [pod("Traceback: boom")], "k")
    assert not result.ok and result.retryable and "no readable result" in result.message
    assert problems and "no StageResult" in problems[0]
    # A result of another stage is never folded in.
    result, _ = read_result(job("Complete"), [pod(json.dumps({"key": "other", "ok": True}))], "k")
    assert not result.ok


def test_failures_carry_the_worker_verdict_or_the_job_reason() -> None:
    verdict = json.dumps({"key": "k", "ok": False, "retryable": False, "message": "row 3: bad"})
    result, _ = read_result(job("Failed", "PodFailurePolicy"), [pod(verdict, "Failed", exit_code=2)], "k")
    assert (result.ok, result.retryable, result.message) == (False, False, "row 3: bad")
    result, _ = read_result(job("Failed", "DeadlineExceeded"), [], "k")
    assert result.retryable and "DeadlineExceeded" in result.message
    result, _ = read_result(job("Failed", "BackoffLimitExceeded"), [pod("oom", "Failed", exit_code=2)], "k")
    assert not result.retryable and "exit 2: oom" in result.message
    with pytest.raises(ValueError, match="has not finished"):
        read_result({"metadata": {"name": "j"}, "status": {}}, [], "k")


def test_termination_message_limit_round_trip() -> None:
    big = StageResult(key="k", ok=True, message="x" * 10000, metrics={"n": 1})
    result, _ = read_result(job("Complete"), [pod(big.to_termination_message())], "k")
    assert result.ok and result.metrics == {"n": 1}


# ---- status patches and spec pins -------------------------------------------------------------------

def test_merge_patch_deletes_with_null_and_leaves_foreign_keys() -> None:
    old = {"phase": "Running", "stage": "x", "cost": {"usd": 1, "gpuHours": 2}, "kopf": {"progress": 1}}
    new = {"phase": "Succeeded", "cost": {"usd": 1, "gpuHours": 3}}
    assert merge_patch(old, new, {"phase", "stage", "cost"}) == {
        "phase": "Succeeded", "stage": None, "cost": {"gpuHours": 3}}
    assert merge_patch(new, new) == {}


def test_pinned_fields_are_restored_and_named() -> None:
    spec = parse_spec(BASE_SPEC)
    annotations = {specrules.PINNED_ANNOTATION: specrules.pinned_values(spec)}
    assert specrules.apply_pins(spec, annotations) == (spec, [])
    edited = parse_spec({**BASE_SPEC, "model": {"uri": "hf://other/model"}, "seed": 7})
    effective, rejected = specrules.apply_pins(edited, annotations)
    assert rejected == ["spec.model"]
    assert effective.model.uri == "hf://org/model" and effective.seed == 7  # other edits apply
    assert specrules.apply_pins(edited, {}) == (edited, [])


# ---- metrics -------------------------------------------------------------------------------------------

def exposed_names(metrics: Metrics) -> set[str]:
    """Family names as scraped (counters with `_total`), to check against FAMILY_NAMES."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_documented_family_is_exposed() -> None:
    metrics = build_metrics()
    assert exposed_names(metrics) == set(FAMILY_NAMES)


def test_observer_sets_and_forgets_campaign_series() -> None:
    metrics = build_metrics()
    observer = CampaignObserver(metrics)
    spec = parse_spec({**BASE_SPEC, "budget": {"maxUsd": 50}})
    status = sm.decide(spec, None, campaign="c1", namespace="ns", now=NOW).status
    observer.observe("ns", "c1", spec, status)
    text = metrics.exposition().decode()
    assert 'consistency_campaigns{phase="Running"} 1.0' in text
    assert 'consistency_campaign_budget_usd{campaign="c1",namespace="ns"} 50.0' in text
    assert 'consistency_stage_start_timestamp_seconds{campaign="c1",namespace="ns",stage="prepare"}' in text
    # One series per phase, 1 for the campaign's own: alerts and tables can name the campaign.
    assert 'consistency_campaign_phase{campaign="c1",namespace="ns",phase="Running"} 1.0' in text
    assert 'consistency_campaign_phase{campaign="c1",namespace="ns",phase="Failed"} 0.0' in text
    # Its examples counters exist at zero before distill counts (increase() needs the zero).
    assert 'consistency_examples_produced_total{campaign="c1",namespace="ns",phase="1B.1"} 0.0' in text
    observer.forget("ns", "c1")
    text = metrics.exposition().decode()
    assert 'campaign="c1"' not in text and 'consistency_campaigns{phase="Running"} 0.0' in text


def test_known_label_sets_start_at_zero() -> None:
    """rate()/increase() ignore a series' first sample: a first failure must come after a scraped zero."""
    metrics = build_metrics()
    CampaignObserver(metrics)
    text = metrics.exposition().decode()
    assert 'consistency_job_outcomes_total{outcome="failed",stage="prepare"} 0.0' in text
    assert 'consistency_stage_duration_seconds_count{phase="1B.2",stage="report"} 0.0' in text
    assert 'consistency_reconcile_errors_total{kind="invalid_spec"} 0.0' in text
    assert 'consistency_campaigns{phase="Failed"} 0.0' in text


def test_finished_jobs_are_counted_once_by_outcome() -> None:
    metrics = build_metrics()
    observer = CampaignObserver(metrics)
    spec = parse_spec({**BASE_SPEC, "retry": {"stageRetries": 1}})
    first = sm.decide(spec, None, campaign="c1", now=NOW).status
    crash = StageResult(key="prepare", ok=False, retryable=True, message="node lost", seconds=5)
    retried = sm.decide(spec, first, crash, campaign="c1", now=NOW).status
    observer.transitions("ns", "c1", first, retried, crash)
    observer.transitions("ns", "c1", retried, retried, None)  # a later pass must not count it again
    failed = sm.decide(spec, retried, crash, campaign="c1", now=NOW).status
    observer.transitions("ns", "c1", retried, failed, crash)

    def count(outcome: str) -> float:
        return metrics.registry.get_sample_value("consistency_job_outcomes_total",
                                                 {"stage": "prepare", "outcome": outcome}) or 0.0
    assert (count("retried"), count("failed"), count("succeeded")) == (1.0, 1.0, 0.0)
    assert metrics.registry.get_sample_value("consistency_stage_duration_seconds_count",
                                             {"stage": "prepare", "phase": "1B.1"}) == 2.0


# ---- Kueue -----------------------------------------------------------------------------------------------

def test_queue_name_labels_and_suspends_every_job_spec_wins_over_the_chart_default() -> None:
    settings = parse_config([], env={"CONSISTENCY_QUEUE_NAME": "team-default"})
    spec, action = first_action(BASE_SPEC)
    job = build_job(config=action.config, record=action.record, resources=action.resources, spec=spec,
                    settings=settings)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-default"
    assert job["spec"]["suspend"] is True
    # The queue label is on the Job only (Kueue's Job integration), not copied onto the pods.
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    spec, action = first_action({**BASE_SPEC, "resources": {"queueName": "gpu-a100"}})
    job = build_job(config=action.config, record=action.record, resources=action.resources, spec=spec,
                    settings=settings)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-a100"
    job = build_job(config=action.config, record=action.record, resources=action.resources,
                    spec=parse_spec(BASE_SPEC), settings=OperatorConfig())
    assert "suspend" not in job["spec"] and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


def test_queued_stage_exports_no_start_or_deadline_until_admitted() -> None:
    from consistency_core import queueing

    metrics = build_metrics()
    observer = CampaignObserver(metrics)
    spec = parse_spec(BASE_SPEC)
    status = sm.decide(spec, None, campaign="c1", namespace="ns", now=NOW).status
    queueing.observe_job(status, suspended=True, started=None, now=NOW)
    observer.observe("ns", "c1", spec, status)
    assert not [s for fam in metrics.stage_start.collect() for s in fam.samples]
    assert not [s for fam in metrics.stage_deadline.collect() for s in fam.samples]
    queueing.observe_job(status, suspended=False, started=None, now=NOW.replace(hour=3))
    observer.observe("ns", "c1", spec, status)
    [sample] = [s for fam in metrics.stage_start.collect() for s in fam.samples]
    assert sample.value == NOW.replace(hour=3).timestamp()


# ---- locked-down stage pods ------------------------------------------------------------------------------

def test_runtime_class_and_user_namespaces_from_the_chart_or_the_spec() -> None:
    settings = parse_config([], env={"CONSISTENCY_WORKER_RUNTIME_CLASS": "gvisor",
                                     "CONSISTENCY_WORKER_HOST_USERS": "false"})
    spec, action = first_action(BASE_SPEC)
    pod = pod_spec_of(spec, action, settings)
    assert pod["runtimeClassName"] == "gvisor" and pod["hostUsers"] is False
    spec, action = first_action({**BASE_SPEC, "resources": {"runtimeClassName": "kata", "hostUsers": True}})
    pod = pod_spec_of(spec, action, settings)
    assert pod["runtimeClassName"] == "kata" and "hostUsers" not in pod
    pod = pod_spec_of(parse_spec(BASE_SPEC), action, OperatorConfig())
    assert "runtimeClassName" not in pod and "hostUsers" not in pod
    with pytest.raises(SystemExit, match="CONSISTENCY_WORKER_HOST_USERS"):
        parse_config([], env={"CONSISTENCY_WORKER_HOST_USERS": "maybe"})
