"""Paired before/after tests for graded per-problem measures (pairwise agreement, modal share, ...), and
the Holm adjustment for a family of paired tests.

A graded measure takes many values per problem (with k = 8 samples pairwise agreement moves in steps of
1/56), so a change shows long before unanimity (all k agree) moves. Before and after are measured on the
same problems with the same seeds, so the comparison is paired over problems:

- the mean difference with a paired bootstrap 95% interval: problems are resampled with replacement
  (seeded, so a rerun reports the same interval) and the 2.5th / 97.5th percentiles of the resampled
  mean differences are the bounds;
- the two-sided Wilcoxon signed-rank p-value of the per-problem differences (zero differences dropped,
  average ranks for ties): exact for up to 25 differences without ties, else the normal approximation
  with the tie-corrected variance and a continuity correction.

Pure Python: the control plane imports this module and carries no numpy."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_EXACT_MAX_N = 25
_DIGITS = 12  # differences equal to 12 decimals are ties (measures are ratios of small integers)


@dataclass(frozen=True)
class GradedPaired:
    """After minus before of a graded measure on the same problems: mean difference, paired bootstrap
    95% interval, Wilcoxon signed-rank p-value."""

    n: int
    before: float
    after: float
    low: float
    high: float
    p_value: float

    @property
    def difference(self) -> float:
        return self.after - self.before if self.n else float("nan")

    def text(self) -> str:
        if not self.n:
            return "n/a"
        return (f"{self.before:.3f} -> {self.after:.3f}: {self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}], "
                f"Wilcoxon p={self.p_value:.3g} (n={self.n})")

    def as_json(self) -> dict[str, float | int]:
        return {"difference": round(self.difference, 4) if self.n else 0.0, "low": round(self.low, 4),
                "high": round(self.high, 4), "pValue": round(self.p_value, 6), "n": self.n,
                "before": round(self.before, 4), "after": round(self.after, 4)}


def bootstrap_mean_ci(differences: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (one per problem)."""
    n = len(differences)
    if n == 0:
        raise ValueError("bootstrap of no differences")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = random.Random(seed)
    values = list(differences)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    return _quantile(means, tail), _quantile(means, 1.0 - tail)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (the usual "type 7" definition)."""
    at = q * (len(ordered) - 1)
    lo = math.floor(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that the differences are symmetric about 0."""
    nonzero = [round(d, _DIGITS) for d in differences if round(d, _DIGITS) != 0.0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    magnitudes = [abs(d) for d in nonzero]
    ranks = _ranks(magnitudes)
    w_plus = sum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0)
    tied = len(set(magnitudes)) < n
    if n <= _EXACT_MAX_N and not tied:
        return _exact_p(n, round(w_plus))
    mean = n * (n + 1) / 4
    groups: dict[float, int] = {}
    for m in magnitudes:
        groups[m] = groups.get(m, 0) + 1
    variance = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in groups.values()) / 48
    if variance <= 0:
        return 1.0
    deviation = max(abs(w_plus - mean) - 0.5, 0.0)  # continuity correction
    return min(1.0, math.erfc(deviation / math.sqrt(variance) / math.sqrt(2)))


def _exact_p(n: int, w_plus: int) -> float:
    """Exact two-sided p: under the null each rank's sign is a fair coin, so W+ is a sum over a random
    subset of 1..n; count subsets by sum."""
    top = n * (n + 1) // 2
    counts = [1] + [0] * top
    for rank in range(1, n + 1):
        for s in range(top, rank - 1, -1):
            counts[s] += counts[s - rank]
    total = 2**n
    low_tail = sum(counts[: w_plus + 1]) / total
    high_tail = sum(counts[w_plus:]) / total
    return min(1.0, 2 * min(low_tail, high_tail))


def graded_paired(pairs: Sequence[tuple[float, float]], *, resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = BOOTSTRAP_SEED) -> GradedPaired:
    """Paired comparison of ``(before, after)`` values of one graded measure, one pair per problem."""
    n = len(pairs)
    if n == 0:
        return GradedPaired(0, float("nan"), float("nan"), -1.0, 1.0, 1.0)
    differences = [a - b for b, a in pairs]
    low, high = bootstrap_mean_ci(differences, resamples=resamples, seed=seed)
    return GradedPaired(n=n, before=sum(b for b, _ in pairs) / n, after=sum(a for _, a in pairs) / n,
                        low=low, high=high, p_value=wilcoxon_signed_rank(differences))


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment (family-wise error): the i-th smallest of m p-values is multiplied by
    m - i + 1, and adjusted values never decrease along that order."""
    order = sorted(p_values, key=lambda k: (p_values[k], k))
    m = len(order)
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[key]))
        adjusted[key] = running
    return adjusted
