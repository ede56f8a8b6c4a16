"""The contract between control plane and stage programs: what a stage is told (StageConfig, passed as
JSON) and what it hands back (StageResult, <= 4 KiB, via the container termination message)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from consistency_core.model import WireModel
from consistency_core.spec import (
    ArtifactStore,
    Backend,
    DatasetSpec,
    FailureCriteria,
    LoraConfig,
    ModelRef,
    Selection,
    StageName,
)

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
TRAIN_ADAPTER = "adapter"
EVALUATE_REPORT = "report.json"
MANIFEST = "manifest.json"
RESULT = "result.json"


class PrepareParams(WireModel):
    kind: Literal["prepare"] = "prepare"
    datasets: list[DatasetSpec] = Field(description="All datasets the campaign names.")
    selection: list[Selection] = Field(description="1B.1 training selection.")
    scan_datasets: list[str] = Field(default_factory=list, description="1B.2 scan datasets.")
    eval_datasets: list[str] = Field(description="Evaluation datasets.")


class GenerateParams(WireModel):
    kind: Literal["generate"] = "generate"
    problems_uri: str = Field(description="JSONL of problems to answer.")
    samples: int = Field(ge=1)
    temperature: float = Field(ge=0.0)
    max_new_tokens: int = Field(ge=1)
    adapter_uri: str | None = Field(None, description="LoRA adapter to apply, if any.")
    shards: int = Field(1, ge=1, description="Total shards; each pod takes its slice.")
    tensor_parallel_size: int = Field(1, ge=1)


class DistillParams(WireModel):
    kind: Literal["distill"] = "distill"
    problems_uri: str
    generations_uri: str = Field(description="Output directory of the generate stage (all shards).")
    mode: Literal["consistent", "failures"] = Field(
        description="consistent: 1B.1 self-consistency filter; failures: 1B.2 examples from failures."
    )
    min_agreement: float = Field(ge=0.0, le=1.0)
    failure: FailureCriteria | None = None
    max_examples: int | None = Field(None, ge=1)
    max_per_problem: int = Field(2, ge=1)
    use_reference_solutions: bool = False


class TrainParams(WireModel):
    kind: Literal["train"] = "train"
    data_uri: str = Field(description="Chat-format JSONL from distill.")
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    gradient_accumulation: int = Field(ge=1)
    max_seq_len: int = Field(ge=8)
    lora: LoraConfig
    init_adapter_uri: str | None = Field(None, description="Continue from this adapter (1B.2 from 1B.1).")
    method: Literal["qlora", "lora", "full"] = Field(
        "qlora", description="qlora: 4-bit NF4 base + LoRA where bitsandbytes supports the device, else lora."
    )
    processes: int = Field(1, ge=1, description="Data-parallel training processes (torchrun), one per GPU.")
    checkpoint_steps: int = Field(50, ge=1, description="Checkpoint to the store every N optimizer steps.")


class EvaluateParams(WireModel):
    kind: Literal["evaluate"] = "evaluate"
    problems_uri: str
    samples: int = Field(ge=1)
    temperature: float = Field(ge=0.0)
    max_new_tokens: int = Field(ge=1)
    adapter_uri: str | None = None
    baseline_report_uri: str | None = Field(None, description="Earlier report, for per-problem before/after.")


StageParams = Annotated[
    PrepareParams | GenerateParams | DistillParams | TrainParams | EvaluateParams,
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

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StageConfig:
        return cls.model_validate_json(text)


class StageResult(WireModel):
    """Compact result of a finished stage, as written to the termination message.

    `metrics` per stage (keys the state machine reads):
    prepare: selection, scan, eval (problem counts), malformed;
    generate: problems, completions; distill: examples;
    train: steps, finalLoss, method, quantization; evaluate: problems, consistency, meanAgreement,
    accuracy {domain: float}, failureToSuccess, successToFailure.
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
