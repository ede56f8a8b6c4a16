"""Every paired before/after test of two evaluations, the declared primary endpoint among them, and the
Holm adjustment of the rest.

Works on the evaluate stage's per-problem rows (per_problem.jsonl). Yes/no figures (accuracy,
consistency, maj@k, success) use Newcombe + exact McNemar (consistency_core.stats); graded figures
(pairwise agreement, modal share, right / wrong agreement, self-consistency gap) use a seeded paired
bootstrap interval and the Wilcoxon signed-rank p (consistency_core.graded_stats). One test is declared
primary in the spec (evaluation.primaryEndpoint); a campaign runs many paired tests, so a p < 0.05 among
them says little unless the others are adjusted for multiplicity: each gets a Holm-adjusted p ("pHolm")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from consistency_core.graded_stats import BOOTSTRAP_SEED, GradedPaired, graded_paired, holm
from consistency_core.spec import PrimaryEndpoint
from consistency_core.stats import Paired, paired_from_rows

# Figure label -> per-problem row field of the graded measures.
GRADED_FIELDS: dict[str, str] = {
    "pairwise agreement": "pairwiseAgreement",
    "modal share": "modalShare",
    "right agreement": "rightAgreement",
    "wrong agreement": "wrongAgreement",
    "self-consistency gap": "selfConsistencyGap",
}

Change = Paired | GradedPaired


def domain_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """{domain: {row field: mean over the problems where it is defined}} of the graded measures."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for field in GRADED_FIELDS.values():
            if row.get(field) is not None:
                sums[row["domain"]][field].append(float(row[field]))
    return {d: {f: round(sum(v) / len(v), 4) for f, v in fields.items()} for d, fields in sorted(sums.items())}


def graded_from_rows(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], *,
                     seed: int = BOOTSTRAP_SEED, only: str | None = None) -> dict[str, GradedPaired]:
    """{"<domain> <graded figure>": GradedPaired} over the problems in both row sets (``only``: just that
    figure, sparing the other figures' bootstrap)."""
    old = {r["problemId"]: r for r in before}
    out: dict[str, GradedPaired] = {}
    by_domain: dict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = defaultdict(list)
    for row in after:
        if row["problemId"] in old:
            by_domain[row["domain"]].append((old[row["problemId"]], row))
    for domain, matched in sorted(by_domain.items()):
        for label, field in GRADED_FIELDS.items():
            pairs = [(float(b[field]), float(a[field])) for b, a in matched
                     if b.get(field) is not None and a.get(field) is not None]
            if pairs and only in (None, f"{domain} {label}"):
                out[f"{domain} {label}"] = graded_paired(pairs, seed=seed)
    return out


def paired_family(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], *,
                  seed: int = BOOTSTRAP_SEED) -> dict[str, Change]:
    """Every paired test of ``after`` against ``before``: yes/no figures, then graded ones."""
    return {**paired_from_rows(before, after), **graded_from_rows(before, after, seed=seed)}


def adjusted(changes: Mapping[str, Change], primary: str | None) -> dict[str, float]:
    """Holm-adjusted p-values of every test except ``primary`` (the family the primary is not in)."""
    return holm({name: c.p_value for name, c in changes.items() if name != primary and c.n})


def family_json(changes: Mapping[str, Change], primary: str | None) -> dict[str, dict[str, float | int]]:
    """Wire form of a family: each test's figures, plus pHolm for every test but the primary."""
    p_holm = adjusted(changes, primary)
    out = {}
    for name, change in changes.items():
        entry = change.as_json()
        if name in p_holm:
            entry["pHolm"] = round(p_holm[name], 6)
        out[name] = entry
    return out


def primary_change(endpoint: PrimaryEndpoint, baseline: Sequence[Mapping[str, Any]],
                   final: Sequence[Mapping[str, Any]], *, seed: int = BOOTSTRAP_SEED) -> Change | None:
    """The primary endpoint, baseline -> final, or None when the rows do not measure it."""
    graded = endpoint.figure.removeprefix(f"{endpoint.domain} ") in GRADED_FIELDS
    changes = graded_from_rows(baseline, final, seed=seed, only=endpoint.figure) if graded else \
        paired_from_rows(baseline, final)
    change = changes.get(endpoint.figure)
    return change if change is not None and change.n else None

