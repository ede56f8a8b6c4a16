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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from consistency_core import cost
from consistency_core.names import job_name, parse_rfc3339, rfc3339
from consistency_core.spec import CampaignSpec, StageName, StageResources
from consistency_core.stages import (
    DISTILL_TRAIN,
    EVALUATE_REPORT,
    PREPARE_EVAL,
    PREPARE_SCAN,
    PREPARE_SELECTION,
    TRAIN_ADAPTER,
    DistillParams,
    EvaluateParams,
    GenerateParams,
    PrepareParams,
    StageConfig,
    StageResult,
    TrainParams,
    join_uri,
)
from consistency_core.status import (
    CampaignPhase,
    CampaignStatus,
    Condition,
    EvaluationRecord,
    StageOutcome,
    StageRecord,
    TrainingPhase,
)

PREPARE_KEY = "prepare"
BASELINE_KEY = "baseline-evaluate"


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
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


@dataclass(frozen=True)
class Step:
    key: str
    stage: StageName
    phase: TrainingPhase
    iteration: int


@dataclass(frozen=True)
class Knobs:
    """1B.1 settings of one iteration: later iterations train longer on cooler samples."""

    epochs: int
    temperature: float


def knobs(spec: CampaignSpec, iteration: int) -> Knobs:
    qf, retry = spec.quick_fix, spec.retry
    epochs = qf.epochs + (iteration - 1) * retry.epochs_step
    if iteration == 1 or not retry.temperature_schedule:
        temperature = qf.temperature
    else:
        schedule = retry.temperature_schedule
        temperature = schedule[min(iteration - 2, len(schedule) - 1)]
    return Knobs(epochs=epochs, temperature=temperature)


def plan(spec: CampaignSpec, phase: TrainingPhase, iteration: int) -> list[Step]:
    """Stages of one iteration, in order."""
    if phase == TrainingPhase.quick_fix:
        prefix = f"1b1-i{iteration}"
        steps = []
        if iteration == 1:
            steps.append(Step(PREPARE_KEY, StageName.prepare, phase, 1))
            if spec.evaluation.baseline:
                steps.append(Step(BASELINE_KEY, StageName.evaluate, phase, 1))
    else:
        prefix = "1b2"
        steps = []
    for stage in (StageName.generate, StageName.distill, StageName.train, StageName.evaluate):
        steps.append(Step(f"{prefix}-{stage.value}", stage, phase, iteration))
    return steps


def max_stages(spec: CampaignSpec) -> int:
    """Upper bound on Jobs a campaign can start (used by tests and as a safety net)."""
    per_try = spec.retry.stage_retries + 1
    quick = sum(len(plan(spec, TrainingPhase.quick_fix, i)) for i in range(1, spec.retry.max_iterations + 1))
    return (quick + len(plan(spec, TrainingPhase.expansion, 1))) * per_try


class _Campaign:
    """Builds stage configs: where each stage reads and writes, and with which knobs."""

    def __init__(self, spec: CampaignSpec, status: CampaignStatus, campaign: str, namespace: str):
        self.spec, self.status, self.campaign, self.namespace = spec, status, campaign, namespace
        self.root = join_uri(spec.store.uri, namespace, campaign)

    def out(self, key: str) -> str:
        return join_uri(self.root, key)

    def passing_adapter(self) -> str | None:
        return self.status.adapter

    def config(self, step: Step, attempt: int) -> StageConfig:
        spec = self.spec
        params: PrepareParams | GenerateParams | DistillParams | TrainParams | EvaluateParams
        prepared = self.out(PREPARE_KEY)
        generate_res = spec.resources.stages.generate
        if step.key == PREPARE_KEY:
            params = PrepareParams(
                datasets=spec.datasets,
                selection=spec.quick_fix.selection,
                scan_datasets=spec.expansion.scan_datasets if spec.expansion.enabled else [],
                eval_datasets=spec.evaluation.datasets,
            )
        elif step.key == BASELINE_KEY:
            params = self._evaluate(prepared, adapter=None, before=None)
        elif step.phase == TrainingPhase.quick_fix:
            params = self._quick_fix(step, prepared, generate_res.shards)
        else:
            params = self._expansion(step, prepared, generate_res.shards)
        return StageConfig(
            campaign=self.campaign,
            namespace=self.namespace,
            key=step.key,
            stage=step.stage,
            phase="baseline" if step.key == BASELINE_KEY else step.phase.value,
            iteration=step.iteration,
            attempt=attempt,
            seed=spec.seed,
            store=spec.store,
            output_uri=self.out(step.key),
            model=spec.model,
            backend=spec.backend,
            params=params,
        )

    def _evaluate(self, prepared: str, adapter: str | None, before: str | None) -> EvaluateParams:
        ev = self.spec.evaluation
        return EvaluateParams(
            problems_uri=join_uri(prepared, PREPARE_EVAL),
            samples=ev.samples,
            temperature=ev.temperature,
            max_new_tokens=ev.max_new_tokens,
            adapter_uri=adapter,
            baseline_report_uri=before,
        )

    def _baseline_report(self) -> str | None:
        return join_uri(self.out(BASELINE_KEY), EVALUATE_REPORT) if self.spec.evaluation.baseline else None

    def _quick_fix(self, step: Step, prepared: str, shards: int):
        qf = self.spec.quick_fix
        k = knobs(self.spec, step.iteration)
        prefix = f"1b1-i{step.iteration}"
        if step.stage == StageName.generate:
            return GenerateParams(
                problems_uri=join_uri(prepared, PREPARE_SELECTION),
                samples=qf.samples,
                temperature=k.temperature,
                max_new_tokens=qf.max_new_tokens,
                shards=shards,
                tensor_parallel_size=self.spec.resources.stages.generate.gpus or 1,
            )
        if step.stage == StageName.distill:
            return DistillParams(
                problems_uri=join_uri(prepared, PREPARE_SELECTION),
                generations_uri=self.out(f"{prefix}-generate"),
                mode="consistent",
                min_agreement=qf.min_agreement,
                max_per_problem=qf.max_per_problem,
            )
        if step.stage == StageName.train:
            return TrainParams(
                data_uri=join_uri(self.out(f"{prefix}-distill"), DISTILL_TRAIN),
                epochs=k.epochs,
                learning_rate=qf.learning_rate,
                batch_size=qf.batch_size,
                gradient_accumulation=qf.gradient_accumulation,
                max_seq_len=qf.max_seq_len,
                lora=qf.lora,
                checkpoint_steps=qf.checkpoint_steps,
                method=qf.method,
                processes=self.spec.resources.stages.train.gpus or 1,
            )
        return self._evaluate(
            prepared, adapter=join_uri(self.out(f"{prefix}-train"), TRAIN_ADAPTER), before=self._baseline_report()
        )

    def _expansion(self, step: Step, prepared: str, shards: int):
        ex = self.spec.expansion
        if step.stage == StageName.generate:
            return GenerateParams(
                problems_uri=join_uri(prepared, PREPARE_SCAN),
                samples=ex.samples,
                temperature=ex.temperature,
                max_new_tokens=ex.max_new_tokens,
                adapter_uri=self.passing_adapter(),
                shards=shards,
                tensor_parallel_size=self.spec.resources.stages.generate.gpus or 1,
            )
        if step.stage == StageName.distill:
            return DistillParams(
                problems_uri=join_uri(prepared, PREPARE_SCAN),
                generations_uri=self.out("1b2-generate"),
                mode="failures",
                min_agreement=ex.min_agreement,
                failure=ex.failure,
                max_examples=ex.max_examples,
                max_per_problem=ex.max_per_problem,
                use_reference_solutions=ex.use_reference_solutions,
            )
        if step.stage == StageName.train:
            return TrainParams(
                data_uri=join_uri(self.out("1b2-distill"), DISTILL_TRAIN),
                epochs=ex.epochs,
                learning_rate=ex.learning_rate,
                batch_size=ex.batch_size,
                gradient_accumulation=ex.gradient_accumulation,
                max_seq_len=ex.max_seq_len,
                lora=ex.lora,
                checkpoint_steps=ex.checkpoint_steps,
                method=ex.method,
                processes=self.spec.resources.stages.train.gpus or 1,
                init_adapter_uri=self.passing_adapter(),
            )
        quick_fix_eval = self._passing_eval_report()
        return self._evaluate(
            prepared, adapter=join_uri(self.out("1b2-train"), TRAIN_ADAPTER), before=quick_fix_eval
        )

    def _passing_eval_report(self) -> str | None:
        passed = [e for e in self.status.evaluations if e.phase == TrainingPhase.quick_fix and e.gate_passed]
        return passed[-1].report if passed else self._baseline_report()

    def workload(self, step: Step, config: StageConfig) -> cost.Workload:
        counts = self.prepared_counts()
        params = config.params
        if isinstance(params, GenerateParams):
            problems = counts.get("scan" if step.phase == TrainingPhase.expansion else "selection")
            if problems is None:
                problems = sum(s.count for s in self.spec.quick_fix.selection)
            return cost.Workload(problems=problems, samples=params.samples, max_new_tokens=params.max_new_tokens)
        if isinstance(params, EvaluateParams):
            return cost.Workload(
                problems=counts.get("eval", 0), samples=params.samples, max_new_tokens=params.max_new_tokens
            )
        if isinstance(params, TrainParams):
            distill_key = step.key.replace("-train", "-distill")
            distilled = self.status.last_success(distill_key)
            examples = int(distilled.result.get("metrics", {}).get("examples", 0)) if distilled else 0
            return cost.Workload(examples=examples, epochs=params.epochs)
        return cost.Workload()

    def prepared_counts(self) -> dict[str, int]:
        record = self.status.last_success(PREPARE_KEY)
        metrics = record.result.get("metrics", {}) if record else {}
        return {k: int(v) for k, v in metrics.items() if k in ("selection", "scan", "eval") and v is not None}


def set_condition(
    status: CampaignStatus, type_: str, value: bool, reason: str, message: str, now: datetime,
    generation: int | None = None,
) -> None:
    """Upsert a condition; lastTransitionTime moves only when the status value flips."""
    text = "True" if value else "False"
    old = status.condition(type_)
    when = old.last_transition_time if old and old.status == text else rfc3339(now)
    new = Condition(type=type_, status=text, reason=reason, message=message, last_transition_time=when,
                    observed_generation=generation)
    status.conditions = [c for c in status.conditions if c.type != type_] + [new]


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
        check("consistency", ev.consistency, th.consistency)
    if th.mean_agreement is not None:
        check("mean agreement", ev.mean_agreement, th.mean_agreement)
    for domain, required in sorted(th.accuracy.items()):
        check(f"{domain} accuracy", ev.accuracy.get(domain), required)
    return ok, ", ".join(parts) or "no thresholds set"


def _evaluation(step: Step, result: StageResult) -> EvaluationRecord:
    metrics = result.metrics
    accuracy = {str(k): float(v) for k, v in (metrics.get("accuracy") or {}).items() if v is not None}
    return EvaluationRecord(
        phase="baseline" if step.key == BASELINE_KEY else step.phase,
        iteration=0 if step.key == BASELINE_KEY else step.iteration,
        consistency=metrics.get("consistency"),
        mean_agreement=metrics.get("meanAgreement"),
        accuracy=accuracy,
        problems=int(metrics.get("problems", 0) or 0),
        report=result.outputs.get("report"),
    )


def _step_of(spec: CampaignSpec, record: StageRecord) -> Step:
    return next(s for s in plan(spec, record.phase, record.iteration) if s.key == record.key)


def initial_status(now: datetime, generation: int | None = None) -> CampaignStatus:
    status = CampaignStatus(phase=CampaignPhase.running, training_phase=TrainingPhase.quick_fix, iteration=1,
                            observed_generation=generation)
    set_condition(status, "Ready", True, "SpecValid", "spec accepted", now, generation)
    return status


def invalid_spec(status: CampaignStatus | None, error: Exception, now: datetime,
                 generation: int | None = None) -> CampaignStatus:
    """Status for a spec that fails validation: no stage runs until the spec is fixed."""
    status = status.model_copy(deep=True) if status else CampaignStatus()
    status.message = str(error)
    set_condition(status, "Ready", False, "InvalidSpec", str(error), now, generation)
    return status


def decide(
    spec: CampaignSpec,
    status: CampaignStatus | None,
    result: StageResult | None = None,
    *,
    campaign: str,
    namespace: str = "default",
    now: datetime,
    generation: int | None = None,
) -> Decision:
    """Next action for a campaign, and the status that records it. Never mutates its inputs."""
    events: list[Event] = []
    if status is None or status.phase == CampaignPhase.pending:
        status = initial_status(now, generation)
        events.append(Event("Normal", "CampaignStarted", "phase 1B.1, iteration 1"))
    else:
        status = status.model_copy(deep=True)
    if status.finished:
        return Decision(status, _finish_of(status))

    current = status.current()
    if current is not None:
        if result is None or result.key != current.key:
            return Decision(status, _run(spec, status, current, campaign, namespace), tuple(events))
        outcome = _record_result(spec, status, current, result, now, events)
        if outcome is not None:
            return Decision(status, outcome, tuple(events))
    return _advance(spec, status, campaign, namespace, now, generation, events)


def _record_result(
    spec: CampaignSpec, status: CampaignStatus, current: StageRecord, result: StageResult, now: datetime,
    events: list[Event],
) -> Action | None:
    """Fold a finished stage into the status. Returns the action when the result itself decides it."""
    current.end_time = rfc3339(now)
    seconds = result.seconds
    if seconds is None and current.start_time:
        seconds = (now - parse_rfc3339(current.start_time)).total_seconds()
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
            events.append(Event("Warning", "StageRetried",
                                f"{current.key} attempt {attempts} failed ({result.message[:200]}); retrying"))
            return None
        reason = f"stage {current.key} failed after {attempts} attempt(s): {result.message[:500]}"
        events.append(Event("Warning", "StageFailed", reason))
        return _fail(status, "StageFailed", reason, now, events)
    current.outcome = StageOutcome.succeeded
    events.append(Event("Normal", "StageSucceeded", f"{current.key} finished"))
    step = _step_of(spec, current)
    if step.stage == StageName.evaluate:
        ev = _evaluation(step, result)
        if step.key != BASELINE_KEY:
            status.consistency = ev.consistency
            status.math_accuracy = ev.accuracy.get("math")
        if step.phase == TrainingPhase.quick_fix and step.key != BASELINE_KEY:
            ev.gate_passed, detail = gate(spec, ev)
            set_condition(status, "GatePassed", ev.gate_passed, "ThresholdsMet" if ev.gate_passed else
                          "ThresholdsNotMet", f"1B.1 iteration {step.iteration}: {detail}", now)
            if ev.gate_passed:
                status.adapter = result.outputs.get("adapter") or _adapter_of(status, step)
            events.append(Event("Normal" if ev.gate_passed else "Warning",
                                "GatePassed" if ev.gate_passed else "GateFailed",
                                f"iteration {step.iteration}: {detail}"))
        elif step.phase == TrainingPhase.expansion:
            status.adapter = result.outputs.get("adapter") or _adapter_of(status, step)
        status.evaluations = [*status.evaluations, ev]
    return None


def _adapter_of(status: CampaignStatus, step: Step) -> str | None:
    train = status.last_success(step.key.replace("-evaluate", "-train"))
    return train.artifacts.get("adapter") if train else None


def _advance(
    spec: CampaignSpec, status: CampaignStatus, campaign: str, namespace: str, now: datetime,
    generation: int | None, events: list[Event],
) -> Decision:
    """Nothing is running: start the next stage, move to the next iteration or phase, or finish."""
    phase, iteration = status.training_phase or TrainingPhase.quick_fix, max(status.iteration, 1)
    steps = plan(spec, phase, iteration)
    pending = [s for s in steps if status.last_success(s.key) is None]
    if not pending:
        if phase == TrainingPhase.expansion:
            ev = status.evaluations[-1]
            msg = f"1B.2 done: consistency {_fmt(ev.consistency)}, accuracy {_fmt_acc(ev.accuracy)}"
            return _succeed(status, msg, now, events)
        last = status.evaluations[-1]
        _, detail = gate(spec, last)
        if last.gate_passed:
            if not spec.expansion.enabled:
                return _succeed(status, f"1B.1 gate passed ({detail}); 1B.2 disabled", now, events)
            status.training_phase, status.iteration = TrainingPhase.expansion, 1
            events.append(Event("Normal", "Promoted", f"1B.1 -> 1B.2 ({detail})"))
        elif iteration < spec.retry.max_iterations:
            status.iteration = iteration + 1
            k = knobs(spec, iteration + 1)
            events.append(Event("Normal", "IterationStarted",
                                f"1B.1 iteration {iteration + 1}: epochs {k.epochs}, temperature {k.temperature}"))
        else:
            reason = f"1B.1 gate failed after {iteration} iteration(s): {detail}"
            return Decision(status, _fail(status, "GateFailed", reason, now, events), tuple(events))
        return _advance(spec, status, campaign, namespace, now, generation, events)

    step = pending[0]
    attempt = len(status.attempts(step.key)) + 1
    builder = _Campaign(spec, status, campaign, namespace)
    config = builder.config(step, attempt)
    resources = spec.resources.stages.for_stage(step.stage)
    gpus = resources.gpus * (resources.shards if step.stage == StageName.generate else 1)
    forecast = cost.usd(cost.forecast_gpu_hours(step.stage, gpus, builder.workload(step, config), spec.budget),
                        spec.budget)
    if spec.budget.max_usd is not None and status.cost.usd + forecast > spec.budget.max_usd:
        reason = (f"budget: {step.key} is forecast at ${forecast:.2f}; spent ${status.cost.usd:.2f} of "
                  f"${spec.budget.max_usd:.2f}")
        events.append(Event("Warning", "BudgetExceeded", reason))
        return Decision(status, _fail(status, "BudgetExceeded", reason, now, events), tuple(events))
    record = StageRecord(
        key=step.key, stage=step.stage, phase=step.phase, iteration=step.iteration, attempt=attempt,
        job_name=job_name(campaign, step.key, attempt), gpus=gpus, start_time=rfc3339(now),
        forecast_usd=forecast,
    )
    status.stages = [*status.stages, record]
    status.stage = step.key
    status.cost.forecast_usd = forecast
    status.message = f"running {step.key}"
    set_condition(status, "Progressing", True, "StageRunning", f"{step.key} (attempt {attempt})", now, generation)
    events.append(Event("Normal", "StageStarted", f"{step.key} as Job {record.job_name} "
                                                  f"(forecast ${forecast:.2f})"))
    return Decision(status, RunStage(record, config, resources), tuple(events))


def _run(spec: CampaignSpec, status: CampaignStatus, record: StageRecord, campaign: str,
         namespace: str) -> RunStage:
    step = _step_of(spec, record)
    config = _Campaign(spec, status, campaign, namespace).config(step, record.attempt)
    return RunStage(record, config, spec.resources.stages.for_stage(step.stage))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fmt_acc(accuracy: dict[str, float]) -> str:
    return ", ".join(f"{d} {v:.3f}" for d, v in sorted(accuracy.items())) or "n/a"


def _fail(status: CampaignStatus, reason: str, message: str, now: datetime, events: list[Event]) -> Finish:
    status.phase, status.stage, status.message = CampaignPhase.failed, None, message
    set_condition(status, "Progressing", False, reason, message, now)
    set_condition(status, "Failed", True, reason, message, now)
    events.append(Event("Warning", "CampaignFailed", message))
    return Finish(CampaignPhase.failed, reason, message)


def _succeed(status: CampaignStatus, message: str, now: datetime, events: list[Event]) -> Decision:
    status.phase, status.stage, status.message = CampaignPhase.succeeded, None, message
    set_condition(status, "Progressing", False, "Completed", message, now)
    set_condition(status, "Complete", True, "Completed", message, now)
    events.append(Event("Normal", "CampaignSucceeded", message))
    return Decision(status, Finish(CampaignPhase.succeeded, "Completed", message), tuple(events))


def _finish_of(status: CampaignStatus) -> Finish:
    cond = status.condition("Failed") if status.phase == CampaignPhase.failed else status.condition("Complete")
    reason = cond.reason if cond else status.phase.value
    return Finish(status.phase, reason, status.message)
