"""The contract between control plane and stage programs: what a stage is told (StageConfig, passed as
JSON) and what it hands back (StageResult, <= 4 KiB, via the container termination message).

Wire models only: the stage programs themselves are consistency_worker.stages, and the one builder of a
StageConfig from a spec is stage_builder.StageConfigBuilder."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from consistency_core.spec import (
    AgreementFilter,
    ArtifactStore,
    Backend,
    CampaignSpec,
    DatasetSpec,
    FailureCriteria,
    FailureExamples,
    ModelRef,
    PrimaryEndpoint,
    SamplingKnobs,
    Selection,
    StageName,
    TrainingKnobs,
)
from consistency_core.wire_model import WireModel

# Exit codes of `consistency-worker`: the control plane retries only EXIT_RETRYABLE (and crashes).
EXIT_OK = 0
EXIT_PERMANENT = 2  # bad config or data: retrying cannot help
EXIT_RETRYABLE = 75  # EX_TEMPFAIL: store unreachable, OOM, preemption
TERMINATION_MESSAGE_LIMIT = 4096

# File names inside a stage's output directory (outputUri).
PREPARE_SELECTION = "selection.jsonl"
PREPARE_SCAN = "scan.jsonl"
PREPARE_EVAL = "eval.jsonl"
DISTILL_TRAIN = "train.jsonl"
DISTILL_PAIRS = "pairs.jsonl"  # preference pairs (objective preference)
TRAIN_ADAPTER = "adapter"
EVALUATE_REPORT = "report.json"
REPORT_MARKDOWN = "report.md"  # report stage: the Markdown report (PNG figures next to it)
REPORT_STATUS = "status.json"  # report stage: the status snapshot it rendered (for `consistency report --store`)
REPORT_SPEC = "spec.json"
REPORT_ADAPTER = "adapter"  # report stage: the best adapter with its model card (README.md)
MODEL_CARD = "README.md"
REPORT_MERGED = "merged"  # report stage: merged 16-bit safetensors (spec.export.merged)
MANIFEST = "manifest.json"
RESULT = "result.json"


# Stage params carry the spec's own sections (SamplingKnobs, AgreementFilter, FailureExamples, TrainingKnobs)
# rather than copies of their fields: a knob is defined, defaulted and described once, in the spec, and a
# new spec field reaches its stage without touching this file. Only what the state machine derives
# (URIs, the adapter to continue from, shard counts) is declared here.


class DistillMode(StrEnum):
    consistent = "consistent"  # 1B.1: keep what majority vote agrees on
    failures = "failures"  # 1B.2: build examples from the problems the model fails


class PrepareParams(WireModel):
    kind: Literal["prepare"] = "prepare"
    datasets: list[DatasetSpec] = Field(description="All datasets the campaign names.")
    selection: list[Selection] = Field(description="1B.1 training selection.")
    scan_datasets: list[str] = Field(description="1B.2 scan datasets (empty when 1B.2 is disabled).")
    eval_datasets: list[str] = Field(description="Evaluation datasets.")


class GenerateParams(WireModel):
    kind: Literal["generate"] = "generate"
    problems_uri: str = Field(description="JSONL of problems to answer.")
    sampling: SamplingKnobs = Field(description="The phase's sampling settings (1B.1 adjusted per iteration).")
    adapter_uri: str | None = Field(None, description="LoRA adapter to apply, if any.")
    shards: int = Field(ge=1, description="Total shards; each pod takes its slice.")
    tensor_parallel_size: int = Field(ge=1, description="GPUs one engine spans.")


class DistillParams(WireModel):
    kind: Literal["distill"] = "distill"
    problems_uri: str
    generations_uri: str = Field(description="Output directory of the generate stage (all shards).")
    mode: DistillMode = Field(
        description="consistent: 1B.1 self-consistency filter; failures: 1B.2 examples from failures."
    )
    filter: AgreementFilter = Field(description="The phase's agreement filter.")
    failures: FailureExamples | None = Field(None, description="1B.2's failure settings (mode failures only).")
    replay_uri: str | None = Field(None, description="Training JSONL of an earlier distill (1B.1's) to mix back in, "
                                   "failures.replayFraction of the output (mode failures only).")

    @model_validator(mode="after")
    def _failures_with_mode(self) -> DistillParams:
        # `failures` is set exactly in mode failures, so a stage can branch on either.
        if (self.mode == DistillMode.failures) != (self.failures is not None):
            raise ValueError("params.failures: required when params.mode is 'failures', and only then")
        return self


class TrainParams(WireModel):
    kind: Literal["train"] = "train"
    data_uri: str = Field(description="Chat-format JSONL from distill.")
    training: TrainingKnobs = Field(description="The phase's training settings (1B.1 epochs adjusted per "
                                    "iteration).")
    init_adapter_uri: str | None = Field(None, description="Continue from this adapter (1B.2 from 1B.1).")
    processes: int = Field(1, ge=1, description="Data-parallel training processes (torchrun), one per GPU: "
                           "spec.resources.stages.train.gpus.")


class EvaluateParams(WireModel):
    kind: Literal["evaluate"] = "evaluate"
    problems_uri: str
    sampling: SamplingKnobs = Field(description="spec.evaluation's sampling settings.")
    adapter_uri: str | None = None
    baseline_report_uri: str | None = Field(None, description="Earlier report, for per-problem before/after.")
    failure: FailureCriteria = Field(default_factory=FailureCriteria,
                                     description="What counts as a failed problem (spec.expansion.failure).")
    primary_endpoint: PrimaryEndpoint = Field(default_factory=PrimaryEndpoint,
                                              description="spec.evaluation.primaryEndpoint.")
    primary_baseline_uri: str | None = Field(None, description="The baseline evaluation's report: the primary "
                                             "endpoint is always baseline -> this model.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans (resources.stages.evaluate.gpus).")


class ReportParams(WireModel):
    """The campaign as it stands when its last stage starts: the report is rendered from this snapshot."""

    kind: Literal["report"] = "report"
    spec: CampaignSpec = Field(description="The campaign's spec (model card: base model, datasets, phases).")
    status: dict[str, Any] = Field(description="Snapshot of the campaign status (CampaignStatus wire form).")
    adapter_uri: str | None = Field(None, description="The best adapter (1B.2, or 1B.1 when 1B.2 is disabled).")


StageParams = Annotated[
    PrepareParams | GenerateParams | DistillParams | TrainParams | EvaluateParams | ReportParams,
    Field(discriminator="kind"),
]


class StageConfig(WireModel):
    """Everything one stage needs; nothing implicit."""

    campaign: str
    namespace: str = "default"
    key: str = Field(description="Stable stage id within the campaign, e.g. 1b1-i1-generate.")
    stage: StageName
    phase: str = Field(description="1B.1, 1B.2 or baseline.")
    iteration: int = Field(ge=0)
    attempt: int = Field(1, ge=1)
    seed: int
    store: ArtifactStore
    output_uri: str = Field(description="Directory URI this stage writes to (atomically, idempotently).")
    model: ModelRef
    backend: Backend = Backend.auto
    params: StageParams
    deadline_seconds: int = Field(
        6 * 3600, ge=60, description="The stage Job's deadline: a temp file older than this is no live writer's.")

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StageConfig:
        return cls.model_validate_json(text)


class StageResult(WireModel):
    """Compact result of a finished stage, as written to the termination message.

    `metrics` per stage (keys the state machine reads):
    prepare: selection, scan, eval (problem counts), malformed, ngramOverlap {count, examples};
    generate: problems, completions; distill: examples (newExamples + replayed);
    train: steps, finalLoss, method, quantization; evaluate: problems, consistency (pooled), meanAgreement,
    accuracy {domain: float}, consistencyByDomain, consistencyGivenCorrect, passAt1 {domain: float},
    failureToSuccess, successToFailure, paired {figure: {difference, low, high, pValue, better, worse, n}}.
    """

    model_config = ConfigDict(**{**WireModel.model_config, "extra": "ignore"})

    key: str
    ok: bool
    retryable: bool = False
    message: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    seconds: float | None = Field(None, ge=0)

    def to_termination_message(self) -> str:
        """Serialise within the 4 KiB limit, dropping detail (never the verdict) if needed."""
        text = json.dumps(self.to_wire(), separators=(",", ":"))
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        slim = self.model_copy(update={"message": self.message[:500], "outputs": {}})
        text = json.dumps(slim.to_wire(), separators=(",", ":"))
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        bare = self.model_copy(update={"message": self.message[:500], "outputs": {}, "metrics": {}})
        return json.dumps(bare.to_wire(), separators=(",", ":"))


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
