"""Graded self-consistency of one problem's k samples, beside unanimity ("all k agree").

For a model whose top answer gets share p of the samples, unanimity moves like p^k: at p = 0.3 -> 0.45 it
stays near 0 and no test sees the change. These measures move with p itself:

- pairwise agreement: the chance that two different samples give the same answer,
  sum over answer classes of c(c-1) / k(k-1); a sample without an answer (None: no number, no letter,
  or cut off before a final answer) agrees with nothing;
- modal share: the share of the k samples on the most common answer;
- right / wrong agreement: pairwise agreement split by whether the class is a right answer; they add up
  to pairwise agreement when every answer is graded (consensus on a wrong answer is not the goal);
- maj@k: the majority answer is right; pass@1: the share of right samples (c / k);
- self-consistency gap: maj@k - pass@1, which self-training on voted answers should close.

Pure functions; no model, no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GradedMeasures:
    """One problem's graded measures; None where undefined (fewer than two samples, or no gold answer)."""

    pairwise_agreement: float | None
    modal_share: float
    right_agreement: float | None
    wrong_agreement: float | None
    unanswered: int  # samples without an answer

    def as_row(self) -> dict[str, float | int | None]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {"pairwiseAgreement": r(self.pairwise_agreement), "modalShare": r(self.modal_share),
                "rightAgreement": r(self.right_agreement), "wrongAgreement": r(self.wrong_agreement),
                "unanswered": self.unanswered}


def graded_measures(answers: Sequence[str | None], correct: Sequence[bool | None]) -> GradedMeasures:
    """Measures of k sampled ``answers`` with their verdicts (``correct``: None when ungraded)."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} verdicts")
    k = len(answers)
    counts = Counter(a for a in answers if a is not None)
    unanswered = k - sum(counts.values())
    modal = max(counts.values()) / k if counts and k else 0.0
    if k < 2:
        return GradedMeasures(None, modal, None, None, unanswered)
    pairs = k * (k - 1)
    pairwise = sum(c * (c - 1) for c in counts.values()) / pairs
    # A class is right when a sample in it was graded right (all samples of a class share one answer).
    verdicts: dict[str, bool] = {}
    for answer, verdict in zip(answers, correct, strict=True):
        if answer is not None and verdict is not None:
            verdicts[answer] = verdicts.get(answer, False) or verdict
    if any(a not in verdicts for a in counts):
        return GradedMeasures(pairwise, modal, None, None, unanswered)
    right = sum(c * (c - 1) for a, c in counts.items() if verdicts[a]) / pairs
    return GradedMeasures(pairwise, modal, right, pairwise - right, unanswered)


def self_consistency_gap(majority_correct: bool | None, samples_correct: int, samples_graded: int) -> float | None:
    """maj@k - pass@1 of one problem, or None when either is unknown."""
    if majority_correct is None or not samples_graded:
        return None
    return float(majority_correct) - samples_correct / samples_graded
