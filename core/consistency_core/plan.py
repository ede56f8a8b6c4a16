"""Which stages a campaign runs, in which order, under which keys, and the spec section each phase reads.

Glossary: a *phase* here is a TrainingPhase (1B.1 quick fix, keys `1b1-i<n>-<stage>`; 1B.2 expansion, keys
`1b2-<stage>`); `prepare` runs once per campaign and the optional baseline evaluation of the base model
runs once before 1B.1 (key `baseline-evaluate`, phase `baseline` in its StageConfig and EvaluationRecord).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from consistency_core.spec import CampaignSpec, ExpansionPhase, QuickFixPhase, StageName
from consistency_core.status import BASELINE, TrainingPhase

PREPARE_KEY = "prepare"
BASELINE_KEY = f"{BASELINE}-{StageName.evaluate.value}"
REPORT_KEY = StageName.report.value  # runs once, after the last evaluation of a campaign that succeeds

StagePhase = TrainingPhase | Literal["baseline"]
_ITERATION_STAGES = (StageName.generate, StageName.distill, StageName.train, StageName.evaluate)


def stage_key(phase: StagePhase, iteration: int, stage: StageName) -> str:
    """Stable id of a stage within a campaign: its output directory and the suffix of its Job name."""
    if stage == StageName.prepare:
        return PREPARE_KEY  # one prepare serves every phase and iteration
    if phase == BASELINE:
        return f"{BASELINE}-{stage.value}"
    if phase == TrainingPhase.quick_fix:
        return f"1b1-i{iteration}-{stage.value}"  # 1B.1 repeats, so its keys carry the iteration
    return f"1b2-{stage.value}"


@dataclass(frozen=True)
class Step:
    key: str
    stage: StageName
    phase: TrainingPhase
    iteration: int

    @property
    def config_phase(self) -> StagePhase:
        """The phase a StageConfig and an EvaluationRecord name: the baseline evaluation has its own."""
        return BASELINE if self.key == BASELINE_KEY else self.phase


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


def phase_settings(spec: CampaignSpec, phase: TrainingPhase, iteration: int) -> QuickFixPhase | ExpansionPhase:
    """The spec section a phase's stages read, with 1B.1's per-iteration epochs and temperature applied."""
    if phase == TrainingPhase.expansion:
        return spec.expansion
    k = knobs(spec, iteration)
    return spec.quick_fix.model_copy(update={"epochs": k.epochs, "temperature": k.temperature})


def plan(spec: CampaignSpec, phase: TrainingPhase, iteration: int) -> list[Step]:
    """Stages of one iteration, in order."""
    steps = []
    if phase == TrainingPhase.quick_fix and iteration == 1:
        steps.append(Step(PREPARE_KEY, StageName.prepare, phase, 1))
        if spec.evaluation.baseline:
            steps.append(Step(BASELINE_KEY, StageName.evaluate, phase, 1))
    for stage in _ITERATION_STAGES:
        steps.append(Step(stage_key(phase, iteration, stage), stage, phase, iteration))
    return steps


def report_step(phase: TrainingPhase, iteration: int) -> Step:
    """The final report stage, recorded under the phase and iteration that produced the shipped adapter."""
    return Step(REPORT_KEY, StageName.report, phase, iteration)


def max_stages(spec: CampaignSpec) -> int:
    """Upper bound on Jobs a campaign can start (used by tests and as a safety net)."""
    per_try = spec.retry.stage_retries + 1
    quick = sum(len(plan(spec, TrainingPhase.quick_fix, i)) for i in range(1, spec.retry.max_iterations + 1))
    return (quick + len(plan(spec, TrainingPhase.expansion, 1)) + 1) * per_try
