"""Self-consistency: code normalisation, majority vote, agreement, failure criteria, aggregation.

Pure functions over already-graded samples; no model, no I/O.
"""

from __future__ import annotations

import ast
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


@dataclass
class GroupStats:
    n: int = 0
    greedy_correct: int = 0
    greedy_graded: int = 0
    majority_correct: int = 0
    majority_graded: int = 0
    consistent: int = 0
    agreement_sum: float = 0.0

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

    def as_dict(self) -> dict[str, float | int | None]:
        def rate(a: int, b: int) -> float | None:
            return a / b if b else None

        return {
            "n": self.n,
            "accuracy": rate(self.greedy_correct, self.greedy_graded),
            "majority_accuracy": rate(self.majority_correct, self.majority_graded),
            "consistency": rate(self.consistent, self.n),
            "mean_agreement": self.agreement_sum / self.n if self.n else None,
        }


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
