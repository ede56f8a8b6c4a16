"""The batch/v1 Job that runs one attempt of one stage (pure: a manifest from spec, stage and settings).

The Job's name is the stage record's deterministic name, so creating it twice is a 409 the operator
adopts, never a duplicate.  Failure semantics live in the Job itself (podFailurePolicy): preemption
and node drains do not count against backoffLimit, the worker's "permanent" exit code fails the Job
at once, anything else is retried up to backoffLimit; the campaign-level retry (a new Job, attempt
n+1) is the state machine's decision on top of that.
"""

from __future__ import annotations

from typing import Any

from consistency_core.queueing import QUEUE_LABEL
from consistency_core.spec import CampaignSpec, StageName, StageResources
from consistency_core.stage_wire import EXIT_PERMANENT, StageConfig
from consistency_core.status import StageRecord

from consistency_operator.config import OperatorConfig
from consistency_operator.tenancy import lends_default_credentials

MANAGED_BY = "consistency-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_CAMPAIGN = "consistency.dev/campaign"
LABEL_STAGE = "consistency.dev/stage"
LABEL_PHASE = "consistency.dev/phase"
LABEL_ITERATION = "consistency.dev/iteration"
LABEL_KEY = "consistency.dev/key"
LABEL_ATTEMPT = "consistency.dev/attempt"
CONTAINER = "worker"
CONFIG_ENV = "CONSISTENCY_STAGE_CONFIG"
TERMINATION_LOG = "/dev/termination-log"
HF_TOKEN_KEY = "HF_TOKEN"  # the key in spec.model.tokenSecret, and the env var huggingface_hub reads
HF_HOME = "/cache/huggingface"
WORKER_UID = 10001  # the worker image's user (images/worker/Dockerfile)


def job_labels(config: StageConfig) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        "app.kubernetes.io/name": "consistency-worker",
        "app.kubernetes.io/component": config.stage.value,
        LABEL_CAMPAIGN: config.campaign,
        LABEL_STAGE: config.stage.value,
        LABEL_PHASE: config.phase,
        LABEL_ITERATION: str(config.iteration),
        LABEL_KEY: config.key,
        LABEL_ATTEMPT: str(config.attempt),
    }


def queue_name(spec: CampaignSpec, settings: OperatorConfig) -> str | None:
    return spec.resources.queue_name or settings.queue_name


def job_suspended(job: dict[str, Any]) -> bool:
    """A Job waiting for admission: suspended (Kueue unsuspends it when the workload is admitted)."""
    return bool((job.get("spec") or {}).get("suspend"))


def _store_env(spec: CampaignSpec, settings: OperatorConfig, namespace: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    # The operator's default credentials only under the namespace's allowed prefix (tenancy.py).
    default = settings.store_secret if lends_default_credentials(spec, settings, namespace) else None
    secret = spec.store.credentials_secret or default
    if secret:
        # secretKeyRef keeps credentials out of the Job spec, the CR status and the operator's memory.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    endpoint = spec.store.endpoint or settings.store_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if spec.store.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": spec.store.region})
    return env


def _hub_env(spec: CampaignSpec) -> list[dict[str, Any]]:
    if not spec.model.token_secret:
        return []
    # By reference only: the kubelet resolves it, the operator never reads the Secret.
    ref = {"name": spec.model.token_secret, "key": HF_TOKEN_KEY}
    return [{"name": HF_TOKEN_KEY, "valueFrom": {"secretKeyRef": ref}}]


def _resources(res: StageResources, gpu_resource: str) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.ephemeral_storage:
        amounts["ephemeral-storage"] = res.ephemeral_storage
    if res.gpus:
        amounts[gpu_resource] = str(res.gpus)
    # Equal requests and limits: Guaranteed QoS, so a stage is the last thing evicted under pressure.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(res: StageResources) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/cache"},
    ]
    if res.gpus:
        # vLLM and NCCL need more shared memory than the container runtime's 64 MiB default.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _scheduling(spec: CampaignSpec, settings: OperatorConfig, resources: StageResources,
                gpu_resource: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """nodeSelector and tolerations of a stage pod. A pod without GPUs takes only the CPU settings, so
    selectors and tolerations meant for GPU nodes never pull prepare or distill onto them.
    The CR's scheduling wins; the chart's worker defaults apply when it sets none."""
    res = spec.resources
    if not resources.gpus:
        node_selector = dict(res.cpu_node_selector) or dict(settings.worker_cpu_node_selector)
        tolerations = [t.to_wire() for t in res.cpu_tolerations] or [dict(t) for t in settings.worker_cpu_tolerations]
        return node_selector, tolerations
    node_selector = dict(res.node_selector) or dict(settings.worker_node_selector)
    tolerations = [t.to_wire() for t in res.tolerations] or [dict(t) for t in settings.worker_tolerations]
    # GPU nodes are commonly tainted with the resource name; tolerate it unless the CR says otherwise.
    if not any(t.get("key") == gpu_resource for t in tolerations):
        tolerations.append({"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return node_selector, tolerations


def build_job(
    *,
    config: StageConfig,
    record: StageRecord,
    resources: StageResources,
    spec: CampaignSpec,
    settings: OperatorConfig,
) -> dict[str, Any]:
    """The Job manifest for one stage attempt (owner references are added when it is created)."""
    labels = job_labels(config)
    gpu_resource = spec.resources.gpu_resource_name or settings.gpu_resource
    volumes, mounts = _volumes(resources)
    env = [
        {"name": CONFIG_ENV, "value": config.to_json()},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "HOME", "value": "/tmp"},
        *_store_env(spec, settings, config.namespace),
        *_hub_env(spec),
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.resources.worker_image or settings.worker_image,
        "imagePullPolicy": spec.resources.image_pull_policy,
        "command": ["consistency-worker"],
        "args": [config.stage.value, "--config", f"env:{CONFIG_ENV}"],
        "env": env,
        "resources": _resources(resources, gpu_resource),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    service_account = spec.resources.service_account_name or settings.worker_service_account
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    node_selector, tolerations = _scheduling(spec, settings, resources, gpu_resource)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    runtime_class = spec.resources.runtime_class_name or settings.worker_runtime_class
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    host_users = spec.resources.host_users if spec.resources.host_users is not None else settings.worker_host_users
    if not host_users:
        # Container uid 10001 maps to an unprivileged host uid: a breakout is not even host-uid 10001.
        pod_spec["hostUsers"] = False

    job_spec: dict[str, Any] = {
        "backoffLimit": resources.backoff_limit,
        "activeDeadlineSeconds": resources.deadline_seconds,
        "ttlSecondsAfterFinished": spec.resources.ttl_seconds_after_finished,
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [EXIT_PERMANENT]}},
            ]
        },
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    shards = getattr(config.params, "shards", 1)
    if config.stage == StageName.generate and shards > 1:
        # Each pod reads JOB_COMPLETION_INDEX and takes its slice of the problems.
        job_spec.update(completionMode="Indexed", completions=shards, parallelism=shards)
    else:
        job_spec.update(completions=1, parallelism=1)

    queue = queue_name(spec, settings)
    job_labels_ = dict(labels)
    if queue:
        # Kueue admits the Job by unsuspending it; created suspended so no pod starts before admission.
        job_labels_[QUEUE_LABEL] = queue
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": record.job_name,
            "namespace": config.namespace,
            "labels": job_labels_,
        },
        "spec": job_spec,
    }
