"""Confidence intervals and tests for evaluation figures: rates measured on a few hundred problems are
noisy, and a report must say how noisy.

Before/after comparisons are paired (the same problems, the same seeds), so they use the paired design:
the difference of the two rates with Newcombe's score interval for paired proportions (Newcombe 1998,
method 10, built from the two Wilson intervals and the correlation of the pairs), and the exact McNemar
test, a two-sided binomial test on the discordant pairs alone (problems that changed), which the
unpaired Wilson intervals side by side cannot give."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    successes: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.total if self.total else float("nan")

    def text(self) -> str:
        if not self.total:
            return "n/a"
        return f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}] ({self.successes}/{self.total})"


def wilson(successes: int, total: int, z: float = Z95) -> Rate:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and behaves
    at 0 and n successes, which small demo evaluations hit."""
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes}/{total}")
    if total == 0:
        return Rate(0, 0, 0.0, 1.0)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # At 0 and n successes the exact bound is 0 or 1; floating point lands a hair inside it.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Rate(successes, total, low, high)


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: under "no change" each of the
    ``worse + better`` changed problems is equally likely to have gone either way (binomial, p = 1/2)."""
    if worse < 0 or better < 0:
        raise ValueError(f"discordant counts must be >= 0, got {worse}, {better}")
    n = worse + better
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(worse, better) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class Paired:
    """After minus before on the same problems. ``better``: problems wrong before and right after;
    ``worse``: the reverse; ``both``/``neither``: unchanged right/wrong."""

    both: int
    better: int
    worse: int
    neither: int
    low: float
    high: float
    p_value: float

    @property
    def n(self) -> int:
        return self.both + self.better + self.worse + self.neither

    @property
    def difference(self) -> float:
        return (self.better - self.worse) / self.n if self.n else float("nan")

    def text(self) -> str:
        if not self.n:
            return "n/a"
        return (f"{self.difference * 100:+.1f} pp [{self.low * 100:+.1f}, {self.high * 100:+.1f}], "
                f"McNemar p={self.p_value:.3g} ({self.better} better, {self.worse} worse of {self.n})")

    def as_json(self) -> dict[str, float | int]:
        return {"difference": round(self.difference, 4) if self.n else 0.0, "low": round(self.low, 4),
                "high": round(self.high, 4), "pValue": round(self.p_value, 6), "better": self.better,
                "worse": self.worse, "n": self.n}


def paired(pairs: Iterable[tuple[bool, bool]], z: float = Z95) -> Paired:
    """Paired difference (after - before) of ``(before, after)`` outcomes with a 95% interval and the
    exact McNemar p-value."""
    both = better = worse = neither = 0
    for before, after in pairs:
        if before and after:
            both += 1
        elif after:
            better += 1
        elif before:
            worse += 1
        else:
            neither += 1
    n = both + better + worse + neither
    p_value = mcnemar_exact(worse, better)
    if n == 0:
        return Paired(0, 0, 0, 0, -1.0, 1.0, p_value)
    after, before = wilson(both + better, n, z), wilson(both + worse, n, z)
    p1, p2 = after.value, before.value
    # Correlation of the paired outcomes, shrunk towards 0 as Newcombe prescribes (continuity term n/2).
    margins = (both + better) * (worse + neither) * (both + worse) * (better + neither)
    cross = both * neither - better * worse
    phi = 0.0
    if margins > 0:
        phi = (cross - n / 2 if cross > n / 2 else min(cross, 0)) / math.sqrt(margins)
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - after.low) ** 2 - 2 * phi * (p1 - after.low) * (before.high - p2)
                                + (before.high - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (p2 - before.low) ** 2 - 2 * phi * (p2 - before.low) * (after.high - p1)
                                 + (after.high - p1) ** 2))
    return Paired(both, better, worse, neither, max(-1.0, low), min(1.0, high), p_value)


def paired_from_rows(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, Paired]:
    """{"consistency", "<domain> accuracy", "<domain> consistency", "<domain> maj@k", "success": Paired}
    over the problems in both row sets: the per-problem rows (problemId, domain, greedyCorrect,
    consistent, majorityCorrect, success) of two evaluations."""
    old = {r["problemId"]: r for r in before}
    matched = [(old[r["problemId"]], r) for r in after if r["problemId"] in old]

    def flags(pairs: list[tuple[dict[str, Any], dict[str, Any]]], key: str) -> list[tuple[bool, bool]]:
        return [(bool(b[key]), bool(a[key])) for b, a in pairs if b.get(key) is not None and a.get(key) is not None]

    out: dict[str, Paired] = {}
    if matched:
        out["consistency"] = paired(flags(matched, "consistent"))
    for domain in sorted({a["domain"] for _, a in matched}):
        mine = [(b, a) for b, a in matched if a["domain"] == domain]
        graded = flags(mine, "greedyCorrect")
        if graded:
            out[f"{domain} accuracy"] = paired(graded)
        out[f"{domain} consistency"] = paired(flags(mine, "consistent"))
        majority = flags(mine, "majorityCorrect")
        if majority:
            out[f"{domain} maj@k"] = paired(majority)
    if matched:
        out["success"] = paired(flags(matched, "success"))
    return out
