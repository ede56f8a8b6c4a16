"""Prometheus metrics of the control plane.

The family names below are a contract: the Helm chart's Grafana dashboard and alert rules query
them, and the packaging tests enumerate ``FAMILY_NAMES`` / ``build_metrics()`` to check that.
Names follow Prometheus conventions (base units such as seconds, counters ending in ``_total``);
``promtool check metrics`` on a scrape enforces them in tests/packaging/test_promtool.py.

Gauges that describe a campaign (evaluation ratios, cost, budget, running stage) are recomputed from
the CR status on every reconcile, so they are right again right after an operator restart.  Counters
count transitions the operator records (once each, guarded by the status), so they start from zero
after a restart like any Prometheus counter.

Label sets known in advance (stages, phases, outcomes, error kinds) are created at zero when the
operator starts (``initialise``), and a campaign's counters when it is first seen: Prometheus' rate()
and increase() need a sample before the first increment, or that increment is never seen (a stage that
runs once a day, a first failed Job would stay invisible to the dashboard and the alerts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consistency_core.spec import StageName
from consistency_core.status import CampaignPhase, TrainingPhase
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CAMPAIGN = ("namespace", "campaign")
EVAL = ("namespace", "campaign", "phase", "iteration")
PRIMARY = (*EVAL, "endpoint", "bound")
PRIMARY_BOUNDS = {"estimate": "difference", "low": "low", "high": "high"}

# Exposed sample names (counters get their `_total` suffix from the client library).
FAMILY_NAMES: tuple[str, ...] = (
    "consistency_campaigns",
    "consistency_campaign_phase",
    "consistency_stage_duration_seconds",
    "consistency_job_outcomes_total",
    "consistency_reconcile_errors_total",
    "consistency_evaluation_consistency_ratio",
    "consistency_evaluation_mean_agreement_ratio",
    "consistency_evaluation_accuracy_ratio",
    "consistency_evaluation_pairwise_agreement_ratio",
    "consistency_evaluation_primary_endpoint_change_ratio",
    "consistency_examples_produced_total",
    "consistency_campaign_gpu_seconds",
    "consistency_campaign_cost_usd",
    "consistency_campaign_budget_usd",
    "consistency_stage_start_timestamp_seconds",
    "consistency_stage_deadline_seconds",
    "consistency_stage_forecast_seconds",
    "consistency_stage_measured_seconds",
)

# Stages run from minutes to a day; the buckets span that range.
DURATION_BUCKETS = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 57600, 86400)

CAMPAIGN_PHASES = tuple(p.value for p in CampaignPhase)
TRAINING_PHASES = tuple(p.value for p in TrainingPhase)
JOB_OUTCOMES = ("succeeded", "failed", "retried")
RECONCILE_ERROR_KINDS = ("api", "conflict", "invalid_spec", "result", "status")


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    campaigns: Gauge
    campaign_phase: Gauge
    stage_duration: Histogram
    job_outcomes: Counter
    reconcile_errors: Counter
    consistency: Gauge
    mean_agreement: Gauge
    accuracy: Gauge
    pairwise_agreement: Gauge
    primary_change: Gauge
    examples: Counter
    gpu_seconds: Gauge
    cost_usd: Gauge
    budget_usd: Gauge
    stage_start: Gauge
    stage_deadline: Gauge
    stage_forecast: Gauge
    stage_measured: Gauge

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def initialise(self) -> None:
        """Create the label sets known in advance at zero (see the module docstring for why)."""
        for phase in CAMPAIGN_PHASES:
            self.campaigns.labels(phase=phase)
        for stage in StageName:
            for phase in TRAINING_PHASES:
                self.stage_duration.labels(stage=stage.value, phase=phase)
            for outcome in JOB_OUTCOMES:
                self.job_outcomes.labels(stage=stage.value, outcome=outcome)
        for kind in RECONCILE_ERROR_KINDS:
            self.reconcile_errors.labels(kind=kind)


def build_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Create every family on a registry (a fresh one by default, so tests and tools can enumerate)."""
    r = registry if registry is not None else CollectorRegistry()
    return Metrics(
        registry=r,
        campaigns=Gauge("consistency_campaigns", "Campaigns by phase.", ["phase"], registry=r),
        campaign_phase=Gauge("consistency_campaign_phase",
                             "1 for the campaign's status phase, 0 for the other phases.",
                             [*CAMPAIGN, "phase"], registry=r),
        stage_duration=Histogram("consistency_stage_duration_seconds", "Wall time of finished stage Jobs.",
                                 ["stage", "phase"], buckets=DURATION_BUCKETS, registry=r),
        job_outcomes=Counter("consistency_job_outcomes_total",
                             "Finished stage Jobs by outcome (succeeded, failed, retried).",
                             ["stage", "outcome"], registry=r),
        reconcile_errors=Counter("consistency_reconcile_errors_total",
                                 "Reconcile errors by kind (api, conflict, invalid_spec, result, status).",
                                 ["kind"], registry=r),
        consistency=Gauge("consistency_evaluation_consistency_ratio",
                          "Share of evaluation problems whose samples all agree.", list(EVAL), registry=r),
        mean_agreement=Gauge("consistency_evaluation_mean_agreement_ratio",
                             "Mean share of samples on the modal answer.", list(EVAL), registry=r),
        accuracy=Gauge("consistency_evaluation_accuracy_ratio", "Greedy accuracy per domain.",
                       [*EVAL, "domain"], registry=r),
        pairwise_agreement=Gauge("consistency_evaluation_pairwise_agreement_ratio",
                                 "Mean pairwise agreement per domain: the chance that two of a problem's samples "
                                 "give the same answer.", [*EVAL, "domain"], registry=r),
        primary_change=Gauge("consistency_evaluation_primary_endpoint_change_ratio",
                             "Paired change of the declared primary endpoint, baseline -> this evaluation; bound: "
                             "estimate, or low / high of its 95% interval.", [*EVAL, "endpoint", "bound"],
                             registry=r),
        examples=Counter("consistency_examples_produced_total", "Training examples produced by distill.",
                         [*CAMPAIGN, "phase"], registry=r),
        gpu_seconds=Gauge("consistency_campaign_gpu_seconds", "GPU time spent by a campaign (GPU-seconds).",
                          list(CAMPAIGN), registry=r),
        cost_usd=Gauge("consistency_campaign_cost_usd", "USD spent by a campaign.", list(CAMPAIGN), registry=r),
        budget_usd=Gauge("consistency_campaign_budget_usd", "Budget of a campaign (spec.budget.maxUsd).",
                         list(CAMPAIGN), registry=r),
        stage_start=Gauge("consistency_stage_start_timestamp_seconds",
                          "Start time of the running stage (unix seconds).", [*CAMPAIGN, "stage"], registry=r),
        stage_deadline=Gauge("consistency_stage_deadline_seconds",
                             "activeDeadlineSeconds of the running stage.", [*CAMPAIGN, "stage"], registry=r),
        stage_forecast=Gauge("consistency_stage_forecast_seconds",
                             "Expected wall time of a stage's latest attempt, forecast when it started from what "
                             "earlier stages measured.", [*CAMPAIGN, "stage"], registry=r),
        stage_measured=Gauge("consistency_stage_measured_seconds",
                             "Wall time of a stage's latest finished attempt.", [*CAMPAIGN, "stage"], registry=r),
    )


def remove_labelled(gauge: Gauge | Counter, match: dict[str, str], label_names: Iterable[str]) -> None:
    """Drop every series of ``gauge`` whose labels include ``match`` (e.g. a deleted campaign)."""
    names = list(label_names)
    for values in list(_series(gauge)):
        labels = dict(zip(names, values, strict=True))
        if all(labels.get(k) == v for k, v in match.items()):
            gauge.remove(*values)


def _series(metric: Gauge | Counter) -> Iterable[tuple[str, ...]]:
    # prometheus_client keeps children in a private dict; reading keys is the only way to enumerate.
    with metric._lock:
        return list(metric._metrics.keys())


METRICS = build_metrics()
