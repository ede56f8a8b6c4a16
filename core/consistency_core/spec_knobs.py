"""The spec's stage-facing sections: what 1B.1 selects, how the stages sample, filter and train
(TrainingKnobs, SamplingKnobs, AgreementFilter, FailureExamples, each carried into a stage's params as is),
the phase sections that inherit them, evaluation with its declared primary endpoint, the promotion gate and
the retry policy. Defaults live only here. Import it through consistency_core.spec, the spec's public entry."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from consistency_core import bounds
from consistency_core.bounds import DnsLabel, ShortText
from consistency_core.spec_types import (
    DOMAINS,
    MAX_EPOCHS,
    MIN_SAMPLING_TEMPERATURE,
    Domain,
    Probability,
    Seeding,
    Temperature,
)
from consistency_core.wire_model import WireModel


def _too_cold(value: object, where: str = "") -> None:
    """Refuse a sampling temperature below the floor with the reason, before the bare range check."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value < MIN_SAMPLING_TEMPERATURE:
        raise ValueError(
            f"{where}a sampling temperature must be >= {MIN_SAMPLING_TEMPERATURE}, got {value}: near 0 every "
            "sample is a copy of the greedy answer, so agreement is always 1, the agreement filter keeps "
            "everything and a problem yields at most one distinct training target")


def _sampling_temperature(value: object) -> object:
    _too_cold(value)
    return value


class Strata(WireModel):
    """Relative weights of difficulty strata in a sample; omitted = proportional to the pool."""

    easy: float = Field(1.0, ge=0.0, le=1e6, description="Weight of easy problems (GSM8K: 0-2 solution steps).")
    medium: float = Field(1.0, ge=0.0, le=1e6, description="Weight of medium problems (3-5 steps).")
    hard: float = Field(1.0, ge=0.0, le=1e6, description="Weight of hard problems (6+ steps).")


class Selection(WireModel):
    """How many problems 1B.1 draws from one train dataset."""

    dataset: DnsLabel = Field(description="Name of a dataset with role train.")
    count: int = Field(ge=1, le=bounds.MAX_PROBLEMS, description="Number of problems to draw (seeded, stratified).")
    strata: Strata | None = Field(None, description="Stratum weights; omitted = proportional to the pool.")


class LoraConfig(WireModel):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=16384, description="LoRA alpha (scaling = alpha / r).")
    dropout: Probability = Field(0.05, description="LoRA dropout.")
    target_modules: list[ShortText] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1, max_length=64,
        description='Modules to adapt; ["all-linear"] adapts every linear layer except the output head.',
    )


class PreferenceKnobs(WireModel):
    """The consistency-preference objective: DPO on (modal-answer sample, least-voted sample) pairs, each
    pair weighted by its vote margin, plus an NLL term on the chosen sample (as IRPO / TRL's rpo_alpha)."""

    beta: float = Field(0.1, gt=0.0, le=100.0, description="DPO temperature: how far the policy may move from "
                        "the reference (the base with the adapter disabled).")
    nll_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the NLL term on the chosen sample "
                              "(per-token mean); 0 = plain DPO.")


class TrainingKnobs(WireModel):
    """How the train stage fits the adapter (the train stage's params carry this model as is)."""

    epochs: int = Field(2, ge=1, le=MAX_EPOCHS, description="Training epochs (1B.1: of iteration 1; later iterations "
                        "add retry.epochsStep).")
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, le=4096, description="Per-device batch size.")
    gradient_accumulation: int = Field(2, ge=1, le=4096, description="Gradient accumulation steps.")
    max_seq_len: int = Field(1024, ge=32, le=1_048_576, description="Truncate training examples to this many tokens.")
    checkpoint_steps: int = Field(
        50, ge=1, le=10_000_000,
        description="Checkpoint to the store every N optimizer steps (and each epoch), so a preempted "
        "pod resumes there.")
    warmup_ratio: Probability = Field(
        0.03, description="Share of the optimizer steps over which the learning rate rises linearly to its peak "
        "(then it decays linearly to 0).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter shape.")
    method: Literal["qlora", "lora", "full"] = Field(
        "qlora", description="qlora: LoRA on a 4-bit NF4 base wherever bitsandbytes supports the device (CUDA, "
        "recent CPU builds), else plain LoRA; lora: LoRA on the full-precision base; full: full fine-tuning "
        "(every weight; the output is a whole model, for small models such as a from-scratch demo one).")
    objective: Literal["sft", "preference"] = Field(
        "sft", description="sft: next-token loss on distill's targets; preference: DPO + NLL on distill's pairs "
        "(a most-voted vs a least-voted sample per problem, weighted by the vote margin), the reference policy "
        "being the base with the adapter disabled (needs method qlora or lora).")
    preference: PreferenceKnobs = Field(default_factory=PreferenceKnobs,
                                        description="Settings of objective preference.")

    @model_validator(mode="after")
    def _preference_needs_adapter(self) -> TrainingKnobs:
        if self.objective == "preference" and self.method == "full":
            raise ValueError("objective preference needs method qlora or lora: its reference policy is the base "
                             "with the adapter disabled")
        return self


class SamplingKnobs(WireModel):
    """How generate and evaluate sample answers (their params carry this model as is)."""

    samples: int = Field(5, ge=1, le=64, description="Sampled answers per problem (k), besides one greedy.")
    temperature: Temperature = Field(0.7, description="Sampling temperature (1B.1: of iteration 1; later "
                                     "iterations follow retry.temperatureSchedule).")
    max_new_tokens: int = Field(512, ge=8, le=bounds.MAX_NEW_TOKENS, description="Generation budget per answer.")
    seeding: Seeding = Field(
        Seeding.per_sequence,
        description="vLLM only. perSequence: every problem's samples come from its own seed (the same random "
        "draws in any shard, chunk or resumed run). engine: one engine seed for the whole batch; faster (no "
        "per-sequence generator loop at each decode step) but a problem's samples then depend on its batch. "
        "Meant for the 1B.2 scan.")

    _temperature = field_validator("temperature", mode="before")(_sampling_temperature)


class AgreementFilter(WireModel):
    """Which sampled answers distill turns into training examples (its params carry this model as is)."""

    min_agreement: Probability = Field(
        0.6, description="Keep a problem only if this share of samples agrees on the modal answer."
    )
    max_per_problem: int = Field(2, ge=1, le=64, description="At most this many training examples per problem.")
    targets: Literal["gold", "majority"] = Field(
        "gold", description="gold: targets are samples whose answer matches the gold answer (1B.2: else the "
        "reference solution); majority: label-free, the modal answer's samples where agreement reaches "
        "minAgreement (1B.2: failures are low-agreement problems only), so no gold answer or reference "
        "solution reaches training; gold is then used only by evaluate.")


class FailureCriteria(WireModel):
    max_agreement: Probability = Field(
        0.30, description="A problem whose modal answer gets less than this share of samples is a failure."
    )
    include_wrong: bool = Field(True, description="A wrong greedy answer is a failure.")


class FailureExamples(WireModel):
    """How 1B.2's distill finds failures and builds examples from them (its params carry this model as is)."""

    failure: FailureCriteria = Field(default_factory=FailureCriteria, description="What counts as a failure.")
    max_examples: int = Field(2500, ge=1, le=bounds.MAX_PROBLEMS,
                              description="Cap on training examples built from failures.")
    use_reference_solutions: bool = Field(
        True, description="For a failure with no correct sample, train on the dataset's reference solution."
    )
    replay_fraction: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="Share of the 1B.2 training set made of 1B.1 training examples (from the passing iteration's "
        "distill), mixed back in to limit forgetting; 0 turns replay off.",
    )


class QuickFixPhase(TrainingKnobs, SamplingKnobs, AgreementFilter):
    """Phase 1B.1: sample, keep what majority vote agrees on, train, evaluate, gate."""

    selection: list[Selection] = Field(
        default_factory=lambda: [
            Selection(dataset="gsm8k-train", count=500),
            Selection(dataset="mbpp-train", count=164),
        ],
        min_length=1, max_length=bounds.MAX_DATASETS,
        description="Training problems per dataset (default: 500 math stratified by difficulty, 164 code).",
    )


class ExpansionPhase(TrainingKnobs, SamplingKnobs, AgreementFilter, FailureExamples):
    """Phase 1B.2: scan train/validation sets for failures, build examples from them, continue training."""

    enabled: bool = Field(True, description="Run 1B.2 after a passed 1B.1 gate (else Succeeded at the gate).")
    scan_datasets: list[DnsLabel] = Field(
        default_factory=lambda: ["gsm8k-train", "mbpp-train", "mmlu-validation"],
        min_length=1, max_length=bounds.MAX_DATASETS,
        description="Datasets (role scan) to run the 1B.1 model over.",
    )
    # 1B.2 differs from 1B.1 here: failures rarely have a majority, and it continues an adapter already trained.
    min_agreement: Probability = Field(
        0.0, description="Without a gold answer, keep targets only if this share of samples agrees."
    )
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Peak learning rate.")


class EndpointMeasure(StrEnum):
    """Per-problem figures a paired before/after test can be declared primary on (see README Definitions)."""

    pairwise_agreement = "pairwiseAgreement"
    modal_share = "modalShare"
    right_agreement = "rightAgreement"
    wrong_agreement = "wrongAgreement"
    self_consistency_gap = "selfConsistencyGap"
    majority_accuracy = "majorityAccuracy"
    accuracy = "accuracy"
    consistency = "consistency"


# How a measure is named in paired figures ("math pairwise agreement", "code maj@k").
ENDPOINT_LABELS: dict[EndpointMeasure, str] = {
    EndpointMeasure.pairwise_agreement: "pairwise agreement",
    EndpointMeasure.modal_share: "modal share",
    EndpointMeasure.right_agreement: "right agreement",
    EndpointMeasure.wrong_agreement: "wrong agreement",
    EndpointMeasure.self_consistency_gap: "self-consistency gap",
    EndpointMeasure.majority_accuracy: "maj@k",
    EndpointMeasure.accuracy: "accuracy",
    EndpointMeasure.consistency: "consistency",
}


class PrimaryEndpoint(WireModel):
    """The one paired test a campaign declares in advance: baseline -> final model on the held-out split.
    The report and `consistency status` headline it; every other paired test is shown Holm-adjusted."""

    measure: EndpointMeasure = Field(
        EndpointMeasure.pairwise_agreement,
        description="pairwiseAgreement, modalShare, rightAgreement, wrongAgreement, selfConsistencyGap (graded: "
        "paired bootstrap CI, Wilcoxon signed-rank p), or majorityAccuracy, accuracy, consistency (yes/no per "
        "problem: Newcombe CI, exact McNemar p).")
    domain: Domain = Field("math", description="Domain the measure is taken on.")

    @property
    def figure(self) -> str:
        return f"{self.domain} {ENDPOINT_LABELS[self.measure]}"


class EvaluationConfig(SamplingKnobs):
    # The graded measures need resolution: with k = 8, pairwise agreement moves in steps of 1/56.
    samples: int = Field(8, ge=1, le=64, description="Sampled answers per problem (k) of every evaluation, "
                         "besides one greedy; its own setting, independent of the training phases' k.")
    primary_endpoint: PrimaryEndpoint = Field(default_factory=PrimaryEndpoint,
                                              description="The campaign's one declared paired test.")
    datasets: list[DnsLabel] = Field(
        default_factory=lambda: ["gsm8k-test", "humaneval"],
        min_length=1, max_length=bounds.MAX_DATASETS,
        description="Datasets (role eval) to evaluate on. Never trained on.",
    )
    baseline: bool = Field(True, description="Evaluate the base model first, for before/after comparisons.")


class Thresholds(WireModel):
    """Promotion gate: every set threshold must be met."""

    consistency: Probability | None = Field(
        0.60, description="Minimum consistency rate (share of problems whose k samples all agree), met by "
        "each domain in consistencyDomains."
    )
    consistency_domains: list[Domain] = Field(
        default_factory=lambda: ["math"], min_length=1, max_length=len(DOMAINS),
        description="Domains the consistency threshold applies to. Consistency means: math, all k canonical "
        "answers equal; reasoning, all k letters equal; code, all k programs pass the tests, or return the "
        "same values and raise the same exception types on every test call.",
    )
    mean_agreement: Probability | None = Field(None, description="Minimum mean agreement.")
    accuracy: dict[str, Probability] = Field(
        default_factory=lambda: {"math": 0.55},
        description="Minimum greedy accuracy per domain (math, code, reasoning); domains left out are not gated.",
    )

    @field_validator("accuracy")
    @classmethod
    def _known_domains(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DOMAINS))
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; allowed: {list(DOMAINS)}")
        return value


class RetryPolicy(WireModel):
    max_iterations: int = Field(3, ge=1, le=20, description="1B.1 attempts before the campaign fails.")
    epochs_step: int = Field(1, ge=0, le=MAX_EPOCHS, description="Epochs added on each new 1B.1 iteration.")
    temperature_schedule: list[Temperature] = Field(
        default_factory=lambda: [0.2, 0.1], max_length=20,
        description="Sampling temperature of 1B.1 iterations 2, 3, ... (the last value repeats); each >= 0.05.",
    )
    stage_retries: int = Field(2, ge=0, le=10, description="New Jobs for a failed stage before giving up.")

    @field_validator("temperature_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        if isinstance(value, list):
            for i, t in enumerate(value):
                _too_cold(t, f"spec.retry.temperatureSchedule[{i}]: ")
        return value
