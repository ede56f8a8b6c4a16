"""Difficulty strata, seeded stratified sampling and the leakage guard."""

from __future__ import annotations

from collections import Counter

import pytest
from consistency_worker.data.leakage import (
    LeakageError,
    check_leakage,
    find_leaks,
    find_overlaps,
    ngrams,
    normalise_text,
)
from consistency_worker.data.problems import Problem
from consistency_worker.data.strata import allocate, code_stratum, gsm8k_steps, math_stratum, stratified_sample
from hypothesis import given, settings
from hypothesis import strategies as st


def _p(i: int, stratum: str, prompt: str | None = None) -> Problem:
    return Problem(id=f"p/{i}", domain="math", prompt=prompt or f"question {i}", answer="1", stratum=stratum)


def test_gsm8k_steps_and_strata() -> None:
    assert gsm8k_steps("one\n\ntwo\n#### 3") == 2
    assert math_stratum("a\nb\n#### 1") == "easy"
    assert math_stratum("#### 1") == "easy"
    assert math_stratum("a\nb\nc\n#### 1") == "medium"
    assert math_stratum("\n".join("x" * 5) + "\n#### 1") == "medium"
    assert math_stratum("\n".join("x" * 6) + "\n#### 1") == "hard"
    assert math_stratum(None) == "all" and math_stratum("no marker") == "all"
    assert code_stratum("def f():\n    # comment\n    return 1\n") == "easy"
    assert code_stratum("\n".join(f"x{i} = {i}" for i in range(7))) == "medium"
    assert code_stratum("\n".join(f"x{i} = {i}" for i in range(12))) == "hard"
    assert code_stratum(None) == "all"


def _pool() -> list[Problem]:
    return [_p(i, "easy") for i in range(100)] + [_p(100 + i, "medium") for i in range(300)] + \
        [_p(400 + i, "hard") for i in range(50)]


def test_proportional_sampling_is_exact_and_deterministic() -> None:
    pool = _pool()
    sample = stratified_sample(pool, 90, seed=7)
    assert len(sample) == 90
    assert Counter(p.stratum for p in sample) == {"easy": 20, "medium": 60, "hard": 10}
    # the same problems whatever order the pool comes in
    assert {p.id for p in sample} == {p.id for p in stratified_sample(list(reversed(pool)), 90, seed=7)}
    assert {p.id for p in sample} != {p.id for p in stratified_sample(pool, 90, seed=8)}
    positions = [pool.index(p) for p in sample]
    assert positions == sorted(positions)  # input order kept


def test_weighted_sampling_redistributes_what_a_stratum_lacks() -> None:
    alloc = allocate({"easy": 100, "medium": 300, "hard": 50}, 300, {"easy": 1, "medium": 1, "hard": 1})
    assert alloc == {"easy": 100, "medium": 150, "hard": 50}
    assert allocate({"easy": 10, "medium": 10, "hard": 10}, 10, {"easy": 1, "medium": 1, "hard": 0})["hard"] == 0
    assert sum(allocate({"a": 7, "b": 7, "c": 7}, 10).values()) == 10
    with pytest.raises(ValueError, match="cannot sample 500"):
        allocate({"easy": 100, "medium": 300, "hard": 50}, 500)
    with pytest.raises(ValueError, match="positive weight hold only 10"):
        allocate({"easy": 10, "medium": 10}, 15, {"easy": 1})


def test_weights_that_match_no_stratum_fall_back_to_proportional() -> None:
    pool = [_p(i, "all") for i in range(20)]
    assert len(stratified_sample(pool, 5, {"easy": 1.0, "hard": 2.0}, seed=1)) == 5


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.dictionaries(st.sampled_from(["easy", "medium", "hard", "all"]), st.integers(0, 40), min_size=1),
    weights=st.none() | st.dictionaries(st.sampled_from(["easy", "medium", "hard"]), st.floats(0.1, 5)),
    data=st.data(),
)
def test_allocation_properties(sizes: dict[str, int], weights: dict[str, float] | None, data: st.DataObject) -> None:
    total = sum(sizes.values())
    count = data.draw(st.integers(0, total))
    try:
        alloc = allocate(sizes, count, weights)
    except ValueError as exc:
        assert "positive weight" in str(exc)
        return
    assert sum(alloc.values()) == count
    assert all(0 <= alloc[s] <= sizes[s] for s in sizes)


def test_normalise_text_folds_case_space_punctuation() -> None:
    assert normalise_text("  Tom has 3 APPLES,\n\tand   buys 2!  ") == normalise_text("tom has 3 apples and buys 2")
    assert normalise_text("a-b") != normalise_text("ab")
    assert normalise_text("2 + 3") != normalise_text("2 3")  # symbols are content, not punctuation


def test_leakage_guard() -> None:
    train = [_p(1, "easy", "How many apples does Tom have?"), _p(2, "easy", "Unrelated question")]
    evals = [Problem(id="e/9", domain="math", prompt="how many   apples does tom have", answer="1")]
    assert [(a.id, b.id) for a, b in find_leaks(train, evals)] == [("p/1", "e/9")]
    with pytest.raises(LeakageError) as info:
        check_leakage(train, evals)
    assert "p/1 == e/9" in str(info.value) and info.value.leaks == [("p/1", "e/9")]
    check_leakage(train[1:], evals)  # no leak, no error


def test_leakage_error_lists_a_bounded_number_of_examples() -> None:
    train = [_p(i, "easy", f"q {i}") for i in range(20)]
    evals = [Problem(id=f"e/{i}", domain="math", prompt=f"Q {i}.", answer="1") for i in range(20)]
    with pytest.raises(LeakageError, match=r"20 training/scan problem\(s\)") as info:
        check_leakage(train, evals, max_examples=3)
    assert str(info.value).count(" == ") == 3 and "and 17 more" in str(info.value)


def test_13_gram_overlap() -> None:
    eval_ = [Problem(id="e/1", domain="math", answer="5",
                     prompt="Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and "
                            "bakes muffins for her friends every day with four.")]
    reworded = Problem(id="t/1", domain="math", answer="7",
                       prompt="Tom's hens lay 20 eggs per day. He eats three for breakfast every morning and bakes "
                              "muffins for her friends every day with four. How many are left?")
    short = Problem(id="t/2", domain="math", answer="1", prompt="She eats three for breakfast every morning")
    found = find_overlaps([reworded, short], eval_)
    assert [(o.train_id, o.eval_id) for o in found] == [("t/1", "e/1")]
    assert len(found[0].ngram.split()) == 13
    assert ngrams("one two three", 13) == set()
