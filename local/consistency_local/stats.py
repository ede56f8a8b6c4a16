"""Confidence intervals for the report: rates measured on a few hundred problems are noisy, and the
report must say how noisy."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
