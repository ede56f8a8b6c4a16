"""Paired before/after statistics: exact McNemar and Newcombe's paired interval."""

from __future__ import annotations

import math
import random

import pytest
from consistency_core.stats import mcnemar_exact, paired, wilson


def test_mcnemar_exact_known_values() -> None:
    # 1 of 10 changed problems got worse: 2 * P(X <= 1 | Bin(10, 1/2)) = 2 * 11 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 1) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_counts_and_interval() -> None:
    pairs = [(True, True)] * 50 + [(False, True)] * 12 + [(True, False)] * 3 + [(False, False)] * 35
    result = paired(pairs)
    assert (result.both, result.better, result.worse, result.neither, result.n) == (50, 12, 3, 35, 100)
    assert result.difference == pytest.approx(0.09)
    assert result.low < 0.09 < result.high and result.low > 0  # 12 vs 3 discordant: a real gain
    assert result.p_value == pytest.approx(mcnemar_exact(3, 12))
    # narrower than the unpaired Wilson intervals imply: pairing removes the shared variation
    after, before = wilson(62, 100), wilson(53, 100)
    assert result.high - result.low < (after.high - after.low) + (before.high - before.low)
    assert "+9.0 pp" in result.text() and "12 better, 3 worse of 100" in result.text()
    same = paired([(True, True)] * 20 + [(False, False)] * 20)
    assert same.difference == 0 and same.p_value == 1.0 and same.low < 0 < same.high
    assert paired([]).text() == "n/a"


def test_paired_interval_matches_wald_on_large_samples() -> None:
    pairs = [(True, True)] * 4000 + [(False, True)] * 900 + [(True, False)] * 600 + [(False, False)] * 4500
    result = paired(pairs)
    n, b, c = 10000, 600, 900
    se = math.sqrt(b + c - (c - b) ** 2 / n) / n
    assert result.low == pytest.approx(0.03 - 1.96 * se, abs=2e-3)
    assert result.high == pytest.approx(0.03 + 1.96 * se, abs=2e-3)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time() -> None:
    """1,000 simulated before/after evaluations of 150 correlated problems (true accuracy 0.40 -> 0.48)."""
    rng = random.Random(5)
    covered = 0
    for _ in range(1000):
        pairs = []
        for _ in range(150):
            before = rng.random() < 0.40
            # a right answer mostly stays right; some wrong ones become right (P(after) = 0.48)
            after = rng.random() < (0.9 if before else (0.48 - 0.4 * 0.9) / 0.6)
            pairs.append((before, after))
        r = paired(pairs)
        covered += r.low <= 0.08 <= r.high
    assert 0.93 <= covered / 1000 <= 0.975
