"""Feeds the Prometheus families from campaign statuses (gauges) and recorded transitions (counters)."""

from __future__ import annotations

from consistency_core.names import parse_rfc3339
from consistency_core.spec import CampaignSpec, StageName
from consistency_core.stage_wire import StageResult
from consistency_core.status import CampaignStatus, StageOutcome, StageRecord

from consistency_operator.metrics import (
    CAMPAIGN,
    CAMPAIGN_PHASES,
    EVAL,
    PRIMARY,
    PRIMARY_BOUNDS,
    TRAINING_PHASES,
    Metrics,
    remove_labelled,
)


class CampaignObserver:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._phases: dict[tuple[str, str], str] = {}
        self.m.initialise()

    def error(self, kind: str) -> None:
        self.m.reconcile_errors.labels(kind=kind).inc()

    def _recount(self) -> None:
        counts = dict.fromkeys(CAMPAIGN_PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.m.campaigns.labels(phase=phase).set(n)

    def observe(self, namespace: str, name: str, spec: CampaignSpec | None, status: CampaignStatus) -> None:
        """Set every per-campaign gauge from the status (idempotent; right again after a restart)."""
        self._phases[(namespace, name)] = status.phase.value
        self._recount()
        ids = {"namespace": namespace, "campaign": name}
        for phase in CAMPAIGN_PHASES:
            self.m.campaign_phase.labels(**ids, phase=phase).set(1 if phase == status.phase.value else 0)
        for phase in TRAINING_PHASES:
            # At zero before distill first counts, so increase() sees the first examples too.
            self.m.examples.labels(**ids, phase=phase)
        for ev in status.evaluations:
            labels = {**ids, "phase": str(ev.phase), "iteration": str(ev.iteration)}
            if ev.consistency is not None:
                self.m.consistency.labels(**labels).set(ev.consistency)
            if ev.mean_agreement is not None:
                self.m.mean_agreement.labels(**labels).set(ev.mean_agreement)
            for domain, value in ev.accuracy.items():
                self.m.accuracy.labels(**labels, domain=domain).set(value)
            for domain, value in ev.pairwise_agreement.items():
                self.m.pairwise_agreement.labels(**labels, domain=domain).set(value)
            if ev.primary:
                endpoint = str(ev.primary.get("figure", "primary"))
                for bound, key in PRIMARY_BOUNDS.items():
                    if isinstance(ev.primary.get(key), int | float):
                        self.m.primary_change.labels(**labels, endpoint=endpoint, bound=bound).set(ev.primary[key])
        # The status counts GPU-hours for people; Prometheus wants the base unit.
        self.m.gpu_seconds.labels(**ids).set(status.cost.gpu_hours * 3600)
        self.m.cost_usd.labels(**ids).set(status.cost.usd)
        if spec is not None and spec.budget.max_usd is not None:
            self.m.budget_usd.labels(**ids).set(spec.budget.max_usd)
        elif spec is not None:
            remove_labelled(self.m.budget_usd, ids, CAMPAIGN)
        # Forecast against actual, per stage key (its latest attempt): the dashboard's forecast-error view.
        for record in status.stages:
            labels = {**ids, "stage": record.key}
            if record.expected_seconds or record.prior_seconds:
                self.m.stage_forecast.labels(**labels).set(record.expected_seconds)
            if record.outcome in (StageOutcome.succeeded, StageOutcome.failed) and record.seconds:
                self.m.stage_measured.labels(**labels).set(record.seconds)
        # Start/deadline exist only for the running stage, so "past deadline" alerts cannot fire late.
        remove_labelled(self.m.stage_start, ids, (*CAMPAIGN, "stage"))
        remove_labelled(self.m.stage_deadline, ids, (*CAMPAIGN, "stage"))
        current = status.current()
        # A queued stage has not started: its deadline (and the over-deadline alert) counts from admission.
        if current is not None and current.start_time and not status.finished and \
                current.outcome != StageOutcome.queued:
            labels = {**ids, "stage": current.key}
            self.m.stage_start.labels(**labels).set(parse_rfc3339(current.start_time).timestamp())
            if spec is not None:
                deadline = spec.resources.stages.for_stage(current.stage).deadline_seconds
                self.m.stage_deadline.labels(**labels).set(deadline)

    def transitions(self, namespace: str, name: str, old: CampaignStatus | None, new: CampaignStatus,
                    result: StageResult | None) -> None:
        """Count stage records that finished in this pass (each exactly once: the status guards it)."""
        before = {(s.key, s.attempt): s.outcome for s in (old.stages if old else [])}
        for record in new.stages:
            if record.outcome in (StageOutcome.running, StageOutcome.queued):
                continue
            if before.get((record.key, record.attempt)) not in (None, StageOutcome.running, StageOutcome.queued):
                continue
            self._finished(namespace, name, new, record, result)

    def _finished(self, namespace: str, name: str, status: CampaignStatus, record: StageRecord,
                  result: StageResult | None) -> None:
        stage = record.stage.value
        if record.outcome == StageOutcome.succeeded:
            outcome = "succeeded"
        elif any(s.key == record.key and s.attempt > record.attempt for s in status.stages):
            outcome = "retried"
        else:
            outcome = "failed"
        self.m.job_outcomes.labels(stage=stage, outcome=outcome).inc()
        seconds = result.seconds if result is not None and result.key == record.key else None
        if seconds is None and record.start_time and record.end_time:
            seconds = (parse_rfc3339(record.end_time) - parse_rfc3339(record.start_time)).total_seconds()
        if seconds is not None:
            self.m.stage_duration.labels(stage=stage, phase=record.phase.value).observe(max(seconds, 0.0))
        examples = record.result.get("metrics", {}).get("examples")
        if record.stage == StageName.distill and record.outcome == StageOutcome.succeeded and examples:
            self.m.examples.labels(namespace=namespace, campaign=name, phase=record.phase.value).inc(
                float(examples))

    def forget(self, namespace: str, name: str) -> None:
        self._phases.pop((namespace, name), None)
        self._recount()
        ids = {"namespace": namespace, "campaign": name}
        for gauge in (self.m.consistency, self.m.mean_agreement):
            remove_labelled(gauge, ids, EVAL)
        remove_labelled(self.m.accuracy, ids, (*EVAL, "domain"))
        remove_labelled(self.m.pairwise_agreement, ids, (*EVAL, "domain"))
        remove_labelled(self.m.primary_change, ids, PRIMARY)
        remove_labelled(self.m.examples, ids, (*CAMPAIGN, "phase"))
        for gauge in (self.m.gpu_seconds, self.m.cost_usd, self.m.budget_usd):
            remove_labelled(gauge, ids, CAMPAIGN)
        remove_labelled(self.m.campaign_phase, ids, (*CAMPAIGN, "phase"))
        for gauge in (self.m.stage_start, self.m.stage_deadline, self.m.stage_forecast, self.m.stage_measured):
            remove_labelled(gauge, ids, (*CAMPAIGN, "stage"))
