"""The spec's cluster-facing sections: stage pods (size, deadline, sharding, scheduling, images), the
report stage's export and the budget the cost forecast prices. Import it through consistency_core.spec,
the spec's public entry."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from consistency_core import bounds
from consistency_core.bounds import CpuQuantity, DnsSubdomain, LabelMap, MemoryQuantity
from consistency_core.spec_types import StageName
from consistency_core.wire_model import WireModel


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
