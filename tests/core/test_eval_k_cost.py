"""The evaluation's k (evaluation.samples, default 8) is its own setting, and the cost forecast counts it."""

from __future__ import annotations

import pytest
from consistency_core import cost
from consistency_core.plan import BASELINE_KEY, PREPARE_KEY, plan
from consistency_core.spec import StageName
from consistency_core.stage_builder import StageConfigBuilder
from consistency_core.status import CampaignStatus, StageOutcome, StageRecord, TrainingPhase

from .helpers import minimal_spec


def _baseline_forecast(**evaluation: object) -> tuple[cost.Workload, float]:
    spec = minimal_spec(evaluation=evaluation) if evaluation else minimal_spec()
    prepared = StageRecord(key=PREPARE_KEY, stage=StageName.prepare, phase=TrainingPhase.quick_fix, iteration=1,
                           job_name="p", outcome=StageOutcome.succeeded, result={"metrics": {"eval": 100}})
    configs = StageConfigBuilder(spec, CampaignStatus(stages=[prepared]), "c", "ns")
    step = next(s for s in plan(spec, TrainingPhase.quick_fix, 1) if s.key == BASELINE_KEY)
    work = configs.workload(step, configs.config(step, 1))
    return work, cost.forecast_gpu_hours(StageName.evaluate, 1, work, spec.budget)


def test_evaluation_k_defaults_to_8_independently_of_the_training_phases() -> None:
    spec = minimal_spec(quickFix={"samples": 3})
    assert spec.evaluation.samples == 8 and spec.quick_fix.samples == 3


def test_cost_forecast_counts_the_evaluation_k() -> None:
    default, hours8 = _baseline_forecast()
    assert (default.problems, default.samples) == (100, 8)
    small, hours4 = _baseline_forecast(samples=4)
    assert small.samples == 4
    # one greedy answer plus k samples per problem, each at most maxNewTokens
    assert hours8 / hours4 == pytest.approx((8 + 1) / (4 + 1))
