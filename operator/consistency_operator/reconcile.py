"""One reconcile pass for one ConsistencyTraining: read the CR and its current Job, let the pure state
machine decide, then make the cluster match (create the Job, write the status, post Events).

Everything is re-read from the API on each pass; nothing about a campaign is remembered in memory
except a lock (so two triggers for one campaign do not interleave) and metric values.  That is what
makes a restart at any point safe: the status says which Job a stage runs in, Job names are
deterministic, and a create that meets an existing Job (409) adopts it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from consistency_core import queueing
from consistency_core import statemachine as sm
from consistency_core.names import campaign_name_problem
from consistency_core.spec import CampaignSpec, SpecError, parse_spec
from consistency_core.stage_wire import StageResult
from consistency_core.status import CampaignPhase, CampaignStatus, ConditionType, EventType, Reason
from pydantic import ValidationError

from consistency_operator import apierrors, specrules, tenancy
from consistency_operator.config import OperatorConfig
from consistency_operator.jobs import LABEL_CAMPAIGN, build_job, job_suspended, queue_name
from consistency_operator.kube import ApiError, Conflict, Kube
from consistency_operator.observe import CampaignObserver
from consistency_operator.results import job_finished, read_result

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any], str, str, str], None]

_STATUS_KEYS = {f.alias or name for name, f in CampaignStatus.model_fields.items()}


def kopf_events(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1024])


@dataclass(frozen=True)
class Outcome:
    phase: str
    created_job: str | None
    status_changed: bool


def merge_patch(old: dict[str, Any], new: dict[str, Any], keys: set[str] | None = None) -> dict[str, Any]:
    """A JSON merge patch turning ``old`` into ``new`` (only ``keys`` at the top level, if given)."""
    patch: dict[str, Any] = {}
    for key in (keys if keys is not None else set(old) | set(new)):
        if key not in new:
            if key in old:
                patch[key] = None
        elif isinstance(new[key], dict) and isinstance(old.get(key), dict):
            sub = merge_patch(old[key], new[key])
            if sub:
                patch[key] = sub
        elif old.get(key) != new[key]:
            patch[key] = new[key]
    return patch


def owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorConfig, observer: CampaignObserver,
                 emit: EventSink = kopf_events) -> None:
        self.kube, self.settings, self.observer, self.emit = kube, settings, observer, emit
        self._locks: collections.defaultdict[tuple[str, str], asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    async def reconcile(self, namespace: str, name: str) -> Outcome | None:
        """One pass. A permanent API error ends the campaign Failed here; a transient one is raised (ApiError)
        for the caller to retry with backoff."""
        lock = self._locks[(namespace, name)]
        async with lock:
            try:
                return await self._reconcile(namespace, name)
            except ApiError as exc:
                verdict = apierrors.classify(exc.status, operation=exc.operation,
                                             resolvable_conflict=getattr(exc, "resolvable", True))
                if not verdict.permanent:
                    raise
                return await self._refuse(namespace, name, Reason.api_refused,
                                          f"Kubernetes API refused {exc.operation or 'a request'}: {exc}",
                                          getattr(exc, "attempted", None))

    async def _refuse(self, namespace: str, name: str, reason: Reason, message: str,
                      attempted: CampaignStatus | None = None) -> Outcome | None:
        """End the campaign Failed with `message`, a Warning Event and the stage it waited on marked failed."""
        self.observer.error("api_refused" if reason == Reason.api_refused else "invalid_name")
        log.error("%s/%s: %s", namespace, name, message)
        cr = await self.kube.get_campaign(namespace, name)
        if cr is None:
            return None
        raw_status: dict[str, Any] = cr.get("status") or {}
        try:
            status = CampaignStatus.model_validate(raw_status) if raw_status.get("phase") else None
        except ValidationError:
            status = None
        status = attempted or status  # with the stage whose Job was refused, so the status shows it
        decision = sm.refuse(status, reason, message, datetime.now(UTC), cr["metadata"].get("generation"))
        patch = merge_patch(raw_status, decision.status.to_wire(), _STATUS_KEYS)
        try:
            if patch:
                await self.kube.patch_campaign_status(namespace, name, patch)
        except ApiError as exc:
            if apierrors.classify(exc.status, operation=exc.operation).permanent:
                # Not even the status can be written: stop retrying, the log and the Event say why.
                self.emit(cr, EventType.warning, reason, message)
                raise kopf.PermanentError(f"{message}; writing the Failed status was refused too: {exc}") from exc
            raise
        if patch:
            for event in decision.events:
                self.emit(cr, event.type, event.reason, event.message)
        self.observer.observe(namespace, name, None, decision.status)
        return Outcome(decision.status.phase.value, None, bool(patch))

    def forget(self, namespace: str, name: str) -> None:
        self._locks.pop((namespace, name), None)
        self.observer.forget(namespace, name)

    async def _reconcile(self, namespace: str, name: str) -> Outcome | None:
        cr = await self.kube.get_campaign(namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return None
        meta = cr["metadata"]
        generation = meta.get("generation")
        raw_status: dict[str, Any] = cr.get("status") or {}
        name_problem = campaign_name_problem(name)
        # A campaign that started before the limit existed keeps running (its Job names are hashed to fit)
        # unless the name cannot even be a label value; a new one fails now, naming the reason.
        fatal = len(name) > 63 or not raw_status.get("stages")
        if name_problem is not None and fatal and \
                raw_status.get("phase") not in (CampaignPhase.failed, CampaignPhase.succeeded):
            return await self._refuse(namespace, name, Reason.invalid_name, name_problem)
        try:
            status = CampaignStatus.model_validate(raw_status) if raw_status.get("phase") else None
        except ValidationError as exc:
            # Only this operator writes the status; a mangled one is a human edit we cannot continue from.
            self.observer.error("status")
            raise kopf.PermanentError(f"status is not a valid CampaignStatus: {exc}") from exc
        now = datetime.now(UTC)

        try:
            spec = parse_spec(cr.get("spec") or {})
            if status is not None and status.phase != CampaignPhase.pending:
                spec, rejected = specrules.apply_pins(spec, meta.get("annotations") or {})
            else:
                rejected = []
            # The admission policy's rules, again: clusters without one are fenced too.
            fenced = tenancy.violations(spec, self.settings, namespace)
            if fenced:
                raise SpecError(fenced)
        except (SpecError, ValueError) as exc:
            return await self._invalid(cr, raw_status, status, exc, now, generation)

        if status is None or status.phase == CampaignPhase.pending:
            # Pin before the first Job exists so the rule holds from the first stage on.
            pins = specrules.pinned_values(spec)
            if (meta.get("annotations") or {}).get(specrules.PINNED_ANNOTATION) != pins:
                await self.kube.patch_campaign_annotations(namespace, name, {specrules.PINNED_ANNOTATION: pins})

        current = status.current() if status is not None and not status.finished else None
        result: StageResult | None = None
        current_job: dict[str, Any] | None = None
        job_missing = False
        if current is not None:
            current_job = await self.kube.get_job(namespace, current.job_name)
            # The status records a stage only after its Job was created, so a missing Job was deleted.
            job_missing = current_job is None
            if current_job is not None and not owned_by(current_job, meta["uid"]):
                current_job = None  # a leftover of an earlier CR with this name; creating ours will wait
            if current_job is not None and job_finished(current_job):
                pods = await self.kube.job_pods(namespace, current.job_name)
                result, problems = read_result(current_job, pods, current.key)
                for problem in problems:
                    log.warning("%s/%s: %s", namespace, name, problem)
                    self.observer.error("result")
        queue = queue_name(spec, self.settings)
        queue_events: list[queueing.QueueEvent] = []
        if status is not None and current_job is not None:
            # Before deciding, so a Job admitted and finished between two passes still has its wait split off.
            queue_events += queueing.observe_job(
                status, suspended=job_suspended(current_job) and result is None,
                started=(current_job.get("status") or {}).get("startTime"), now=now, queue=queue)

        if job_missing and status is not None:
            decision = sm.job_deleted(spec, status, campaign=name, namespace=namespace, now=now,
                                      generation=generation)
        else:
            decision = sm.decide(spec, status, result, campaign=name, namespace=namespace, now=now,
                                 generation=generation)
        new_status = decision.status
        self._spec_conditions(new_status, rejected, now, generation)

        created: str | None = None
        if isinstance(decision.action, sm.RunStage):
            action = decision.action
            already = current_job is not None and current is not None and action.record.job_name == current.job_name
            if not already:
                try:
                    created = await self._ensure_job(cr, spec, action)
                except ApiError as exc:
                    exc.attempted = new_status  # type: ignore[attr-defined]  (read by reconcile)
                    raise
                if created is not None and queue:
                    new_events = queueing.observe_job(new_status, suspended=True, started=None, now=now, queue=queue)
                    queue_events += new_events
        queueing.refresh(new_status)

        patch = merge_patch(raw_status, new_status.to_wire(), _STATUS_KEYS)
        if patch:
            await self.kube.patch_campaign_status(namespace, name, patch)
        for event in (*decision.events, *queue_events):
            self.emit(cr, event.type, event.reason, event.message)
        if rejected and self._newly_rejected(raw_status, rejected):
            self.emit(cr, EventType.warning, Reason.spec_change_rejected,
                      f"{', '.join(rejected)} cannot change while the campaign runs; keeping the original values")

        self.observer.transitions(namespace, name, status, new_status, result)
        self.observer.observe(namespace, name, spec, new_status)
        return Outcome(new_status.phase.value, created, bool(patch))

    async def _invalid(self, cr: dict[str, Any], raw_status: dict[str, Any], status: CampaignStatus | None,
                       exc: Exception, now: datetime, generation: int | None) -> Outcome:
        meta = cr["metadata"]
        new_status = sm.invalid_spec(status, exc, now, generation)
        patch = merge_patch(raw_status, new_status.to_wire(), _STATUS_KEYS)
        if patch:
            await self.kube.patch_campaign_status(meta["namespace"], meta["name"], patch)
        if raw_status.get("message") != new_status.message:
            self.emit(cr, EventType.warning, Reason.invalid_spec, str(exc))
            self.observer.error("invalid_spec")
        self.observer.observe(meta["namespace"], meta["name"], None, new_status)
        return Outcome(new_status.phase.value, None, bool(patch))

    @staticmethod
    def _spec_conditions(status: CampaignStatus, rejected: list[str], now: datetime,
                         generation: int | None) -> None:
        ready = status.condition(ConditionType.ready)
        if ready is not None and ready.status == "False" and ready.reason == Reason.invalid_spec:
            status.set_condition(ConditionType.ready, True, Reason.spec_valid, "spec accepted", now, generation)
            status.message = f"running {status.stage}" if status.stage else ""
        if rejected:
            status.set_condition(ConditionType.spec_change_rejected, True, Reason.pinned_field_changed,
                                 f"{', '.join(rejected)} cannot change while the campaign runs; "
                                 "the campaign keeps the original values", now, generation)
        elif status.condition(ConditionType.spec_change_rejected) is not None:
            status.set_condition(ConditionType.spec_change_rejected, False, Reason.spec_consistent,
                                 "pinned fields match the running campaign", now, generation)
        status.observed_generation = generation

    @staticmethod
    def _newly_rejected(raw_status: dict[str, Any], rejected: list[str]) -> bool:
        for cond in raw_status.get("conditions") or []:
            if cond.get("type") == ConditionType.spec_change_rejected and cond.get("status") == "True":
                return not all(field in cond.get("message", "") for field in rejected)
        return True

    async def _ensure_job(self, cr: dict[str, Any], spec: CampaignSpec, action: sm.RunStage) -> str | None:
        """Create the stage's Job; on 409 adopt it if it is ours. Returns the name if it was created."""
        meta = cr["metadata"]
        job = build_job(config=action.config, record=action.record, resources=action.resources, spec=spec,
                        settings=self.settings)
        kopf.adopt(job, owner=cr)  # ownerReferences: deleting the CR garbage-collects its Jobs and Pods
        try:
            await self.kube.create_job(meta["namespace"], job)
            return action.record.job_name
        except Conflict:
            existing = await self.kube.get_job(meta["namespace"], action.record.job_name)
            if existing is not None and owned_by(existing, meta["uid"]):
                return None  # created by an earlier pass (before a restart): adopt it
            existing_meta = (existing or {}).get("metadata", {})
            owner = existing_meta.get("labels", {}).get(LABEL_CAMPAIGN)
            self.observer.error("conflict")
            message = (f"Job {action.record.job_name} exists but is not owned by this ConsistencyTraining "
                       f"(campaign label {owner!r})")
            if existing is not None and not existing_meta.get("ownerReferences") and \
                    not existing_meta.get("deletionTimestamp"):
                # Nothing owns it, so no garbage collector will ever free the name: waiting cannot help.
                conflict = Conflict(409, "AlreadyExists", f"{message} and nothing will remove it", "create")
                conflict.resolvable = False
                raise conflict from None
            raise kopf.TemporaryError(f"{message}; waiting for it to be garbage-collected", delay=15) from None

