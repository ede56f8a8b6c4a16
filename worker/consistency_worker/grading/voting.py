"""Self-consistency: code normalisation, majority vote, agreement, failure criteria, aggregation.

Pure functions over already-graded samples; no model, no I/O.
"""

from __future__ import annotations

import ast
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def normalise_code(code: str) -> str:
    """Formatting- and comment-insensitive form of a program (its AST), for deduplicating targets.
    Unparseable code is returned stripped."""
    try:
        return ast.dump(ast.parse(code), annotate_fields=False)
    except SyntaxError:
        return code.strip()


@dataclass(frozen=True)
class Vote:
    """``answer``: the modal answer (None if no sample answered); ``agreement``: share of ALL samples
    on it; ``consistent``: every sample gave that same answer."""

    answer: str | None
    count: int
    total: int
    agreement: float
    consistent: bool
    distribution: dict[str, int] = field(default_factory=dict)


def majority_vote(answers: Sequence[str | None], *, prefer: str | None = None) -> Vote:
    """Majority vote over sampled answers. Ties: ``prefer`` (e.g. the greedy answer) if tied, else the
    answer seen first in sample order, so the result depends only on the samples."""
    total = len(answers)
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return Vote(answer=None, count=0, total=total, agreement=0.0, consistent=False)
    top = max(counts.values())
    tied = [a for a in dict.fromkeys(a for a in answers if a is not None) if counts[a] == top]
    winner = prefer if prefer in tied else tied[0]
    return Vote(answer=winner, count=top, total=total, agreement=top / total, consistent=top == total,
                distribution=dict(counts))


@dataclass(frozen=True)
class Failure:
    failed: bool
    reasons: tuple[str, ...]


def failure(greedy_correct: bool | None, vote: Vote, *, min_agreement: float = 0.3) -> Failure:
    """The 1B.2 failure criteria: a wrong greedy answer, or agreement below ``min_agreement``.
    ``greedy_correct`` None (no gold answer) only applies the agreement test."""
    reasons = []
    if greedy_correct is False:
        reasons.append("greedy answer wrong")
    if vote.agreement < min_agreement:
        reasons.append(f"agreement {vote.agreement:.2f} < {min_agreement:.2f}")
    return Failure(failed=bool(reasons), reasons=tuple(reasons))


@dataclass(frozen=True)
class Outcome:
    """One problem's graded samples, the unit the aggregation helpers count."""

    problem_id: str
    domain: str
    stratum: str
    vote: Vote
    greedy_correct: bool | None = None
    majority_correct: bool | None = None
    samples_correct: int = 0  # sampled answers that are right
    samples_graded: int = 0  # sampled answers with a gold verdict


@dataclass
class GroupStats:
    """Per-group counts. ``consistency``: share of problems whose k samples all give the same answer in
    the domain's sense (math: canonical number, reasoning: letter, code: returned values);
    ``consistency_given_correct``: the same among problems with at least one correct sample (for code
    this leaves out problems every sample fails, whose agreement says nothing about the skill);
    ``pass_at_1``: the unbiased pass@1 estimate from the k samples, mean over problems of c/k."""

    n: int = 0
    greedy_correct: int = 0
    greedy_graded: int = 0
    majority_correct: int = 0
    majority_graded: int = 0
    consistent: int = 0
    agreement_sum: float = 0.0
    any_correct: int = 0
    consistent_any_correct: int = 0
    pass1_sum: float = 0.0
    pass1_graded: int = 0

    def add(self, o: Outcome) -> None:
        self.n += 1
        self.consistent += o.vote.consistent
        self.agreement_sum += o.vote.agreement
        if o.greedy_correct is not None:
            self.greedy_graded += 1
            self.greedy_correct += o.greedy_correct
        if o.majority_correct is not None:
            self.majority_graded += 1
            self.majority_correct += o.majority_correct
        if o.samples_graded:
            self.pass1_graded += 1
            self.pass1_sum += pass_at_k(o.samples_graded, o.samples_correct, 1)
        if o.samples_correct:
            self.any_correct += 1
            self.consistent_any_correct += o.vote.consistent

    def as_dict(self) -> dict[str, float | int | None]:
        def rate(a: float, b: int) -> float | None:
            return a / b if b else None

        return {
            "n": self.n,
            "accuracy": rate(self.greedy_correct, self.greedy_graded),
            "majority_accuracy": rate(self.majority_correct, self.majority_graded),
            "pass_at_1": rate(self.pass1_sum, self.pass1_graded),
            "consistency": rate(self.consistent, self.n),
            "consistency_given_correct": rate(self.consistent_any_correct, self.any_correct),
            "problems_with_correct": self.any_correct,
            "mean_agreement": self.agreement_sum / self.n if self.n else None,
        }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).
    For k = 1 it is c / n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def aggregate(outcomes: Iterable[Outcome], *, key: str = "stratum") -> dict[str, dict[str, float | int | None]]:
    """Accuracy (greedy), majority accuracy, consistency rate and mean agreement per group; ``key`` is
    "stratum", "domain" or "domain/stratum". An "all" row covers everything."""
    groups: dict[str, GroupStats] = {}
    overall = GroupStats()
    for o in outcomes:
        name = {"stratum": o.stratum, "domain": o.domain, "domain/stratum": f"{o.domain}/{o.stratum}"}[key]
        groups.setdefault(name, GroupStats()).add(o)
        overall.add(o)
    result = {name: stats.as_dict() for name, stats in sorted(groups.items())}
    result["all"] = overall.as_dict()
    return result
