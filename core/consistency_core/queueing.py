"""Admission of stage Jobs by a queue (Kueue, or anything that suspends Jobs): pure status bookkeeping.

A Job created with `spec.resources.queueName` carries the `kueue.x-k8s.io/queue-name` label and starts
suspended; the queue admits it by unsuspending it (and may suspend it again to preempt it). While it is
suspended its stage record is `Queued`: the wait is kept in `queuedSeconds`, and on admission the record's
`startTime` moves to the admission time, so stage time and cost (duration x GPUs) never include the wait.
The Job's own `activeDeadlineSeconds` also counts from admission: Kubernetes resets a Job's startTime
when it is resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from consistency_core.names import parse_rfc3339, rfc3339
from consistency_core.status import CampaignStatus, EventType, Reason, StageOutcome

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass(frozen=True)
class QueueEvent:
    type: EventType
    reason: Reason
    message: str


def observe_job(status: CampaignStatus, *, suspended: bool, started: str | None, now: datetime,
                queue: str | None = None) -> list[QueueEvent]:
    """Fold the current stage Job's admission state into the status (in place); returns Events to post.

    `started` is the Job's status.startTime (set by the Job controller on admission), if known."""
    record = status.current()
    if record is None:
        return []
    events: list[QueueEvent] = []
    where = f" in queue {queue}" if queue else ""
    if suspended and record.outcome != StageOutcome.queued:
        record.outcome = StageOutcome.queued
        record.queued_time = rfc3339(now)
        status.message = f"{record.key} queued: Job {record.job_name} waits for admission{where}"
        events.append(QueueEvent(EventType.normal, Reason.queued, status.message))
    elif not suspended and record.outcome == StageOutcome.queued:
        admitted = now
        if started:
            admitted = max(parse_rfc3339(started), parse_rfc3339(record.queued_time or started))
        waited = max((admitted - parse_rfc3339(record.queued_time or rfc3339(admitted))).total_seconds(), 0.0)
        record.queued_seconds = round(record.queued_seconds + waited, 3)
        record.start_time = rfc3339(admitted)
        record.queued_time = None
        record.outcome = StageOutcome.running
        status.message = f"running {record.key}"
        events.append(QueueEvent(EventType.normal, Reason.admitted,
                                 f"{record.key}: Job {record.job_name} admitted{where} after {waited:.0f}s queued"))
    refresh(status)
    return events


def refresh(status: CampaignStatus) -> None:
    """`stageStatus` (printer column) follows the current stage record."""
    record = status.current()
    status.stage_status = record.outcome if record is not None and not status.finished else None
