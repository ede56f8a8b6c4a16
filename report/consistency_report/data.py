"""Gather what the campaign report shows from the status and the evaluate stages' full reports.

Rates are recounted from per-problem rows (not taken from the rounded summaries) so the report can
attach exact counts and Wilson 95% intervals to every number.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from consistency_core.endpoints import Change, domain_means, paired_family
from consistency_core.names import parse_rfc3339
from consistency_core.spec import CampaignSpec
from consistency_core.stats import Rate, wilson
from consistency_core.status import BASELINE, CampaignStatus, EvaluationRecord, TrainingPhase


@dataclass
class EvalView:
    label: str  # "baseline", "1B.1 i1", "1B.2"
    record: EvaluationRecord
    consistency: Rate | None = None
    accuracy: dict[str, Rate] = field(default_factory=dict)  # greedy accuracy per domain
    strata: dict[str, dict[str, Rate]] = field(default_factory=dict)  # "math/easy" -> {accuracy, consistency}
    domain_consistency: dict[str, Rate] = field(default_factory=dict)  # per domain, in the domain's sense
    pass_at_1: dict[str, float] = field(default_factory=dict)  # unbiased, from the k samples
    graded: dict[str, dict[str, float]] = field(default_factory=dict)  # domain -> graded measure means
    comparison: dict[str, Any] | None = None
    report_uri: str | None = None
    error: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StageView:
    key: str
    phase: str
    iteration: int
    attempt: int
    outcome: str
    seconds: float | None
    gpu_hours: float
    usd: float
    message: str


@dataclass
class ReportData:
    name: str
    namespace: str
    status: CampaignStatus
    evaluations: list[EvalView]
    stages: list[StageView]
    spec: CampaignSpec

    @property
    def before(self) -> EvalView | None:
        return next((e for e in self.evaluations if e.record.phase == BASELINE), None)

    @property
    def after(self) -> EvalView | None:
        rest = [e for e in self.evaluations if e.record.phase != BASELINE]
        return rest[-1] if rest else None

    def before_after(self) -> dict[str, int] | None:
        """Per-problem transitions from the baseline to the final model (the evaluate stages compare
        each model with its own reference; this is the whole campaign's)."""
        before, after = self.before, self.after
        if before is None or after is None or not before.rows or not after.rows:
            return None
        return transitions(before.rows, after.rows)

    def paired_changes(self) -> dict[str, Change]:
        """Baseline -> final model on the problems both evaluated, each figure as a paired comparison
        (yes/no figures: Newcombe + McNemar; graded: seeded bootstrap + Wilcoxon)."""
        before, after = self.before, self.after
        if before is None or after is None or not before.rows or not after.rows:
            return {}
        return paired_family(before.rows, after.rows)

    @property
    def primary_figure(self) -> str:
        return self.spec.evaluation.primary_endpoint.figure

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds or 0.0 for s in self.stages)


def label_of(record: EvaluationRecord) -> str:
    if record.phase == BASELINE:
        return BASELINE
    return f"{record.phase} i{record.iteration}" if record.phase == TrainingPhase.quick_fix else str(record.phase)


def rates_from_rows(rows: list[dict[str, Any]]) -> tuple[Rate, dict[str, Rate], dict[str, dict[str, Rate]]]:
    """(consistency, accuracy per domain, {domain/stratum: {accuracy, consistency}}) from per-problem rows."""
    consistency = wilson(sum(bool(r.get("consistent")) for r in rows), len(rows))
    graded: dict[str, list[bool]] = defaultdict(list)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("greedyCorrect") is not None:
            graded[row["domain"]].append(bool(row["greedyCorrect"]))
        groups[f"{row['domain']}/{row.get('stratum', 'all')}"].append(row)
    accuracy = {d: wilson(sum(v), len(v)) for d, v in sorted(graded.items())}
    strata = {}
    for key, members in sorted(groups.items()):
        marks = [bool(r["greedyCorrect"]) for r in members if r.get("greedyCorrect") is not None]
        strata[key] = {"consistency": wilson(sum(bool(r.get("consistent")) for r in members), len(members))}
        if marks:
            strata[key]["accuracy"] = wilson(sum(marks), len(marks))
    return consistency, accuracy, strata


def domain_figures(rows: list[dict[str, Any]]) -> tuple[dict[str, Rate], dict[str, float]]:
    """Consistency per domain (Wilson) and the unbiased pass@1 from the k samples (mean share of correct
    samples per problem) per domain, from per-problem rows."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["domain"]].append(row)
    consistency = {d: wilson(sum(bool(r.get("consistent")) for r in g), len(g)) for d, g in sorted(groups.items())}
    pass1 = {}
    for d, g in sorted(groups.items()):
        shares = [r["samplesCorrect"] / r["samplesGraded"] for r in g if r.get("samplesGraded")]
        if shares:
            pass1[d] = sum(shares) / len(shares)
    return consistency, pass1


def graded_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per domain: the graded measure means, maj@k (share of problems whose majority answer is right) and
    the cut-off answers without a final answer, from per-problem rows."""
    table = domain_means(rows)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["domain"]].append(row)
    for domain, members in groups.items():
        marks = [bool(r["majorityCorrect"]) for r in members if r.get("majorityCorrect") is not None]
        entry = table.setdefault(domain, {})
        if marks:
            entry["majorityAccuracy"] = sum(marks) / len(marks)
        if any("cutOffUnanswered" in r for r in members):
            entry["cutOffUnanswered"] = sum(int(r.get("cutOffUnanswered") or 0) for r in members)
    return dict(sorted(table.items()))


def transitions(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, int]:
    old = {r["problemId"]: bool(r.get("success")) for r in before}
    counts = {"matched": 0, "failureToSuccess": 0, "successToFailure": 0, "stillFailure": 0, "stillSuccess": 0}
    for row in after:
        if row["problemId"] not in old:
            continue
        was, now = old[row["problemId"]], bool(row.get("success"))
        key = {(False, True): "failureToSuccess", (True, False): "successToFailure",
               (False, False): "stillFailure", (True, True): "stillSuccess"}[(was, now)]
        counts["matched"] += 1
        counts[key] += 1
    return counts


def _eval_view(record: EvaluationRecord, store: Any) -> EvalView:
    view = EvalView(label=label_of(record), record=record, report_uri=record.report)
    if store is None or not record.report:
        view.error = "no full report recorded"
        return view
    try:
        report = store.read_json(record.report)
        rows_uri = report.get("perProblemUri")
        rows = store.read_jsonl(rows_uri) if rows_uri else []
    except Exception as exc:  # the report must still render what the status knows
        view.error = f"cannot read {record.report}: {exc}"
        return view
    view.rows = rows
    if rows:
        view.consistency, view.accuracy, view.strata = rates_from_rows(rows)
        view.domain_consistency, view.pass_at_1 = domain_figures(rows)
        view.graded = graded_table(rows)
    view.comparison = report.get("comparison")
    return view


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (parse_rfc3339(end) - parse_rfc3339(start)).total_seconds()


def gather(name: str, namespace: str, spec: CampaignSpec, status: CampaignStatus, store: Any) -> ReportData:
    evaluations = [_eval_view(r, store) for r in status.evaluations]
    stages = []
    for s in status.stages:
        seconds = s.result.get("seconds") if isinstance(s.result.get("seconds"), int | float) else None
        stages.append(StageView(
            key=s.key, phase=s.phase.value, iteration=s.iteration, attempt=s.attempt, outcome=s.outcome.value,
            seconds=seconds if seconds is not None else _seconds(s.start_time, s.end_time),
            gpu_hours=s.gpu_hours, usd=round(s.gpu_hours * spec.budget.gpu_hour_usd, 4), message=s.message,
        ))
    return ReportData(name=name, namespace=namespace, status=status, evaluations=evaluations, stages=stages,
                      spec=spec)
