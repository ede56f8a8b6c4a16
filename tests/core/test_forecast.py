"""The cost forecast: the plan's arithmetic against hand-computed figures, and learning from measured stages."""

from __future__ import annotations

import pytest
from consistency_core import cost, forecast
from consistency_core.spec import StageName
from consistency_core.stage_wire import StageResult
from consistency_core.status import StageOutcome

from tests.core.helpers import drive, minimal_spec, succeed_with

# Round figures so every stage is checkable by hand: USD = device-seconds / 1000 at 3.6 $/GPU-h.
HAND = {
    "datasets": [
        {"name": "t", "uri": "/data/t.jsonl", "format": "gsm8k", "roles": ["train"]},
        {"name": "s", "uri": "/data/s.jsonl", "format": "gsm8k", "roles": ["scan"]},
        {"name": "e", "uri": "/data/e.jsonl", "format": "gsm8k", "roles": ["eval"]},
    ],
    "quickFix": {"selection": [{"dataset": "t", "count": 100}], "samples": 4, "maxNewTokens": 100, "epochs": 2,
                 "maxPerProblem": 2},
    "expansion": {"scanDatasets": ["s"], "samples": 4, "maxNewTokens": 100, "maxExamples": 300,
                  "maxPerProblem": 2, "replayFraction": 0.25, "epochs": 1},
    "evaluation": {"datasets": ["e"], "samples": 4, "maxNewTokens": 100, "baseline": True},
    "retry": {"maxIterations": 2, "epochsStep": 1, "stageRetries": 1},
    "budget": {"gpuHourUsd": 3.6, "throughput": {"generateTokensPerSecond": 1000, "trainTokensPerSecond": 2000,
                                                 "promptTokens": 100}},
}
ROWS = {"t": 150, "s": 200, "e": 50}


def hand_plan(max_usd: float | None = None):
    spec = minimal_spec(**{**HAND, "budget": {**HAND["budget"], "maxUsd": max_usd}})
    return forecast.campaign_forecast(spec, forecast.dataset_sizes(spec, ROWS))


def test_plan_matches_the_hand_computed_campaign():
    plan = hand_plan()
    seconds = {s.key: s.seconds for s in plan.stages}
    # evaluate: 50 problems x (4 + 1) answers x 100 tokens / 1000 tok/s = 25 s
    # 1B.1 generate: 100 x 5 x 100 / 1000 = 50 s; train: 100 problems x 2 per problem x 2 epochs x 100 / 2000 = 20 s
    # iteration 2 trains 3 epochs: 30 s; 1B.2 generate: 200 x 5 x 100 / 1000 = 100 s
    # 1B.2 train: min(300, 200 x 2) = 300 new + 300 x 0.25 / 0.75 = 100 replayed, 1 epoch: 400 x 100 / 2000 = 20 s
    assert seconds == {"prepare": 0, "baseline-evaluate": 25, "1b1-i1-generate": 50, "1b1-i1-distill": 0,
                       "1b1-i1-train": 20, "1b1-i1-evaluate": 25, "1b1-i2-generate": 50, "1b1-i2-distill": 0,
                       "1b1-i2-train": 30, "1b1-i2-evaluate": 25, "1b2-generate": 100, "1b2-distill": 0,
                       "1b2-train": 20, "1b2-evaluate": 25, "report": 0}
    rows = {s.key: s for s in plan.stages}
    assert (rows["1b2-train"].examples, rows["1b1-i2-train"].epochs, rows["1b2-generate"].problems) == (400, 3, 200)
    assert not rows["1b1-i2-generate"].first_pass and rows["1b2-generate"].first_pass
    assert rows["1b1-i1-generate"].tokens == 50_000 and rows["1b1-i1-generate"].usd == pytest.approx(0.05)
    # first pass: 25 + (50 + 20 + 25) + (100 + 20 + 25) = 265 s; worst: 2 attempts x (265 + 50 + 30 + 25) = 740 s
    assert plan.first_pass_usd == pytest.approx(0.265) and plan.worst_case_usd == pytest.approx(0.74)
    assert plan.first_pass_gpu_hours == pytest.approx(265 / 3600, abs=1e-4)
    assert plan.verdict == "NoBudget" and plan.unknown == []


@pytest.mark.parametrize(("max_usd", "verdict"), [(1.0, "WithinBudget"), (0.74, "WithinBudget"),
                                                  (0.5, "MayExceedBudget"), (0.2, "ExceedsBudget")])
def test_verdict_against_the_budget(max_usd, verdict):
    assert hand_plan(max_usd).verdict == verdict


def test_unknown_sizes_make_the_plan_incomplete_and_limits_size_it():
    spec = minimal_spec(**HAND)
    plan = forecast.campaign_forecast(spec, forecast.dataset_sizes(spec))  # local files not counted
    assert plan.verdict == "Incomplete" and any("baseline-evaluate" in u for u in plan.unknown)
    limited = minimal_spec(**{**HAND, "datasets": [{**d, "limit": 10} for d in HAND["datasets"]]})
    sizes = forecast.dataset_sizes(limited)
    assert sizes == {"t": 10, "s": 10, "e": 10}
    assert forecast.dataset_sizes(limited, ROWS) == {"t": 10, "s": 10, "e": 10}  # the limit caps counted rows


def test_default_public_datasets_are_sized_without_download():
    sizes = forecast.dataset_sizes(minimal_spec())
    # GSM8K train, GSM8K test, MBPP train, HumanEval, MMLU validation capped at its limit of 1000
    assert sizes == {"gsm8k-train": 7473, "gsm8k-test": 1319, "mbpp-train": 374, "humaneval": 164,
                     "mmlu-validation": 1000}


def test_the_forecast_learns_from_measured_stages_and_the_bound_stays():
    spec = minimal_spec(**HAND)
    # Evaluation measured: 250 answers of 20 tokens (a fifth of the 100-token budget) in 100 s on 1 GPU = 50 tok/s.
    eval_metrics = {"generatedTokens": 5000, "countedAnswers": 250}
    train_metrics = {"tokens": 8000, "examples": 40}  # 40 examples x 2 epochs: 100 tokens each, 80 tok/s
    def outcome(run):
        metrics = eval_metrics if run.record.stage == StageName.evaluate else (
            train_metrics if run.record.stage == StageName.train else {})
        base = succeed_with([(0.9, 0.9)])(run)
        if run.record.stage == StageName.prepare:
            base = base.model_copy(update={"metrics": {"selection": 100, "scan": 200, "eval": 50}})
        if run.record.stage == StageName.distill:
            base = base.model_copy(update={"metrics": {"examples": 40}})
        return base.model_copy(update={"metrics": {**base.metrics, **metrics}, "seconds": 100.0})

    final, runs = drive(spec, outcome)
    records = {r.record.key: r.record for r in runs}
    baseline, generate = records["baseline-evaluate"], records["1b1-i1-generate"]
    # Before anything was measured, expected = prior = the spec's figures at the whole budget.
    assert baseline.prior_seconds == baseline.expected_seconds == 25
    # After the baseline: 50 tok/s and a fifth of the budget -> 100 x 5 x 100 x 0.2 / 50 = 200 s expected;
    # the bound keeps whole budgets at the measured speed: 100 x 5 x 100 / 50 = 1000 s = $1.00.
    assert generate.prior_seconds == 50 and generate.expected_seconds == 200
    assert generate.forecast_usd == pytest.approx(1.0) and generate.expected_usd == pytest.approx(0.2)
    # Train learned nothing yet (first train): the spec's 2000 tok/s, 40 examples x 2 epochs x 100 tokens = 4 s.
    assert records["1b1-i1-train"].expected_seconds == 4
    # 1B.2's train: 80 tok/s, 100 tokens per example-epoch (8000 / 80), 40 examples x 1 epoch = 50 s.
    assert records["1b2-train"].expected_seconds == 50 and records["1b2-train"].prior_seconds == 2
    done = [r for r in final.status.stages if r.outcome == StageOutcome.succeeded]
    assert all(r.seconds == 100.0 for r in done)


def test_learned_rates_pool_generate_and_evaluate():
    spec = minimal_spec(**HAND)
    final, _ = drive(spec, lambda run: StageResult(key=run.record.key, ok=True, seconds=50.0, metrics=(
        {"selection": 100, "scan": 200, "eval": 50} if run.record.stage == StageName.prepare else
        {"generatedTokens": 1000, "countedAnswers": 100} if run.record.stage == StageName.generate else
        {"generatedTokens": 3000, "countedAnswers": 100, "problems": 20, "consistency": 0.9,
         "accuracy": {"math": 0.9}} if run.record.stage == StageName.evaluate else {}),
        outputs={"adapter": "a", "report": "r"} if run.record.stage != StageName.prepare else {}))
    expected, bound = forecast.learned_rates(spec, final.status)
    answered = [r for r in final.status.stages if r.stage in (StageName.generate, StageName.evaluate)]
    tokens = sum(1000 if r.stage == StageName.generate else 3000 for r in answered)
    assert expected.generate_tokens_per_second == pytest.approx(tokens / (50.0 * len(answered)))
    assert expected.answer_share == pytest.approx(tokens / (100 * 100 * len(answered)))
    assert bound.answer_share == 1.0 and bound.generate_tokens_per_second == expected.generate_tokens_per_second
    # Nothing trained with token counts: the spec's training figures stay.
    assert bound.train_tokens_per_second == 2000 and bound.train_tokens_per_example == 100


def test_configured_rates_reproduce_the_old_upper_bound():
    spec = minimal_spec()
    work = cost.Workload(problems=664, samples=5, max_new_tokens=512)
    # 664 x 6 x 512 / 2000 tok/s / 3600 = 0.2833 GPU-h, as the forecast always gave
    assert cost.forecast_gpu_hours(StageName.generate, 1, work, spec.budget) == pytest.approx(0.28331, abs=1e-5)
    assert cost.forecast_gpu_hours(StageName.generate, 0, work, spec.budget) == 0.0
