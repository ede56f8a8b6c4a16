"""Drive the pure state machine with synthetic stage results, as the operator or local runner would."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from consistency_core.spec import CampaignSpec, StageName, parse_spec
from consistency_core.stage_wire import StageResult
from consistency_core.statemachine import Decision, Finish, RunStage, decide

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def minimal_spec(**overrides) -> CampaignSpec:
    raw = {"model": {"uri": "hf://org/model"}, "store": {"uri": "s3://bucket/campaigns"}}
    raw.update(overrides)
    return parse_spec(raw)


def eval_metrics(consistency: float, math: float) -> dict:
    return {"problems": 100, "consistency": consistency, "meanAgreement": consistency,
            "accuracy": {"math": math, "code": 0.5}}


Outcome = Callable[[RunStage], StageResult]


def succeed_with(evals: list[tuple[float, float]]) -> Outcome:
    """Every stage succeeds; successive non-baseline evaluations report the given (consistency, math)."""
    queue = list(evals)

    def outcome(run: RunStage) -> StageResult:
        metrics: dict = {"selection": 664, "scan": 9000, "eval": 1483} if run.record.stage == StageName.prepare \
            else {"examples": 1000} if run.record.stage == StageName.distill else {}
        outputs = {}
        if run.record.stage == StageName.evaluate:
            if run.config.phase == "baseline":
                metrics = eval_metrics(0.1, 0.41)
            else:
                c, m = queue.pop(0) if len(queue) > 1 else queue[0]
                metrics = eval_metrics(c, m)
            outputs = {"report": run.config.output_uri + "/report.json"}
        if run.record.stage == StageName.train:
            outputs = {"adapter": run.config.output_uri + "/adapter"}
        if run.record.stage == StageName.report:
            root = run.config.output_uri
            outputs = {"report": root + "/report.md", "adapter": root + "/adapter",
                       "modelCard": root + "/adapter/README.md"}
        return StageResult(key=run.record.key, ok=True, metrics=metrics, outputs=outputs, seconds=600)

    return outcome


def drive(spec: CampaignSpec, outcome: Outcome, limit: int = 500, name: str = "demo") -> tuple[Decision, list]:
    """Run a campaign to its end; returns the final decision and the list of RunStage actions."""
    now = T0
    decision = decide(spec, None, campaign=name, now=now)
    runs = []
    for _ in range(limit):
        if isinstance(decision.action, Finish):
            return decision, runs
        runs.append(decision.action)
        now += timedelta(minutes=10)
        decision = decide(spec, decision.status, outcome(decision.action), campaign=name, now=now)
    raise AssertionError("campaign did not finish")
