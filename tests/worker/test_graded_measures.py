"""Graded consistency of one problem's samples, checked against hand-computed values."""

from __future__ import annotations

import pytest
from consistency_worker.grading.graded_measures import graded_measures, self_consistency_gap


def test_hand_computed_example() -> None:
    # k = 8: five say 12 (right), two say 10 (wrong), one has no answer (cut off before a final answer).
    answers = ["12", "12", "10", "12", None, "12", "10", "12"]
    correct = [True, True, False, True, False, True, False, True]
    m = graded_measures(answers, correct)
    # pairs: 8 * 7 = 56 ordered pairs; agreeing: 5*4 (on 12) + 2*1 (on 10) = 22
    assert m.pairwise_agreement == pytest.approx(22 / 56)
    assert m.right_agreement == pytest.approx(20 / 56)
    assert m.wrong_agreement == pytest.approx(2 / 56)
    assert m.modal_share == pytest.approx(5 / 8)
    assert m.unanswered == 1
    # maj@k right (12), pass@1 = 5/8: the gap is 3/8
    assert self_consistency_gap(True, 5, 8) == pytest.approx(3 / 8)
    assert m.as_row()["pairwiseAgreement"] == round(22 / 56, 4)


def test_unanswered_samples_agree_with_nothing() -> None:
    m = graded_measures([None, None, None, None], [False] * 4)
    assert (m.pairwise_agreement, m.modal_share, m.right_agreement, m.wrong_agreement) == (0.0, 0.0, 0.0, 0.0)
    assert m.unanswered == 4


def test_unanimity_moves_like_p_to_the_k_while_pairwise_agreement_moves_like_p_squared() -> None:
    # 8 samples, 3 on the modal answer then 4: unanimity stays 0, pairwise agreement and modal share move
    before = graded_measures(["1", "1", "1", "2", "3", "4", "5", "6"], [None] * 8)
    after = graded_measures(["1", "1", "1", "1", "3", "4", "5", "6"], [None] * 8)
    assert before.pairwise_agreement == pytest.approx(6 / 56) and after.pairwise_agreement == pytest.approx(12 / 56)
    assert (before.modal_share, after.modal_share) == (3 / 8, 4 / 8)
    # no gold answer: the right/wrong split is undefined
    assert before.right_agreement is None and before.wrong_agreement is None


def test_undefined_cases() -> None:
    assert graded_measures(["1"], [True]).pairwise_agreement is None
    assert self_consistency_gap(None, 1, 2) is None and self_consistency_gap(True, 0, 0) is None
    with pytest.raises(ValueError, match="2 answers but 1 verdicts"):
        graded_measures(["1", "2"], [True])
