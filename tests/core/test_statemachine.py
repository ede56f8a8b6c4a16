from datetime import timedelta

import pytest
from consistency_core.plan import BASELINE_KEY, PREPARE_KEY, knobs, max_stages, stage_key
from consistency_core.spec import SpecError, StageName
from consistency_core.stage_wire import StageResult
from consistency_core.statemachine import Finish, RunStage, decide
from consistency_core.status import BASELINE, CampaignPhase, StageOutcome, TrainingPhase
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import T0, drive, minimal_spec, succeed_with


def keys(runs):
    return [r.record.key for r in runs]


def test_first_action_is_prepare_with_full_config():
    spec = minimal_spec()
    d = decide(spec, None, campaign="demo", namespace="ml", now=T0)
    assert isinstance(d.action, RunStage)
    cfg = d.action.config
    assert cfg.stage == StageName.prepare and cfg.key == PREPARE_KEY
    assert cfg.output_uri == "s3://bucket/campaigns/ml/demo/prepare"
    assert [s.name for s in cfg.params.datasets] == [ds.name for ds in spec.datasets]
    assert d.status.phase == CampaignPhase.running and d.status.iteration == 1
    assert d.status.condition("Ready").status == "True"
    assert d.action.record.job_name == "demo-prepare"
    assert any(e.reason == "StageStarted" for e in d.events)


def test_happy_path_promotes_and_succeeds():
    spec = minimal_spec()
    final, runs = drive(spec, succeed_with([(0.7, 0.6), (0.8, 0.65)]))
    assert keys(runs) == [
        "prepare", "baseline-evaluate",
        "1b1-i1-generate", "1b1-i1-distill", "1b1-i1-train", "1b1-i1-evaluate",
        "1b2-generate", "1b2-distill", "1b2-train", "1b2-evaluate", "report",
    ]
    assert final.action.phase == CampaignPhase.succeeded
    status = final.status
    assert status.condition("GatePassed").status == "True"
    assert [e.phase for e in status.evaluations] == ["baseline", TrainingPhase.quick_fix, TrainingPhase.expansion]
    # 1B.2 continues from the 1B.1 adapter and scans with it; its evaluation compares against 1B.1's report
    by_key = {r.record.key: r.config for r in runs}
    adapter = "s3://bucket/campaigns/default/demo/1b1-i1-train/adapter"
    assert by_key["1b2-train"].params.init_adapter_uri == adapter
    assert by_key["1b2-generate"].params.adapter_uri == adapter
    assert by_key["1b2-generate"].params.problems_uri.endswith("/prepare/scan.jsonl")
    assert by_key["1b2-distill"].params.mode == "failures"
    assert by_key["1b2-evaluate"].params.baseline_report_uri.endswith("1b1-i1-evaluate/report.json")
    assert by_key["1b1-i1-evaluate"].params.baseline_report_uri.endswith("baseline-evaluate/report.json")
    assert by_key[BASELINE_KEY].params.adapter_uri is None
    assert status.consistency == 0.8 and status.math_accuracy == 0.65
    # actual cost: 10 minutes per GPU stage at 1 GPU, $2.5/h; prepare and distill are CPU-only
    gpu_stages = [k for k in keys(runs) if not k.endswith(("prepare", "distill", "report"))]
    assert abs(status.cost.gpu_hours - len(gpu_stages) * 600 / 3600) < 1e-4
    assert abs(status.cost.usd - status.cost.gpu_hours * 2.5) < 1e-3


def test_training_knobs_reach_the_train_stage_config():
    spec = minimal_spec(quickFix={"checkpointSteps": 7, "lora": {"r": 4}}, expansion={"checkpointSteps": 9})
    _, runs = drive(spec, succeed_with([(0.9, 0.9)]))
    by_key = {r.record.key: r.config.params for r in runs}
    assert (by_key["1b1-i1-train"].training.checkpoint_steps, by_key["1b1-i1-train"].training.lora.r) == (7, 4)
    assert by_key["1b2-train"].training.checkpoint_steps == 9


def test_train_method_and_gpu_count_reach_the_train_stage():
    default = {r.record.key: r.config.params for r in drive(minimal_spec(), succeed_with([(0.9, 0.9)]))[1]}
    assert default["1b1-i1-train"].training.method == "qlora" and default["1b1-i1-train"].processes == 1
    spec = minimal_spec(quickFix={"method": "lora"}, expansion={"method": "full"},
                        resources={"stages": {"train": {"gpus": 4}}})
    by_key = {r.record.key: r.config.params for r in drive(spec, succeed_with([(0.9, 0.9)]))[1]}
    assert (by_key["1b1-i1-train"].training.method, by_key["1b2-train"].training.method) == ("lora", "full")
    # gpus > 1: the worker runs the train stage data-parallel in that many torchrun processes.
    assert by_key["1b1-i1-train"].processes == by_key["1b2-train"].processes == 4


def test_full_fine_tuning_in_1b1_needs_it_in_1b2():
    with pytest.raises(SpecError, match=r"spec\.expansion\.method: must be full when spec\.quickFix\.method is full"):
        minimal_spec(quickFix={"method": "full"})
    assert minimal_spec(quickFix={"method": "full"}, expansion={"method": "full"}).quick_fix.method == "full"
    assert minimal_spec(quickFix={"method": "full"}, expansion={"enabled": False}).expansion.method == "qlora"


def test_gate_failure_iterates_with_adjusted_knobs_then_passes():
    spec = minimal_spec()
    final, runs = drive(spec, succeed_with([(0.3, 0.4), (0.7, 0.6), (0.9, 0.7)]))
    by_key = {r.record.key: r.config for r in runs}
    assert "1b1-i2-train" in by_key and "1b1-i3-train" not in by_key
    assert "prepare" in by_key and "1b1-i2-prepare" not in by_key  # prepare runs once
    assert by_key["1b1-i1-train"].params.training.epochs == 2 and by_key["1b1-i2-train"].params.training.epochs == 3
    assert by_key["1b1-i1-generate"].params.sampling.temperature == 0.7
    assert by_key["1b1-i2-generate"].params.sampling.temperature == 0.2
    assert by_key["1b2-train"].params.init_adapter_uri.endswith("1b1-i2-train/adapter")
    assert final.action.phase == CampaignPhase.succeeded
    assert [e.gate_passed for e in final.status.evaluations if e.phase == TrainingPhase.quick_fix] == [False, True]


def test_gate_never_passing_fails_with_measured_numbers():
    spec = minimal_spec(retry={"maxIterations": 2})
    final, runs = drive(spec, succeed_with([(0.3, 0.4)]))
    assert isinstance(final.action, Finish) and final.action.phase == CampaignPhase.failed
    assert final.action.reason == "GateFailed"
    assert "consistency 0.300 < 0.60" in final.action.message and "math accuracy 0.400 < 0.55" in final.action.message
    assert final.status.iteration == 2
    assert not any(k.startswith("1b2") for k in keys(runs))
    assert final.status.condition("Failed").status == "True"


def test_disabled_expansion_succeeds_at_the_gate():
    final, runs = drive(minimal_spec(expansion={"enabled": False}), succeed_with([(0.9, 0.9)]))
    assert final.action.phase == CampaignPhase.succeeded and keys(runs)[-2:] == ["1b1-i1-evaluate", "report"]


def test_missing_gated_metric_fails_the_gate():
    spec = minimal_spec(thresholds={"accuracy": {"reasoning": 0.5}}, retry={"maxIterations": 1})
    final, _ = drive(spec, succeed_with([(0.9, 0.9)]))
    assert final.action.phase == CampaignPhase.failed and "reasoning accuracy not measured" in final.action.message


def _failing(key: str, retryable: bool, times: int):
    ok = succeed_with([(0.9, 0.9)])
    failures = {"n": 0}

    def outcome(run):
        if run.record.key == key and failures["n"] < times:
            failures["n"] += 1
            return StageResult(key=run.record.key, ok=False, retryable=retryable, message="CUDA OOM", seconds=60)
        return ok(run)

    return outcome


def test_retryable_stage_failure_retries_with_new_job_then_succeeds():
    final, runs = drive(minimal_spec(), _failing("1b1-i1-train", retryable=True, times=2))
    trains = [r.record for r in runs if r.record.key == "1b1-i1-train"]
    assert [t.attempt for t in trains] == [1, 2, 3]
    assert [t.job_name for t in trains] == ["demo-1b1-i1-train", "demo-1b1-i1-train-a2", "demo-1b1-i1-train-a3"]
    assert final.action.phase == CampaignPhase.succeeded


def test_stage_failure_exhausts_retries_then_fails_with_reason():
    final, runs = drive(minimal_spec(), _failing("1b1-i1-train", retryable=True, times=99))
    assert len([r for r in runs if r.record.key == "1b1-i1-train"]) == 3  # 1 + stageRetries(2)
    assert final.action.phase == CampaignPhase.failed and final.action.reason == "StageFailed"
    assert "1b1-i1-train failed after 3 attempt(s): CUDA OOM" in final.action.message


def test_permanent_failure_is_not_retried():
    final, runs = drive(minimal_spec(), _failing("prepare", retryable=False, times=1))
    assert keys(runs) == ["prepare"] and final.action.phase == CampaignPhase.failed


def test_budget_stops_before_an_over_budget_stage():
    # 664 problems x 6 answers x 512 tokens / 2000 tok/s = ~0.28 GPU-h -> ~$0.71 for 1B.1 generate
    spec = minimal_spec(budget={"maxUsd": 0.5})
    final, runs = drive(spec, succeed_with([(0.9, 0.9)]))
    assert final.action.reason == "BudgetExceeded"
    assert "budget" in final.action.message and "of $0.50" in final.action.message
    assert all(r.record.forecast_usd <= 0.5 for r in runs)
    assert not any(r.record.stage == StageName.generate for r in runs)


def test_result_for_another_stage_is_ignored_and_running_stage_reissued():
    spec = minimal_spec()
    d = decide(spec, None, campaign="demo", now=T0)
    stale = StageResult(key="1b1-i1-train", ok=True)
    d2 = decide(spec, d.status, stale, campaign="demo", now=T0 + timedelta(minutes=1))
    assert d2.action == d.action and d2.status == d.status


def test_finished_campaign_stays_finished():
    final, _ = drive(minimal_spec(), succeed_with([(0.9, 0.9)]))
    again = decide(minimal_spec(), final.status, campaign="demo", now=T0 + timedelta(days=1))
    assert again.action == final.action and again.status == final.status and again.events == ()


def test_knobs_follow_retry_policy():
    spec = minimal_spec(retry={"maxIterations": 5, "epochsStep": 2, "temperatureSchedule": [0.2, 0.05]})
    assert [(k.epochs, k.temperature) for k in (knobs(spec, i) for i in range(1, 5))] == [
        (2, 0.7), (4, 0.2), (6, 0.05), (8, 0.05)]
    # the default schedule cools within 0.2-0.1, never to 0 (samples would all copy the greedy answer)
    assert [knobs(minimal_spec(), i).temperature for i in (2, 3, 4)] == [0.2, 0.1, 0.1]


# ---- properties ----------------------------------------------------------------------------------

campaign_outcomes = st.fixed_dictionaries({
    "evals": st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=6),
    "fail_key": st.sampled_from(["none", "prepare", "1b1-i1-generate", "1b1-i1-train", "1b2-distill"]),
    "fail_times": st.integers(0, 4),
    "retryable": st.booleans(),
    "max_iterations": st.integers(1, 4),
    "stage_retries": st.integers(0, 3),
    "baseline": st.booleans(),
    "budget": st.one_of(st.none(), st.floats(0, 5)),
})


def _spec_for(p):
    return minimal_spec(retry={"maxIterations": p["max_iterations"], "stageRetries": p["stage_retries"]},
                        evaluation={"baseline": p["baseline"]}, budget={"maxUsd": p["budget"]})


@settings(max_examples=120, deadline=None)
@given(campaign_outcomes)
def test_invariants(p):
    spec = _spec_for(p)
    base = succeed_with(p["evals"])
    failures = {"n": 0}

    def outcome(run):
        if run.record.key == p["fail_key"] and failures["n"] < p["fail_times"]:
            failures["n"] += 1
            return StageResult(key=run.record.key, ok=False, retryable=p["retryable"], message="boom", seconds=5)
        return base(run)

    now = T0
    decision = decide(spec, None, campaign="c", now=now)
    runs, starts = [], []
    while not isinstance(decision.action, Finish):
        # restart invariant: recomputing from the stored status alone gives the same action
        replay = decide(spec, decision.status, campaign="c", now=now + timedelta(seconds=1))
        assert replay.action == decision.action and replay.status == decision.status
        runs.append(decision.action)
        # a stage starts only if what is spent plus its forecast fits the budget
        starts.append((decision.status.cost.usd, decision.action.record.forecast_usd))
        assert len(runs) <= max_stages(spec), "campaign exceeded its stage bound"
        now += timedelta(minutes=3)
        decision = decide(spec, decision.status, outcome(decision.action), campaign="c", now=now)
    status = decision.status
    # iterations bounded
    assert 1 <= status.iteration <= spec.retry.max_iterations
    # no stage attempt started twice; job names unique
    attempts = [(r.record.key, r.record.attempt) for r in runs]
    assert len(attempts) == len(set(attempts))
    assert len({r.record.job_name for r in runs}) == len(runs)
    # at most one success per stage key (no stage re-run for one iteration)
    succeeded = [s.key for s in status.stages if s.outcome == StageOutcome.succeeded]
    assert len(succeeded) == len(set(succeeded))
    # never promotes without a gate pass
    if any(r.record.phase == TrainingPhase.expansion for r in runs):
        assert any(e.gate_passed for e in status.evaluations if e.phase == TrainingPhase.quick_fix)
        first_expansion = next(i for i, r in enumerate(runs) if r.record.phase == TrainingPhase.expansion)
        assert all(r.record.phase == TrainingPhase.quick_fix for r in runs[:first_expansion])
    # success means every gated threshold was met by some 1B.1 evaluation
    if status.phase == CampaignPhase.succeeded:
        assert status.condition("GatePassed").status == "True"
    if spec.budget.max_usd is not None:
        assert all(spent + forecast <= spec.budget.max_usd + 1e-9 for spent, forecast in starts)


def test_gate_consistency_is_per_domain_math_by_default():
    from consistency_core.spec import SpecError
    from consistency_core.statemachine import gate
    from consistency_core.status import EvaluationRecord

    # pooled 0.40 would fail; math, the gated domain by default, is 0.70; code (signatures) 0.10
    ev = EvaluationRecord(phase="1B.1", iteration=1, consistency=0.4, accuracy={"math": 0.6},
                          consistency_by_domain={"math": 0.7, "code": 0.1}, pass_at_1={"math": 0.5})
    passed, detail = gate(minimal_spec(), ev)
    assert passed and "math consistency 0.700 >= 0.60" in detail and "code consistency" not in detail
    both = minimal_spec(thresholds={"consistencyDomains": ["math", "code"]})
    passed, detail = gate(both, ev)
    assert not passed and "code consistency 0.100 < 0.60" in detail
    # a gated domain the evaluation did not measure fails the gate, saying so
    passed, detail = gate(minimal_spec(thresholds={"consistencyDomains": ["reasoning"]}), ev)
    assert not passed and "reasoning consistency not measured" in detail
    with pytest.raises(SpecError, match=r"spec.thresholds.consistencyDomains\[0\]"):
        minimal_spec(thresholds={"consistencyDomains": ["poetry"]})

    def outcome(run):
        result = succeed_with([(0.3, 0.6)])(run)
        if run.record.stage == StageName.evaluate:
            result.metrics.update(consistencyByDomain={"math": 0.65, "code": 0.05}, passAt1={"math": 0.52})
        return result

    final, _ = drive(minimal_spec(), outcome)
    assert final.action.phase == CampaignPhase.succeeded  # the pooled 0.30 no longer decides
    quick = next(e for e in final.status.evaluations if e.phase == TrainingPhase.quick_fix)
    assert quick.consistency_by_domain == {"math": 0.65, "code": 0.05} and quick.pass_at_1 == {"math": 0.52}
    assert final.status.consistency == 0.65


def test_failure_rule_and_warmup_ratio_come_from_the_spec():
    spec = minimal_spec(expansion={"failure": {"maxAgreement": 0.5, "includeWrong": False}, "warmupRatio": 0.2},
                        quickFix={"warmupRatio": 0.1})
    _, runs = drive(spec, succeed_with([(0.9, 0.9)]))
    by_key = {r.record.key: r.config.params for r in runs}
    for key in (BASELINE_KEY, "1b1-i1-evaluate", "1b2-evaluate"):
        assert (by_key[key].failure.max_agreement, by_key[key].failure.include_wrong) == (0.5, False)
    assert by_key["1b1-i1-train"].training.warmup_ratio == 0.1 and by_key["1b2-train"].training.warmup_ratio == 0.2
    default = {r.record.key: r.config.params for r in drive(minimal_spec(), succeed_with([(0.9, 0.9)]))[1]}
    assert default["1b1-i1-evaluate"].failure.max_agreement == 0.30
    assert default["1b1-i1-train"].training.warmup_ratio == 0.03


def test_expansion_replays_the_passing_1b1_iterations_training_data():
    _, runs = drive(minimal_spec(), succeed_with([(0.3, 0.4), (0.7, 0.6)]))
    params = {r.record.key: r.config.params for r in runs}["1b2-distill"]
    assert params.replay_uri == "s3://bucket/campaigns/default/demo/1b1-i2-distill/train.jsonl"
    assert params.failures.replay_fraction == 0.2
    _, runs = drive(minimal_spec(expansion={"replayFraction": 0}), succeed_with([(0.9, 0.9)]))
    params = {r.record.key: r.config.params for r in runs}["1b2-distill"]
    assert params.replay_uri is None and params.failures.replay_fraction == 0


def test_report_stage_runs_last_on_cpu_with_a_snapshot_and_sets_the_outputs():
    spec = minimal_spec()
    final, runs = drive(spec, succeed_with([(0.7, 0.6), (0.8, 0.65)]))
    report = runs[-1]
    assert report.record.key == "report" and report.config.stage == StageName.report
    assert report.resources.gpus == 0 and report.record.gpus == 0 and report.record.forecast_usd == 0
    params = report.config.params
    assert params.adapter_uri == "s3://bucket/campaigns/default/demo/1b2-train/adapter"
    assert params.spec == spec
    snapshot = [s["key"] for s in params.status["stages"]]
    assert snapshot[-1] == "1b2-evaluate" and "report" not in snapshot  # the campaign before its report
    assert [e["phase"] for e in params.status["evaluations"]] == ["baseline", "1B.1", "1B.2"]
    outputs = final.status.outputs
    assert outputs.report == "s3://bucket/campaigns/default/demo/report/report.md"
    assert outputs.adapter == "s3://bucket/campaigns/default/demo/report/adapter"
    assert outputs.model_card == "s3://bucket/campaigns/default/demo/report/adapter/README.md"
    assert outputs.merged is None


def test_quick_fix_only_campaign_reports_the_1b1_adapter():
    spec = minimal_spec(expansion={"enabled": False})
    final, runs = drive(spec, succeed_with([(0.3, 0.4), (0.9, 0.9)]))
    assert keys(runs)[-2:] == ["1b1-i2-evaluate", "report"]
    assert runs[-1].config.params.adapter_uri.endswith("1b1-i2-train/adapter")
    assert final.action.phase == CampaignPhase.succeeded and final.status.outputs is not None


def test_failed_campaign_runs_no_report():
    spec = minimal_spec(retry={"maxIterations": 1})
    final, runs = drive(spec, succeed_with([(0.1, 0.1)]))
    assert final.action.phase == CampaignPhase.failed and "report" not in keys(runs)
    assert final.status.outputs is None


def test_retryable_report_failure_is_retried():
    spec = minimal_spec(expansion={"enabled": False})
    ok = succeed_with([(0.9, 0.9)])
    failed_once: list[str] = []

    def outcome(run):
        if run.record.key == "report" and not failed_once:
            failed_once.append("x")
            return StageResult(key="report", ok=False, retryable=True, message="store timeout")
        return ok(run)

    final, runs = drive(spec, outcome)
    assert [r.record.attempt for r in runs if r.record.key == "report"] == [1, 2]
    assert final.action.phase == CampaignPhase.succeeded


def test_stage_keys_follow_the_glossary():
    assert stage_key(TrainingPhase.quick_fix, 2, StageName.train) == "1b1-i2-train"
    assert stage_key(TrainingPhase.expansion, 1, StageName.distill) == "1b2-distill"
    assert stage_key(TrainingPhase.quick_fix, 3, StageName.prepare) == PREPARE_KEY == "prepare"
    assert stage_key(BASELINE, 0, StageName.evaluate) == BASELINE_KEY == "baseline-evaluate"


def test_preference_objective_trains_on_distills_pairs_and_targets_reach_distill():
    spec = minimal_spec(quickFix={"objective": "preference", "method": "lora", "targets": "majority"},
                        expansion={"targets": "majority"})
    _, runs = drive(spec, succeed_with([(0.9, 0.9)]))
    params = {r.record.key: r.config.params for r in runs}
    assert params["1b1-i1-train"].data_uri == "s3://bucket/campaigns/default/demo/1b1-i1-distill/pairs.jsonl"
    assert params["1b2-train"].data_uri == "s3://bucket/campaigns/default/demo/1b2-distill/train.jsonl"
    assert params["1b1-i1-distill"].filter.targets == params["1b2-distill"].filter.targets == "majority"
    with pytest.raises(SpecError, match="objective preference needs method qlora or lora"):
        minimal_spec(quickFix={"objective": "preference", "method": "full"})
