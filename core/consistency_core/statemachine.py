"""The campaign state machine: a pure function of (spec, status, finished-stage result).

    1B.1: prepare -> [baseline evaluate] -> generate -> distill -> train -> evaluate -> gate
      gate passed            -> 1B.2 (or Succeeded when 1B.2 is disabled)
      gate failed, tries left -> 1B.1 again (epochs + step, temperature from the schedule)
      gate failed, none left  -> Failed, with the measured numbers in the reason
    1B.2: generate (scan) -> distill (failures) -> train (from the 1B.1 adapter) -> evaluate -> Succeeded

Where the campaign stands is derived from the stage records in the status, never kept elsewhere, so
calling `decide` again with the stored status (as after an operator restart) yields the same action.
The action `RunStage` means "make sure this stage's Job exists, then wait for its result": creating it is
idempotent because the Job name is a function of (campaign, stage key, attempt).

This module holds the decisions only; plan.py says which stages exist and their keys, stage_builder.py
builds what each stage is told.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from consistency_core import cost, forecast
from consistency_core.names import job_name, parse_rfc3339, rfc3339
from consistency_core.plan import BASELINE_KEY, REPORT_KEY, Step, knobs, plan, report_step, stage_key
from consistency_core.spec import CampaignSpec, StageName, StageResources
from consistency_core.stage_builder import StageConfigBuilder
from consistency_core.stage_wire import StageConfig, StageResult
from consistency_core.status import (
    CampaignPhase,
    CampaignStatus,
    ConditionType,
    EvaluationRecord,
    EventType,
    Outputs,
    Reason,
    StageOutcome,
    StageRecord,
    TrainingPhase,
)


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: Reason
    message: str


@dataclass(frozen=True)
class RunStage:
    """Ensure the Job for `record` exists (create it if missing) and wait for its result."""

    record: StageRecord
    config: StageConfig
    resources: StageResources


@dataclass(frozen=True)
class Finish:
    phase: CampaignPhase
    reason: str
    message: str


Action = RunStage | Finish


@dataclass(frozen=True)
class Decision:
    status: CampaignStatus
    action: Action
    events: tuple[Event, ...] = field(default=())


def gated_consistency(spec: CampaignSpec, ev: EvaluationRecord) -> list[tuple[str, float | None]]:
    """(domain, consistency) for each domain the gate's consistency threshold applies to. A result without
    per-domain figures (from a worker before they existed) gives its pooled rate, labelled ""."""
    if not ev.consistency_by_domain:
        return [("", ev.consistency)]
    return [(d, ev.consistency_by_domain.get(d)) for d in spec.thresholds.consistency_domains]


def gate(spec: CampaignSpec, ev: EvaluationRecord) -> tuple[bool, str]:
    """Promotion check: every set threshold must be met; returns (passed, measured-vs-required text)."""
    th = spec.thresholds
    parts, ok = [], True

    def check(label: str, measured: float | None, required: float) -> None:
        nonlocal ok
        if measured is None:
            ok = False
            parts.append(f"{label} not measured (need >= {required:.2f})")
            return
        passed = measured >= required
        ok = ok and passed
        parts.append(f"{label} {measured:.3f} {'>=' if passed else '<'} {required:.2f}")

    if th.consistency is not None:
        for domain, measured in gated_consistency(spec, ev):
            check(f"{domain} consistency" if domain else "consistency", measured, th.consistency)
    if th.mean_agreement is not None:
        check("mean agreement", ev.mean_agreement, th.mean_agreement)
    for domain, required in sorted(th.accuracy.items()):
        check(f"{domain} accuracy", ev.accuracy.get(domain), required)
    return ok, ", ".join(parts) or "no thresholds set"


def _evaluation(step: Step, result: StageResult) -> EvaluationRecord:
    metrics = result.metrics
    accuracy = {str(k): float(v) for k, v in (metrics.get("accuracy") or {}).items() if v is not None}
    return EvaluationRecord(
        phase=step.config_phase,
        iteration=0 if step.key == BASELINE_KEY else step.iteration,
        consistency=metrics.get("consistency"),
        mean_agreement=metrics.get("meanAgreement"),
        accuracy=accuracy,
        consistency_by_domain=_per_domain(metrics.get("consistencyByDomain")),
        pass_at_1=_per_domain(metrics.get("passAt1")),
        pairwise_agreement=_per_domain(metrics.get("pairwiseAgreement")),
        cut_off_unanswered=metrics.get("cutOffUnanswered"),
        problems=int(metrics.get("problems", 0) or 0),
        report=result.outputs.get("report"),
        paired=metrics.get("paired") or {},
        primary=metrics.get("primary") or None,
    )


def _per_domain(values: object) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items() if v is not None} if isinstance(values, dict) else {}


def _step_of(spec: CampaignSpec, record: StageRecord) -> Step:
    if record.key == REPORT_KEY:
        return report_step(record.phase, record.iteration)
    return next(s for s in plan(spec, record.phase, record.iteration) if s.key == record.key)


def initial_status(now: datetime, generation: int | None = None) -> CampaignStatus:
    status = CampaignStatus(phase=CampaignPhase.running, training_phase=TrainingPhase.quick_fix, iteration=1,
                            observed_generation=generation)
    status.set_condition(ConditionType.ready, True, Reason.spec_valid, "spec accepted", now, generation)
    return status


def invalid_spec(status: CampaignStatus | None, error: Exception, now: datetime,
                 generation: int | None = None) -> CampaignStatus:
    """Status for a spec that fails validation: no stage runs until the spec is fixed."""
    status = status.model_copy(deep=True) if status else CampaignStatus()
    status.message = str(error)
    status.set_condition(ConditionType.ready, False, Reason.invalid_spec, str(error), now, generation)
    return status


def refuse(status: CampaignStatus | None, reason: Reason, message: str, now: datetime,
           generation: int | None = None) -> Decision:
    """End the campaign Failed for a reason no stage reported: the Kubernetes API refused a request for
    good, or the campaign's name cannot name its Jobs. The stage waiting on it is marked failed."""
    status = status.model_copy(deep=True) if status is not None else initial_status(now, generation)
    if status.finished:
        return Decision(status, _finish_of(status))
    current = status.current()
    if current is not None:
        current.outcome, current.end_time, current.message = StageOutcome.failed, rfc3339(now), message[:1000]
    events = [Event(EventType.warning, reason, message)]
    return _fail(status, reason, message, now, events)


def job_deleted(spec: CampaignSpec, status: CampaignStatus, *, campaign: str, namespace: str = "default",
                now: datetime, generation: int | None = None) -> Decision:
    """The running stage's Job is gone though no result was read: someone deleted it. That is an attempt
    (outcome Deleted) like a retryable failure, so retry.stageRetries bounds how often it can happen."""
    status = status.model_copy(deep=True)
    current = status.current()
    if current is None or status.finished:
        return decide(spec, status, None, campaign=campaign, namespace=namespace, now=now, generation=generation)
    message = f"Job {current.job_name} was deleted outside the operator"
    events = [Event(EventType.warning, Reason.job_deleted, f"{current.key} attempt {current.attempt}: {message}")]
    result = StageResult(key=current.key, ok=False, retryable=True, message=message)
    finished = _record_result(spec, status, current, result, now, events)
    current.outcome = StageOutcome.deleted
    if finished is not None:
        return finished
    return _advance(spec, status, campaign, namespace, now, generation, events)


def decide(
    spec: CampaignSpec,
    status: CampaignStatus | None,
    result: StageResult | None = None,
    *,
    campaign: str,
    namespace: str = "default",
    now: datetime,
    generation: int | None = None,
    dataset_rows: Mapping[str, int] | None = None,
) -> Decision:
    """Next action for a campaign, and the status that records it. Never mutates its inputs.
    `dataset_rows`: rows of datasets the caller counted (local files), for the forecast of a new campaign."""
    events: list[Event] = []
    if status is None or status.phase == CampaignPhase.pending:
        # A new campaign (or one whose status was never written): start 1B.1 iteration 1, with the plan's
        # forecast (what `consistency plan` prints) kept in the status.
        status = initial_status(now, generation)
        status.forecast = forecast.campaign_forecast(spec, forecast.dataset_sizes(spec, dataset_rows),
                                                     campaign=campaign, namespace=namespace)
        events.append(Event(EventType.normal, Reason.campaign_started, "phase 1B.1, iteration 1"))
    else:
        status = status.model_copy(deep=True)
    if status.finished:
        # Terminal phases are final: repeat the verdict so a re-reconcile changes nothing.
        return Decision(status, _finish_of(status))

    current = status.current()
    if current is not None:
        if result is None or result.key != current.key:
            # The running stage has not reported (or the result is someone else's): keep its Job in place.
            return Decision(status, _run(spec, status, current, campaign, namespace), tuple(events))
        finished = _record_result(spec, status, current, result, now, events)
        if finished is not None:
            # The result ended the campaign (a stage failed for good).
            return finished
    return _advance(spec, status, campaign, namespace, now, generation, events)


def _record_result(
    spec: CampaignSpec, status: CampaignStatus, current: StageRecord, result: StageResult, now: datetime,
    events: list[Event],
) -> Decision | None:
    """Fold a finished stage into the status. Returns the decision when the result itself ends the campaign."""
    current.end_time = rfc3339(now)
    seconds = result.seconds
    if seconds is None and current.start_time:
        seconds = (now - parse_rfc3339(current.start_time)).total_seconds()
    current.seconds = round(max(seconds or 0.0, 0.0), 3)
    current.gpu_hours = round(cost.actual_gpu_hours(seconds or 0.0, current.gpus), 6)
    status.cost.gpu_hours = round(status.cost.gpu_hours + current.gpu_hours, 6)
    status.cost.usd = round(status.cost.usd + cost.usd(current.gpu_hours, spec.budget), 4)
    status.cost.forecast_usd = 0.0
    current.result = result.model_dump(mode="json", by_alias=True, include={"metrics", "message", "retryable"})
    current.artifacts = dict(result.outputs)
    current.message = result.message[:1000]
    status.stage = None
    if not result.ok:
        current.outcome = StageOutcome.failed
        attempts = len(status.attempts(current.key))
        if result.retryable and attempts <= spec.retry.stage_retries:
            # A transient failure (preemption, OOM, store outage) with tries left: _advance starts the stage
            # again, because a failed record does not count as done.
            events.append(Event(EventType.warning, Reason.stage_retried,
                                f"{current.key} attempt {attempts} failed ({result.message[:200]}); retrying"))
            return None
        # A permanent failure, or no tries left: the same config would fail the same way.
        reason = f"stage {current.key} failed after {attempts} attempt(s): {result.message[:500]}"
        events.append(Event(EventType.warning, Reason.stage_failed, reason))
        return _fail(status, Reason.stage_failed, reason, now, events)
    current.outcome = StageOutcome.succeeded
    events.append(Event(EventType.normal, Reason.stage_succeeded, f"{current.key} finished"))
    step = _step_of(spec, current)
    if step.stage == StageName.evaluate:
        _record_evaluation(spec, status, step, result, now, events)
    if step.stage == StageName.report:
        out = result.outputs
        status.outputs = Outputs(adapter=out.get("adapter"), report=out.get("report"),
                                 model_card=out.get("modelCard"), merged=out.get("merged"))
    return None


def _record_evaluation(
    spec: CampaignSpec, status: CampaignStatus, step: Step, result: StageResult, now: datetime,
    events: list[Event],
) -> None:
    ev = _evaluation(step, result)
    if step.key == BASELINE_KEY:
        # The base model's numbers are a reference for comparisons, never the campaign's headline figures.
        status.evaluations = [*status.evaluations, ev]
        return
    measured = [v for _, v in gated_consistency(spec, ev) if v is not None]
    status.consistency = min(measured) if measured else None
    status.math_accuracy = ev.accuracy.get("math")
    status.primary_change = ev.primary.get("difference") if ev.primary else None
    if step.phase == TrainingPhase.quick_fix:
        # Only 1B.1 is gated: its verdict decides between 1B.2, another iteration and failure (_advance).
        ev.gate_passed, detail = gate(spec, ev)
        status.set_condition(ConditionType.gate_passed, ev.gate_passed,
                             Reason.thresholds_met if ev.gate_passed else Reason.thresholds_not_met,
                             f"1B.1 iteration {step.iteration}: {detail}", now)
        if ev.gate_passed:
            status.adapter = result.outputs.get("adapter") or _adapter_of(status, step)
        events.append(Event(EventType.normal if ev.gate_passed else EventType.warning,
                            Reason.gate_passed if ev.gate_passed else Reason.gate_failed,
                            f"iteration {step.iteration}: {detail}"))
    else:
        # 1B.2 continues from the gated adapter, so its adapter is the best one so far.
        status.adapter = result.outputs.get("adapter") or _adapter_of(status, step)
    status.evaluations = [*status.evaluations, ev]


def _adapter_of(status: CampaignStatus, step: Step) -> str | None:
    train = status.last_success(stage_key(step.phase, step.iteration, StageName.train))
    return train.artifacts.get("adapter") if train else None


def _advance(
    spec: CampaignSpec, status: CampaignStatus, campaign: str, namespace: str, now: datetime,
    generation: int | None, events: list[Event],
) -> Decision:
    """Nothing is running: start the next stage, move to the next iteration or phase, or finish."""
    phase, iteration = status.training_phase or TrainingPhase.quick_fix, max(status.iteration, 1)
    pending = [s for s in plan(spec, phase, iteration) if status.last_success(s.key) is None]
    if pending:
        # Stages of this iteration are left (or one failed and may retry): run the first of them.
        return _start(spec, status, pending[0], campaign, namespace, now, generation, events)
    if phase == TrainingPhase.expansion:
        # 1B.2 is the last phase and is not gated: its evaluation is the campaign's result.
        if status.last_success(REPORT_KEY) is None:
            return _start(spec, status, report_step(phase, iteration), campaign, namespace, now, generation,
                          events)
        ev = status.evaluations[-1]
        msg = f"1B.2 done: consistency {_fmt(ev.consistency)}, accuracy {_fmt_acc(ev.accuracy)}"
        return _succeed(status, msg, now, events)
    last = status.evaluations[-1]
    _, detail = gate(spec, last)
    if last.gate_passed and not spec.expansion.enabled:
        # The user asked for the quick fix only: a passed gate is the end, after the report stage.
        if status.last_success(REPORT_KEY) is None:
            return _start(spec, status, report_step(phase, iteration), campaign, namespace, now, generation,
                          events)
        return _succeed(status, f"1B.1 gate passed ({detail}); 1B.2 disabled", now, events)
    if last.gate_passed:
        # Promotion: 1B.2 trains on the failures of the model that passed the gate.
        status.training_phase, status.iteration = TrainingPhase.expansion, 1
        events.append(Event(EventType.normal, Reason.promoted, f"1B.1 -> 1B.2 ({detail})"))
    elif iteration < spec.retry.max_iterations:
        # Gate failed with iterations left: retry 1B.1 with more epochs and a cooler temperature (knobs).
        status.iteration = iteration + 1
        k = knobs(spec, iteration + 1)
        events.append(Event(EventType.normal, Reason.iteration_started,
                            f"1B.1 iteration {iteration + 1}: epochs {k.epochs}, temperature {k.temperature}"))
    else:
        # Gate failed and the retry policy is spent: fail with the measured numbers, so users see how far off.
        return _fail(status, Reason.gate_failed, f"1B.1 gate failed after {iteration} iteration(s): {detail}", now,
                     events)
    # The new phase or iteration has stages pending now: recurse once to start its first one.
    return _advance(spec, status, campaign, namespace, now, generation, events)


def _start(
    spec: CampaignSpec, status: CampaignStatus, step: Step, campaign: str, namespace: str, now: datetime,
    generation: int | None, events: list[Event],
) -> Decision:
    """Record a new attempt of `step` and ask for its Job, unless its forecast breaks the budget."""
    attempt = len(status.attempts(step.key)) + 1
    configs = StageConfigBuilder(spec, status, campaign, namespace)
    config = configs.config(step, attempt)
    resources = spec.resources.stages.for_stage(step.stage)
    gpus = resources.gpus * (resources.shards if step.stage == StageName.generate else 1)
    # The bound (whole token budgets) guards the budget; the expected cost learns from earlier stages.
    estimate = forecast.estimate(spec, status, step.stage, gpus, configs.workload(step, config))
    forecast_usd = estimate.bound_usd
    if spec.budget.max_usd is not None and status.cost.usd + forecast_usd > spec.budget.max_usd:
        # Stop before spending, not after: a stage cannot be half-paid.
        reason = (f"budget: {step.key} is forecast at ${forecast_usd:.2f}; spent ${status.cost.usd:.2f} of "
                  f"${spec.budget.max_usd:.2f}")
        events.append(Event(EventType.warning, Reason.budget_exceeded, reason))
        return _fail(status, Reason.budget_exceeded, reason, now, events)
    record = StageRecord(
        key=step.key, stage=step.stage, phase=step.phase, iteration=step.iteration, attempt=attempt,
        job_name=job_name(campaign, step.key, attempt), gpus=gpus, start_time=rfc3339(now),
        forecast_usd=forecast_usd, expected_usd=estimate.expected_usd, prior_seconds=estimate.prior_seconds,
        expected_seconds=estimate.expected_seconds,
    )
    status.stages = [*status.stages, record]
    status.stage = step.key
    status.cost.forecast_usd = forecast_usd
    status.message = f"running {step.key}"
    status.set_condition(ConditionType.progressing, True, Reason.stage_running, f"{step.key} (attempt {attempt})",
                         now, generation)
    events.append(Event(EventType.normal, Reason.stage_started, f"{step.key} as Job {record.job_name} "
                                                  f"(forecast ${estimate.expected_usd:.2f}, "
                                                  f"at most ${forecast_usd:.2f})"))
    return Decision(status, RunStage(record, config, resources), tuple(events))


def _run(spec: CampaignSpec, status: CampaignStatus, record: StageRecord, campaign: str,
         namespace: str) -> RunStage:
    step = _step_of(spec, record)
    config = StageConfigBuilder(spec, status, campaign, namespace).config(step, record.attempt)
    return RunStage(record, config, spec.resources.stages.for_stage(step.stage))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fmt_acc(accuracy: dict[str, float]) -> str:
    return ", ".join(f"{d} {v:.3f}" for d, v in sorted(accuracy.items())) or "n/a"


def _fail(status: CampaignStatus, reason: Reason, message: str, now: datetime, events: list[Event]) -> Decision:
    status.phase, status.stage, status.message = CampaignPhase.failed, None, message
    status.set_condition(ConditionType.progressing, False, reason, message, now)
    status.set_condition(ConditionType.failed, True, reason, message, now)
    events.append(Event(EventType.warning, Reason.campaign_failed, message))
    return Decision(status, Finish(CampaignPhase.failed, reason, message), tuple(events))


def _succeed(status: CampaignStatus, message: str, now: datetime, events: list[Event]) -> Decision:
    status.phase, status.stage, status.message = CampaignPhase.succeeded, None, message
    status.set_condition(ConditionType.progressing, False, Reason.completed, message, now)
    status.set_condition(ConditionType.complete, True, Reason.completed, message, now)
    events.append(Event(EventType.normal, Reason.campaign_succeeded, message))
    return Decision(status, Finish(CampaignPhase.succeeded, Reason.completed, message), tuple(events))


def _finish_of(status: CampaignStatus) -> Finish:
    failed = status.phase == CampaignPhase.failed
    cond = status.condition(ConditionType.failed if failed else ConditionType.complete)
    reason = cond.reason if cond else status.phase.value
    return Finish(status.phase, reason, status.message)
