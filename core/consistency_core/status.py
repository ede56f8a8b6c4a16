"""Typed model of `ConsistencyTraining.status`: everything the state machine needs lives here, so an
operator restart (or a local re-run) recomputes the same next action from the stored status alone."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field

from consistency_core.names import rfc3339
from consistency_core.spec import StageName
from consistency_core.wire_model import WireModel

# The phase a StageConfig and an EvaluationRecord name for the evaluation of the base model before 1B.1
# (its stage key is `baseline-evaluate`); it is not a TrainingPhase: nothing is trained in it.
BASELINE = "baseline"


class CampaignPhase(StrEnum):
    """Lifecycle of the whole campaign (printer column `Status`)."""

    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"


class TrainingPhase(StrEnum):
    """What `status.trainingPhase` (and a stage record's phase) means: 1B.1 = quick fix (iterated, gated,
    stage keys `1b1-i<n>-<stage>`), 1B.2 = expansion (runs once after a passed gate, keys `1b2-<stage>`)."""

    quick_fix = "1B.1"
    expansion = "1B.2"


class ConditionType(StrEnum):
    """`status.conditions[].type` values."""

    ready = "Ready"  # the spec is valid
    progressing = "Progressing"  # a stage is running (False once the campaign finished)
    gate_passed = "GatePassed"  # the latest 1B.1 evaluation met the thresholds
    complete = "Complete"  # the campaign succeeded
    failed = "Failed"  # the campaign failed
    spec_change_rejected = "SpecChangeRejected"  # a pinned field changed while the campaign runs


class Reason(StrEnum):
    """CamelCase reasons of conditions, Kubernetes Events and the final verdict."""

    spec_valid = "SpecValid"
    invalid_spec = "InvalidSpec"
    pinned_field_changed = "PinnedFieldChanged"
    spec_consistent = "SpecConsistent"
    campaign_started = "CampaignStarted"
    stage_started = "StageStarted"
    stage_running = "StageRunning"
    stage_succeeded = "StageSucceeded"
    stage_retried = "StageRetried"
    stage_failed = "StageFailed"
    thresholds_met = "ThresholdsMet"
    thresholds_not_met = "ThresholdsNotMet"
    gate_passed = "GatePassed"
    gate_failed = "GateFailed"
    promoted = "Promoted"
    iteration_started = "IterationStarted"
    budget_exceeded = "BudgetExceeded"
    completed = "Completed"
    campaign_succeeded = "CampaignSucceeded"
    campaign_failed = "CampaignFailed"
    spec_change_rejected = "SpecChangeRejected"
    queued = "Queued"  # the stage's Job waits for admission (suspended, e.g. by Kueue)
    admitted = "Admitted"  # the queue admitted it: the stage's time and cost start now
    api_refused = "ApiRefused"  # the Kubernetes API refused a request for good (400/403/404/409/422)
    invalid_name = "InvalidName"  # metadata.name too long for the Job names and labels derived from it
    job_deleted = "JobDeleted"  # a stage's Job was deleted outside the operator


class EventType(StrEnum):
    """Kubernetes Event types."""

    normal = "Normal"
    warning = "Warning"


class StageOutcome(StrEnum):
    queued = "Queued"  # its Job exists but is suspended / not admitted yet (e.g. by Kueue)
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    deleted = "Deleted"  # its Job was deleted outside the operator; counts as an attempt (stageRetries)


class Condition(WireModel):
    """Standard metav1.Condition shape."""

    type: str = Field(description="Condition type, e.g. Ready, GatePassed, Failed.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")
    observed_generation: int | None = Field(None, description="metadata.generation this was computed from.")


class StageRecord(WireModel):
    """One Job (one attempt of one stage of one iteration)."""

    key: str = Field(description="Stable id of the stage within the campaign, e.g. 1b1-i2-train.")
    stage: StageName
    phase: TrainingPhase
    iteration: int = Field(ge=1)
    attempt: int = Field(1, ge=1)
    job_name: str = Field(description="Name of the batch/v1 Job that runs it.")
    gpus: int = Field(0, ge=0, description="GPUs per pod times pods (for cost).")
    start_time: str | None = Field(None, description="When it started running (admission, for a queued Job).")
    end_time: str | None = None
    outcome: StageOutcome = StageOutcome.running
    queued_time: str | None = Field(None, description="When its Job was last seen waiting for admission.")
    queued_seconds: float = Field(0.0, ge=0, description="Time spent queued; not counted as stage time or cost.")
    message: str = ""
    forecast_usd: float = Field(0.0, ge=0, description="Upper-bound forecast (every answer uses its whole token "
                                "budget) that the budget stop checked before starting it.")
    expected_usd: float = Field(0.0, ge=0, description="Expected cost, from what the campaign's earlier stages "
                                "measured (the spec's throughput figures until then).")
    prior_seconds: float = Field(0.0, ge=0, description="Forecast wall time from the spec's throughput figures "
                                 "alone (the forecast before learning).")
    expected_seconds: float = Field(0.0, ge=0, description="Forecast wall time from the measured figures.")
    seconds: float = Field(0.0, ge=0, description="Measured wall time of the stage (0 until it finished).")
    gpu_hours: float = Field(0.0, ge=0)
    result: dict[str, Any] = Field(default_factory=dict, description="Compact result (termination message).")
    artifacts: dict[str, str] = Field(default_factory=dict, description="Output URIs by name.")


class EvaluationRecord(WireModel):
    phase: TrainingPhase | Literal["baseline"] = Field(description="1B.1, 1B.2 or baseline (the base model).")
    iteration: int = Field(ge=0)
    consistency: float | None = None
    mean_agreement: float | None = None
    accuracy: dict[str, float] = Field(default_factory=dict, description="Greedy accuracy per domain.")
    consistency_by_domain: dict[str, float] = Field(
        default_factory=dict, description="Consistency per domain (math: same number, reasoning: same letter, "
        "code: all pass, or the same returned values).")
    pass_at_1: dict[str, float] = Field(
        default_factory=dict, description="Unbiased pass@1 per domain from the k samples (mean share correct).")
    pairwise_agreement: dict[str, float] = Field(
        default_factory=dict, description="Mean pairwise agreement per domain: the chance that two of a "
        "problem's k samples give the same answer.")
    cut_off_unanswered: int | None = Field(
        None, ge=0, description="Answers (greedy and samples) cut off at maxNewTokens before a final-answer "
        "marker: graded as no answer.")
    problems: int = 0
    gate_passed: bool | None = None
    report: str | None = Field(None, description="URI of the full evaluation report.")
    paired: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Paired change against the reference evaluation (baseline, or the passing 1B.1 one) per '
        'figure ("math accuracy", "code consistency", "success", ...): difference, low/high (95% interval), '
        'pValue (exact McNemar), better/worse (discordant problems), n; graded figures ("math pairwise '
        'agreement") carry before/after means, a paired bootstrap interval and the Wilcoxon signed-rank '
        'pValue; pHolm: the p-value Holm-adjusted over every paired test but the primary endpoint.')
    primary: dict[str, Any] | None = Field(
        None, description="The primary endpoint (spec.evaluation.primaryEndpoint), baseline -> this model: "
        "figure, reference, difference, low/high (95% interval), pValue, n.")


class Cost(WireModel):
    gpu_hours: float = 0.0
    usd: float = 0.0
    forecast_usd: float = Field(0.0, description="Forecast of the stage now running.")


class ForecastStage(WireModel):
    """One stage of a campaign's plan with its forecast (one attempt)."""

    key: str = Field(description="Stage key, e.g. 1b1-i2-train.")
    stage: StageName
    iteration: int = Field(ge=1)
    first_pass: bool = Field(description="Runs when 1B.1 passes its first gate and no stage fails; the others "
                             "(later 1B.1 iterations) run only in the worst case.")
    attempts: int = Field(1, ge=1, description="Attempts in the worst case (stage retries + 1).")
    problems: int | None = Field(None, description="Problems answered (generate, evaluate); None: unknown size.")
    examples: int | None = Field(None, description="Training examples, at most (train).")
    samples: int | None = Field(None, description="k sampled answers per problem (one greedy on top).")
    max_new_tokens: int | None = Field(None, description="Token budget per answer.")
    epochs: int | None = None
    gpus: int = Field(0, ge=0)
    tokens: int = Field(0, ge=0, description="Tokens the forecast assumes (generated, or trained).")
    seconds: float = Field(0.0, ge=0, description="Forecast wall time of one attempt.")
    gpu_hours: float = Field(0.0, ge=0)
    usd: float = Field(0.0, ge=0)


class CampaignForecast(WireModel):
    """What a campaign will cost, before it runs (`consistency plan`, and status.forecast when accepted)."""

    stages: list[ForecastStage] = Field(default_factory=list)
    first_pass_gpu_hours: float = 0.0
    first_pass_usd: float = Field(0.0, description="1B.1 passes its first gate, no stage fails, 1B.2 runs.")
    worst_case_gpu_hours: float = 0.0
    worst_case_usd: float = Field(0.0, description="Every 1B.1 iteration and every stage retry, then 1B.2.")
    max_usd: float | None = Field(None, description="spec.budget.maxUsd.")
    verdict: Literal["NoBudget", "WithinBudget", "MayExceedBudget", "ExceedsBudget", "Incomplete"] = Field(
        "NoBudget", description="WithinBudget: the worst case fits maxUsd; MayExceedBudget: the first pass fits, "
        "the worst case does not; ExceedsBudget: not even the first pass fits; Incomplete: a dataset's size "
        "is unknown (set its limit).")
    assumptions: dict[str, float] = Field(default_factory=dict, description="Throughput figures used.")
    unknown: list[str] = Field(default_factory=list, description="What could not be sized, and how to fix it.")


class Outputs(WireModel):
    """What a succeeded campaign ships, written by its final report stage."""

    adapter: str | None = Field(None, description="The best adapter (1B.2, or 1B.1 when 1B.2 is disabled) with "
                                "its model card (README.md).")
    report: str | None = Field(None, description="The Markdown report (PNG figures next to it).")
    model_card: str | None = Field(None, description="The model card.")
    merged: str | None = Field(None, description="Merged 16-bit safetensors (spec.export.merged).")


class CampaignStatus(WireModel):
    """`status` of a ConsistencyTraining."""

    # Extra keys (e.g. kopf's own bookkeeping) are tolerated, never interpreted.
    model_config = ConfigDict(**{**WireModel.model_config, "extra": "ignore"})

    phase: CampaignPhase = Field(CampaignPhase.pending, description="Pending, Running, Succeeded or Failed.")
    training_phase: TrainingPhase | None = Field(None, description="1B.1 or 1B.2.")
    iteration: int = Field(0, ge=0, description="1B.1 iteration (1-based); 1B.2 runs once.")
    stage: str | None = Field(None, description="Stage now running.")
    stage_status: StageOutcome | None = Field(
        None, description="Queued while the current stage's Job waits for admission (suspended), then Running.")
    message: str = ""
    consistency: float | None = Field(None, description="Latest evaluated consistency rate of the domains the "
                                      "gate checks (thresholds.consistencyDomains; the lowest of them).")
    math_accuracy: float | None = Field(None, description="Latest evaluated math accuracy.")
    primary_change: float | None = Field(
        None, description="Paired change of the primary endpoint (spec.evaluation.primaryEndpoint), baseline -> "
        "the latest evaluated model.")
    conditions: list[Condition] = Field(default_factory=list)
    stages: list[StageRecord] = Field(default_factory=list)
    evaluations: list[EvaluationRecord] = Field(default_factory=list)
    cost: Cost = Field(default_factory=Cost)
    forecast: CampaignForecast | None = Field(None, description="The plan's cost forecast, written when the "
                                              "campaign is accepted (as `consistency plan` prints it).")
    adapter: str | None = Field(None, description="URI of the best adapter so far.")
    outputs: Outputs | None = Field(None, description="Shipped outputs, once the final report stage finished.")
    observed_generation: int | None = None

    def current(self) -> StageRecord | None:
        running = [s for s in self.stages if s.outcome in (StageOutcome.running, StageOutcome.queued)]
        return running[-1] if running else None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(self, type_: ConditionType, value: bool, reason: Reason, message: str, now: datetime,
                      generation: int | None = None) -> None:
        """Upsert a condition; lastTransitionTime moves only when the status value flips."""
        text = "True" if value else "False"
        old = self.condition(type_)
        when = old.last_transition_time if old and old.status == text else rfc3339(now)
        new = Condition(type=type_.value, status=text, reason=reason.value, message=message,
                        last_transition_time=when, observed_generation=generation)
        self.conditions = [c for c in self.conditions if c.type != type_] + [new]

    def last_success(self, key: str) -> StageRecord | None:
        for record in reversed(self.stages):
            if record.key == key and record.outcome == StageOutcome.succeeded:
                return record
        return None

    def attempts(self, key: str) -> list[StageRecord]:
        return [s for s in self.stages if s.key == key]

    @property
    def finished(self) -> bool:
        return self.phase in (CampaignPhase.succeeded, CampaignPhase.failed)
