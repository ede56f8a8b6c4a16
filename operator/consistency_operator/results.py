"""Turn a finished Job (and its Pods' termination messages) into the StageResult the state machine reads.

The worker writes its compact StageResult JSON to /dev/termination-log; full results stay in the
artifact store.  When there is no parsable message (OOM kill, deadline, image pull failure), the Job's
own failure condition becomes the result, so every finished Job yields exactly one verdict.
"""

from __future__ import annotations

import json
from typing import Any

from consistency_core.stage_wire import EXIT_PERMANENT, StageResult
from pydantic import ValidationError

from consistency_operator.jobs import CONTAINER

# batch/v1 Job condition types (Kubernetes' own, not the campaign's ConditionType).
JOB_COMPLETE, JOB_FAILED = "Complete", "Failed"


def job_finished(job: dict[str, Any]) -> str | None:
    """"Complete", "Failed" or None while the Job still runs (by its conditions, as kubectl wait does)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in (JOB_COMPLETE, JOB_FAILED):
            return str(cond["type"])
    return None


def _failure_condition(job: dict[str, Any]) -> dict[str, Any]:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == JOB_FAILED and cond.get("status") == "True":
            return cond
    return {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return ((status.get("state") or {}).get("terminated")
                    or (status.get("lastState") or {}).get("terminated"))
    return None


def _parse(message: str, key: str) -> StageResult | None:
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        result = StageResult.model_validate(data)
    except ValidationError:
        return None
    # A message from another stage's pod would be a naming bug; never fold it into this stage.
    return result if result.key == key else None


def _combine(key: str, results: list[StageResult]) -> StageResult:
    """Shards of an Indexed Job: counts add up, the slowest shard is the stage's duration."""
    if len(results) == 1:
        return results[0]
    metrics: dict[str, Any] = {}
    for r in results:
        for name, value in r.metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[name] = metrics.get(name, 0) + value
            else:
                metrics.setdefault(name, value)
    outputs: dict[str, str] = {}
    for r in results:
        outputs.update(r.outputs)
    seconds = [r.seconds for r in results if r.seconds is not None]
    return StageResult(
        key=key,
        ok=all(r.ok for r in results),
        retryable=all(r.retryable for r in results if not r.ok),
        message="; ".join(r.message for r in results if r.message)[:1000],
        metrics=metrics,
        outputs=outputs,
        seconds=max(seconds) if seconds else None,
    )


def read_result(job: dict[str, Any], pods: list[dict[str, Any]], key: str) -> tuple[StageResult, list[str]]:
    """The verdict of a finished Job; also returns problems worth a reconcile-error metric."""
    state = job_finished(job)
    if state is None:
        raise ValueError(f"Job {job['metadata']['name']} has not finished")
    problems: list[str] = []
    name = job["metadata"]["name"]

    if state == JOB_COMPLETE:
        # One result per completion index (Indexed Jobs); the newest pod of each index wins.
        by_index: dict[str, tuple[str, StageResult]] = {}
        for pod in pods:
            term = _terminated(pod)
            if (pod.get("status") or {}).get("phase") != "Succeeded" or term is None:
                continue
            result = _parse(term.get("message") or "", key)
            if result is None:
                problems.append(f"pod {pod['metadata']['name']}: no StageResult in its termination message")
                continue
            index = (pod["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "0")
            when = pod["metadata"].get("creationTimestamp") or ""
            if index not in by_index or when >= by_index[index][0]:
                by_index[index] = (when, result)
        if by_index:
            return _combine(key, [r for _, r in by_index.values()]), problems
        # The stage is idempotent: re-running it finds its outputs and reports again.
        return StageResult(key=key, ok=False, retryable=True,
                           message=f"Job {name} completed but left no readable result"), problems

    # Failed: prefer the worker's own verdict, then exit codes, then the Job's condition.
    cond = _failure_condition(job)
    reason = f"Job {name} failed: {cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
    retryable = cond.get("reason") != "PodFailurePolicy"
    newest: tuple[str, dict[str, Any]] | None = None
    for pod in pods:
        term = _terminated(pod)
        if term is None:
            continue
        when = term.get("finishedAt") or ""
        if newest is None or when >= newest[0]:
            newest = (when, term)
    if newest is not None:
        term = newest[1]
        worker = _parse(term.get("message") or "", key)
        if worker is not None and not worker.ok:
            return worker, problems
        if term.get("exitCode") == EXIT_PERMANENT:
            retryable = False
        tail = (term.get("message") or term.get("reason") or "").strip()
        if tail:
            reason = f"{reason}; last pod: exit {term.get('exitCode')}: {tail[-300:]}"
    return StageResult(key=key, ok=False, retryable=retryable, message=reason[:1000]), problems
