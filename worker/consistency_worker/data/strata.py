"""Difficulty strata and seeded stratified sampling.

Strata: GSM8K-style math by the number of solution steps (non-empty lines before ``####``): easy 0-2,
medium 3-5, hard 6+. Code by the reference solution's length in non-empty, non-comment lines: easy <= 4,
medium 5-9, hard 10+ (roughly 40/40/20 on MBPP, a usable proxy for how much a model must get right).
Reasoning (MMLU) has no difficulty signal: its subject when the source names one, else "all".
Problems without a reference solution: "all".
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction

from consistency_worker.data.problems import Problem

log = logging.getLogger(__name__)

def gsm8k_steps(solution: str) -> int:
    """Number of non-empty lines before the ``####`` line of a worked solution."""
    body = solution.split("####", 1)[0]
    return sum(1 for line in body.splitlines() if line.strip())


def math_stratum(solution: str | None) -> str:
    if not solution or "####" not in solution:
        return "all"
    steps = gsm8k_steps(solution)
    return "easy" if steps <= 2 else "medium" if steps <= 5 else "hard"


def code_stratum(solution: str | None) -> str:
    if not solution:
        return "all"
    lines = sum(1 for line in solution.splitlines() if line.strip() and not line.strip().startswith("#"))
    return "easy" if lines <= 4 else "medium" if lines <= 9 else "hard"


def by_stratum(problems: Sequence[Problem]) -> dict[str, list[Problem]]:
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.stratum, []).append(p)
    return groups


def allocate(sizes: Mapping[str, int], count: int, weights: Mapping[str, float] | None = None) -> dict[str, int]:
    """How many to draw per stratum: proportional to ``weights`` (default: the sizes), never more than a
    stratum holds (the surplus goes to the others), exactly ``count`` in total (largest remainder,
    ties by stratum name)."""
    if count < 0:
        raise ValueError(f"sample count must be >= 0, got {count}")
    total = sum(sizes.values())
    if count > total:
        raise ValueError(f"cannot sample {count} problems from {total}")
    if weights is not None and not any(weights.get(s, 0) > 0 and n > 0 for s, n in sizes.items()):
        log.warning("stratum weights %s match none of the strata %s; sampling proportionally",
                    dict(weights), sorted(sizes))
        weights = None
    w = {s: Fraction(n) if weights is None else Fraction(weights.get(s, 0.0)) for s, n in sizes.items()}
    if any(v < 0 for v in w.values()):
        raise ValueError(f"stratum weights must be >= 0: {dict(weights or {})}")
    capacity = sum(n for s, n in sizes.items() if w[s] > 0)
    if count > capacity:
        raise ValueError(f"cannot sample {count} problems: strata with positive weight hold only {capacity}")
    alloc = dict.fromkeys(sizes, 0)
    open_strata = {s for s in sizes if w[s] > 0 and sizes[s] > 0}
    remaining = count
    # Water-filling: strata whose proportional share exceeds their size are filled and dropped.
    while True:
        wsum = sum(w[s] for s in open_strata)
        share = {s: remaining * w[s] / wsum for s in open_strata} if wsum else {}
        full = {s for s in open_strata if share[s] >= sizes[s]}
        if not full:
            break
        for s in full:
            alloc[s] = sizes[s]
            remaining -= sizes[s]
        open_strata -= full
    floors = {s: int(share[s]) for s in open_strata}
    for s, n in floors.items():
        alloc[s] = n
    left = remaining - sum(floors.values())
    for s in sorted(open_strata, key=lambda s: (-(share[s] - floors[s]), s))[:left]:
        alloc[s] += 1
    return alloc


def stratified_sample(problems: Sequence[Problem], count: int, weights: Mapping[str, float] | None = None,
                      seed: int = 0) -> list[Problem]:
    """Exactly ``count`` problems drawn per stratum as ``allocate`` says; the same for a seed whatever
    the input order; returned in input order."""
    groups = by_stratum(problems)
    alloc = allocate({s: len(g) for s, g in groups.items()}, count, weights)
    rng = random.Random(seed)
    chosen: set[str] = set()
    for stratum in sorted(groups):
        pool = sorted(groups[stratum], key=lambda p: p.id)
        chosen.update(p.id for p in rng.sample(pool, alloc[stratum]))
    return [p for p in problems if p.id in chosen]
