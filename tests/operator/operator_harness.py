"""Helpers of the operator tests: the operator as a child process, the Job controller the tests play,
campaign bodies, and polling helpers (deadlines, never fixed sleeps)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from kmock_cluster import EmulatedCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
CT = "consistency.dev/v1alpha1"
CTS = "consistencytrainings"




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(proc: subprocess.Popen[bytes] | None, url: str, logs: Callable[[], str]) -> bool:
    """Whether a child process's HTTP endpoint answers 200 yet; raises with its log if it exited."""
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{logs()[-3000:]}")
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def stop_child(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it does not exit within 15 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class OperatorProcess:
    """`python -m consistency_operator` as a child process pointed at the emulator."""

    def __init__(self, kubeconfig: Path, workdir: Path, namespaces: str,
                 extra_env: dict[str, str] | None = None, name: str = "operator") -> None:
        self.workdir, self.name, self.kubeconfig = workdir, name, kubeconfig
        self.metrics_port, self.health_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "CONSISTENCY_WATCH_NAMESPACES": namespaces,
            "CONSISTENCY_METRICS_PORT": str(self.metrics_port),
            "CONSISTENCY_HEALTH_PORT": str(self.health_port),
            "CONSISTENCY_WORKER_IMAGE": "registry.test/consistency-worker:test",
            "CONSISTENCY_STORE_SECRET": "default-store-creds",
            "CONSISTENCY_STORE_ENDPOINT": "http://store.default.svc:9000",
            "CONSISTENCY_GPU_RESOURCE": "nvidia.com/gpu",
            # The platform tests ask for a RuntimeClass; test_operator_failclosed runs without overrides.
            "CONSISTENCY_ALLOW_RUNTIME_CLASS_OVERRIDE": "true",
            "CONSISTENCY_STORE_ALLOWED_PREFIX": "s3://campaigns/<namespace>/",
            # Short watch timeouts: a restarted operator must not wait minutes on a stale stream.
            "CONSISTENCY_WATCH_SERVER_TIMEOUT": "10",
            "CONSISTENCY_WATCH_CLIENT_TIMEOUT": "15",
            "CONSISTENCY_RESYNC_SECONDS": "0",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "operator"), str(REPO / "core"), os.environ.get("PYTHONPATH", "")]),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self) -> OperatorProcess:
        self.starts += 1
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "consistency_operator", "--verbose"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_for("operator readiness", self.ready, timeout=30, interval=0.1)
        return self

    def ready(self) -> bool:
        return answers(self.proc, f"http://127.0.0.1:{self.metrics_port}/readyz", self.logs)

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a node failure or OOM kill."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop_child(self.proc)

    def logs(self) -> str:
        return "\n".join((self.workdir / f"{self.name}-{i}.log").read_text(errors="replace")
                         for i in range(1, self.starts + 1)
                         if (self.workdir / f"{self.name}-{i}.log").exists())

    def scrape(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


# ---- campaign fixtures and the Job controller the tests play ---------------------------------------

def campaign_body(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "store": {"uri": "s3://campaigns/runs", "endpoint": "http://minio.store.svc:9000",
                  "credentialsSecret": "store-creds"},
        "retry": {"maxIterations": 2, "stageRetries": 1},
        "resources": {"stages": {"generate": {"shards": 2, "gpus": 1}, "prepare": {"memory": "16Gi"}},
                      "nodeSelector": {"gpu.type": "h100"}, "priorityClassName": "batch-high",
                      "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                       "effect": "NoSchedule"}],
                      "cpuNodeSelector": {"pool": "cpu"},
                      "cpuTolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]},
        "budget": {"gpuHourUsd": 3.0, "maxUsd": 500.0},
    }
    for key, value in overrides.items():
        spec[key] = value
    return {"kind": "ConsistencyTraining", "metadata": {"name": name}, "spec": spec}


class JobController:
    """Plays the parts of the Job controller and kubelet that the emulator does not have."""

    def __init__(self, cluster: EmulatedCluster) -> None:
        self.c = cluster

    def jobs(self, ns: str, campaign: str) -> list[dict[str, Any]]:
        return self.c.list("batch/v1", "jobs", ns, labels={"consistency.dev/campaign": campaign})

    def wait_job(self, ns: str, campaign: str, key: str, attempt: int = 1, timeout: float = 15) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            for job in self.jobs(ns, campaign):
                labels = job["metadata"]["labels"]
                if labels.get("consistency.dev/key") == key and labels.get("consistency.dev/attempt") == str(attempt):
                    return job
            return None
        return self.c.wait_for(f"Job {key} attempt {attempt} of {ns}/{campaign}", probe, timeout=timeout)

    def _pods(self, job: dict[str, Any], count: int, phase: str, terminated: dict[str, Any]) -> None:
        meta = job["metadata"]
        for index in range(count):
            pod = {
                "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-{index}-x{int(time.monotonic() * 1000) % 100000}",
                    "namespace": meta["namespace"],
                    "labels": {"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"]},
                    "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                         "uid": meta["uid"], "controller": True}],
                },
                "spec": job["spec"]["template"]["spec"],
                "status": {"phase": phase, "containerStatuses": [
                    {"name": "worker", "state": {"terminated": terminated}}]},
            }
            self.c.create("v1", "pods", pod, namespace=meta["namespace"])

    def succeed(self, job: dict[str, Any], metrics: dict[str, Any] | None = None,
                outputs: dict[str, str] | None = None, seconds: float | None = 120.0) -> None:
        key = job["metadata"]["labels"]["consistency.dev/key"]
        shards = int(job["spec"].get("completions", 1))
        result = {"key": key, "ok": True, "metrics": metrics or {}, "outputs": outputs or {}, "seconds": seconds}
        self._pods(job, shards, "Succeeded",
                   {"exitCode": 0, "reason": "Completed", "message": json.dumps(result),
                    "finishedAt": "2026-01-01T00:00:00Z"})
        self._finish(job, {"type": "Complete", "status": "True"}, succeeded=shards)

    def fail(self, job: dict[str, Any], exit_code: int = 1, message: str = "CUDA out of memory",
             reason: str = "BackoffLimitExceeded") -> None:
        self._pods(job, 1, "Failed", {"exitCode": exit_code, "reason": "Error", "message": message,
                                      "finishedAt": "2026-01-01T00:00:00Z"})
        self._finish(job, {"type": "Failed", "status": "True", "reason": reason,
                           "message": "Job has reached the specified backoff limit"}, failed=1)

    def _finish(self, job: dict[str, Any], condition: dict[str, Any], **counts: int) -> None:
        meta = job["metadata"]
        self.c.patch("batch/v1", "jobs", meta["namespace"], meta["name"],
                     {"status": {"conditions": [condition], **counts}}, sub="status")


# ---- stage results of a campaign, as its Jobs would report them ------------------------------------

PREPARE = {"selection": 664, "scan": 8847, "eval": 1483, "malformed": 0}
GENERATE = {"problems": 332, "completions": 1992}  # per shard; two shards
DISTILL = {"examples": 412}
TRAIN = {"steps": 104, "finalLoss": 0.41}
BASELINE = {"problems": 1483, "consistency": 0.10, "meanAgreement": 0.45, "accuracy": {"math": 0.41, "code": 0.58},
            "pairwiseAgreement": {"math": 0.31, "code": 0.40}}
PASSING = {"problems": 1483, "consistency": 0.64, "meanAgreement": 0.81, "accuracy": {"math": 0.57, "code": 0.6},
           "pairwiseAgreement": {"math": 0.44, "code": 0.52},
           "primary": {"figure": "math pairwise agreement", "reference": "baseline", "difference": 0.13,
                       "low": 0.08, "high": 0.18, "pValue": 0.0001, "n": 1319}}
FAILING = {"problems": 1483, "consistency": 0.31, "meanAgreement": 0.62, "accuracy": {"math": 0.49, "code": 0.59}}


def run_quick_fix(jobs: JobController, name: str, evaluation: dict[str, Any], iteration: int = 1,
                  ns: str = "default") -> None:
    """Drive one 1B.1 iteration (prepare and baseline only in iteration 1) through its evaluate Job."""
    if iteration == 1:
        jobs.succeed(jobs.wait_job(ns, name, "prepare"), PREPARE)
        jobs.succeed(jobs.wait_job(ns, name, "baseline-evaluate"), BASELINE,
                     {"report": f"s3://campaigns/runs/{ns}/{name}/baseline-evaluate/report.json"})
    prefix = f"1b1-i{iteration}"
    jobs.succeed(jobs.wait_job(ns, name, f"{prefix}-generate"), GENERATE)
    jobs.succeed(jobs.wait_job(ns, name, f"{prefix}-distill"), DISTILL)
    jobs.succeed(jobs.wait_job(ns, name, f"{prefix}-train"), TRAIN,
                 {"adapter": f"s3://campaigns/runs/{ns}/{name}/{prefix}-train/adapter"})
    jobs.succeed(jobs.wait_job(ns, name, f"{prefix}-evaluate"), evaluation,
                 {"report": f"s3://campaigns/runs/{ns}/{name}/{prefix}-evaluate/report.json"})


def get_ct(cluster: EmulatedCluster, ns: str, name: str) -> dict[str, Any]:
    obj = cluster.get(CT, CTS, ns, name)
    assert obj is not None, f"{ns}/{name} is gone"
    return obj


def wait_status(cluster: EmulatedCluster, ns: str, name: str, what: str, predicate: Any,
                timeout: float = 15) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = cluster.get(CT, CTS, ns, name)
        status = (obj or {}).get("status") or {}
        with contextlib.suppress(KeyError, IndexError, TypeError):
            if predicate(status):
                return obj
        return None
    return cluster.wait_for(f"{ns}/{name}: {what}", probe, timeout=timeout)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def events_for(cluster: EmulatedCluster, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in cluster.list("v1", "events", ns) if e.get("involvedObject", {}).get("name") == name]


def wait_events(cluster: EmulatedCluster, ns: str, name: str, *reasons: str) -> list[dict[str, Any]]:
    """Events are posted in the background by kopf, after the status write: wait for them."""
    def probe() -> list[dict[str, Any]] | None:
        events = events_for(cluster, ns, name)
        return events if set(reasons) <= {e["reason"] for e in events} else None
    return cluster.wait_for(f"events {reasons} of {ns}/{name}", probe)


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths a real API server would drop from ``value`` under this structural schema (KMock keeps them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        found: list[str] = []
        for key, item in value.items():
            if props is not None and key in props:
                found += pruned_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += pruned_fields(item, extra, f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in pruned_fields(item, schema["items"], f"{path}[{i}]")]
    return []
