"""Operator settings from flags and environment (flags win), with the documented defaults.

Every setting has an env var so the Helm chart can configure the Deployment without templating
arguments; spec fields of a ConsistencyTraining override the worker-related defaults per campaign.

| env var | flag | default | meaning |
|---|---|---|---|
| CONSISTENCY_WATCH_NAMESPACES | -n/--namespace, -A | (empty) | comma list; empty = cluster-wide |
| CONSISTENCY_HEALTH_PORT | --health-port | 8080 | liveness: GET /healthz (kopf) |
| CONSISTENCY_METRICS_PORT | --metrics-port | 9090 | GET /metrics (Prometheus), GET /readyz |
| CONSISTENCY_PEERING | --peering | (empty) | KopfPeering name (cluster-wide: ClusterKopfPeering); empty = off |
| CONSISTENCY_PRIORITY | --priority | 0 | peering priority; the highest live one is active |
| CONSISTENCY_PEERING_LIFETIME | | 60 | seconds before a silent peer is presumed dead (standby takeover delay) |
| CONSISTENCY_WORKER_IMAGE | | ghcr.io/consistency-dev/consistency-worker:0.1.0 | spec.resources.workerImage wins |
| CONSISTENCY_GPU_RESOURCE | | nvidia.com/gpu | GPU extended resource; spec.resources.gpuResourceName wins |
| CONSISTENCY_WORKER_SERVICE_ACCOUNT | | (none) | stage pods' ServiceAccount; spec.resources.serviceAccountName wins |
| CONSISTENCY_WORKER_NODE_SELECTOR | | {} | JSON object; GPU stage pods' nodeSelector when the spec sets none |
| CONSISTENCY_WORKER_TOLERATIONS | | [] | JSON array; GPU stage pods' tolerations when the spec sets none |
| CONSISTENCY_WORKER_CPU_NODE_SELECTOR | | {} | JSON object; nodeSelector of pods without GPUs (spec wins) |
| CONSISTENCY_WORKER_CPU_TOLERATIONS | | [] | JSON array; tolerations of pods without GPUs (spec wins) |
| CONSISTENCY_WORKER_RUNTIME_CLASS | | (none) | stage pods' runtimeClassName; spec.resources.runtimeClassName wins |
| CONSISTENCY_WORKER_HOST_USERS | | true | false = stage pods get hostUsers: false; spec.resources.hostUsers wins |
| CONSISTENCY_QUEUE_NAME | | (none) | Kueue LocalQueue of stage Jobs; spec.resources.queueName wins |
| CONSISTENCY_STORE_ENDPOINT | | (none) | S3 endpoint; spec.store.endpoint wins |
| CONSISTENCY_STORE_SECRET | | (none) | Secret with the AWS_* keys; spec.store.credentialsSecret wins |
| CONSISTENCY_STORE_ALLOWED_PREFIX | | (none) | default Secret only for store URIs under it (`<namespace>` filled in) |
| CONSISTENCY_ALLOWED_REGISTRIES | | (worker image repo) | comma list of prefixes spec.resources.workerImage needs |
| CONSISTENCY_ALLOW_SERVICE_ACCOUNT_OVERRIDE | | false | whether spec.resources.serviceAccountName may be set |
| CONSISTENCY_ALLOW_RUNTIME_CLASS_OVERRIDE | | false | whether spec.resources.runtimeClassName may be set |
| CONSISTENCY_RESYNC_SECONDS | | 600 | safety-net resync of every campaign; 0 = off |
| CONSISTENCY_WATCH_SERVER_TIMEOUT / _CLIENT_TIMEOUT | | 300 / 330 | watch-stream timeouts (seconds) |
| CONSISTENCY_VERBOSE | -v/--verbose | off | debug logging |
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_WORKER_IMAGE = "ghcr.io/consistency-dev/consistency-worker:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty = cluster-wide
    health_port: int = 8080
    metrics_port: int = 9090
    peering: str = ""  # empty = standalone (no leader election)
    priority: int = 0
    peering_lifetime: int = 60  # seconds a silent peer counts as alive: the standby's takeover delay
    worker_image: str = DEFAULT_WORKER_IMAGE
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    worker_service_account: str | None = None
    worker_node_selector: tuple[tuple[str, str], ...] = ()
    worker_tolerations: tuple[Mapping[str, Any], ...] = ()
    worker_cpu_node_selector: tuple[tuple[str, str], ...] = ()
    worker_cpu_tolerations: tuple[Mapping[str, Any], ...] = ()
    queue_name: str | None = None
    worker_runtime_class: str | None = None
    worker_host_users: bool = True
    store_endpoint: str | None = None
    store_secret: str | None = None
    # Tenant fences (tenancy.py): where the default credentials may go, which images and overrides a CR may ask for.
    store_allowed_prefix: str | None = None
    allowed_registries: tuple[str, ...] = ()
    allow_service_account_override: bool = False
    allow_runtime_class_override: bool = False
    # Watch-stream timeouts: short in tests so a restarted API server is noticed quickly.
    watch_server_timeout: int = 300
    watch_client_timeout: int = 330
    # Safety-net resync of every campaign; progress itself is driven by watch events.
    resync_seconds: int = 600
    verbose: bool = False

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected an integer") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false", "1", "0"):
        raise SystemExit(f"{name}={raw!r}: expected true or false")
    return raw in ("true", "1")


def _json(env: Mapping[str, str], name: str, kind: type) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise SystemExit(f"{name}: expected a JSON {'object' if kind is dict else 'array'}")
    return value


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> OperatorConfig:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="consistency-operator",
        description="Kubernetes operator for ConsistencyTraining campaigns (consistency.dev/v1alpha1).",
    )
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="Namespace to watch (repeatable or comma list); default "
                             "CONSISTENCY_WATCH_NAMESPACES; none = cluster-wide.")
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="Watch every namespace.")
    parser.add_argument("--health-port", type=int, default=_int(env, "CONSISTENCY_HEALTH_PORT", 8080))
    parser.add_argument("--metrics-port", type=int, default=_int(env, "CONSISTENCY_METRICS_PORT", 9090))
    parser.add_argument("--peering", default=env.get("CONSISTENCY_PEERING", ""),
                        help="KopfPeering name for an active/standby pair; empty = standalone.")
    parser.add_argument("--priority", type=int, default=_int(env, "CONSISTENCY_PRIORITY", 0),
                        help="Peering priority (the highest live priority is active).")
    parser.add_argument("--verbose", "-v", action="store_true",
                        default=env.get("CONSISTENCY_VERBOSE", "") in ("1", "true"))
    args = parser.parse_args(argv)

    if args.all_namespaces:
        namespaces: tuple[str, ...] = ()
    elif args.namespace:
        namespaces = tuple(ns for item in args.namespace for ns in _split(item))
    else:
        namespaces = _split(env.get("CONSISTENCY_WATCH_NAMESPACES"))

    for name, port in (("health", args.health_port), ("metrics", args.metrics_port)):
        if not 0 <= port <= 65535:
            raise SystemExit(f"--{name}-port={port}: not a TCP port")

    return OperatorConfig(
        namespaces=namespaces,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        peering=args.peering.strip(),
        priority=args.priority,
        peering_lifetime=_int(env, "CONSISTENCY_PEERING_LIFETIME", 60),
        worker_image=env.get("CONSISTENCY_WORKER_IMAGE") or DEFAULT_WORKER_IMAGE,
        gpu_resource=env.get("CONSISTENCY_GPU_RESOURCE") or DEFAULT_GPU_RESOURCE,
        worker_service_account=env.get("CONSISTENCY_WORKER_SERVICE_ACCOUNT") or None,
        worker_node_selector=tuple(sorted(
            (str(k), str(v)) for k, v in _json(env, "CONSISTENCY_WORKER_NODE_SELECTOR", dict).items())),
        worker_tolerations=tuple(_json(env, "CONSISTENCY_WORKER_TOLERATIONS", list)),
        worker_cpu_node_selector=tuple(sorted(
            (str(k), str(v)) for k, v in _json(env, "CONSISTENCY_WORKER_CPU_NODE_SELECTOR", dict).items())),
        worker_cpu_tolerations=tuple(_json(env, "CONSISTENCY_WORKER_CPU_TOLERATIONS", list)),
        queue_name=env.get("CONSISTENCY_QUEUE_NAME") or None,
        worker_runtime_class=env.get("CONSISTENCY_WORKER_RUNTIME_CLASS") or None,
        worker_host_users=_bool(env, "CONSISTENCY_WORKER_HOST_USERS", True),
        store_endpoint=env.get("CONSISTENCY_STORE_ENDPOINT") or None,
        store_secret=env.get("CONSISTENCY_STORE_SECRET") or None,
        store_allowed_prefix=env.get("CONSISTENCY_STORE_ALLOWED_PREFIX") or None,
        allowed_registries=_split(env.get("CONSISTENCY_ALLOWED_REGISTRIES")),
        allow_service_account_override=_bool(env, "CONSISTENCY_ALLOW_SERVICE_ACCOUNT_OVERRIDE", False),
        allow_runtime_class_override=_bool(env, "CONSISTENCY_ALLOW_RUNTIME_CLASS_OVERRIDE", False),
        watch_server_timeout=_int(env, "CONSISTENCY_WATCH_SERVER_TIMEOUT", 300),
        watch_client_timeout=_int(env, "CONSISTENCY_WATCH_CLIENT_TIMEOUT", 330),
        resync_seconds=_int(env, "CONSISTENCY_RESYNC_SECONDS", 600),
        verbose=args.verbose,
    )
