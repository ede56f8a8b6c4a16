"""The demo's generated GSM8K-format data: deterministic, well-formed, stratified, disjoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from consistency_local.demo_data import (
    SPLITS,
    count_steps,
    final_answer,
    generate_splits,
    normalise_question,
    read_jsonl,
    write_splits,
)

SIZES = {"pretrain": 800, "train": 150, "scan": 150, "eval": 100}
_ANNOTATION = re.compile(r"<<(-?\d+)([+\-*/])(-?\d+)=(-?\d+)>>(-?\d+)")


def test_same_seed_same_bytes_other_seed_other_problems(tmp_path: Path) -> None:
    a = write_splits(tmp_path / "a", seed=7, sizes=SIZES)
    b = write_splits(tmp_path / "b", seed=7, sizes=SIZES)
    c = write_splits(tmp_path / "c", seed=8, sizes=SIZES)
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()


def test_step_weights_restrict_the_strata() -> None:
    easy = generate_splits(5, {"eval": 60}, step_weights={1: 1.0, 2: 1.0})["eval"]
    assert {count_steps(p.answer) for p in easy} == {1, 2}
    with pytest.raises(ValueError, match="step_weights"):
        generate_splits(5, {"eval": 1}, step_weights={0: 1.0})


def test_eval_split_does_not_depend_on_pretrain_size() -> None:
    # Growing the pretrain corpus (to tune the model) must never change the held-out questions.
    small = generate_splits(3, {**SIZES, "pretrain": 10})
    large = generate_splits(3, SIZES)
    assert small["eval"] == large["eval"]
    assert small["scan"] == large["scan"]


def test_splits_are_disjoint_by_normalised_question() -> None:
    splits = generate_splits(0, SIZES)
    keys = {name: [normalise_question(p.question) for p in rows] for name, rows in splits.items()}
    for name, values in keys.items():
        assert len(values) == SIZES[name]
        assert len(set(values)) == len(values), f"duplicate question inside {name}"
    names = list(keys)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert not set(keys[first]) & set(keys[second]), f"{first} and {second} overlap"


def test_normalisation_folds_case_space_and_punctuation() -> None:
    assert normalise_question("Mia has 3  apples.") == normalise_question("mia HAS 3 apples")
    assert normalise_question("Mia has 3 apples.") != normalise_question("Mia has 4 apples.")


def test_every_solution_is_arithmetically_right_and_ends_with_its_answer() -> None:
    for problem in generate_splits(1, SIZES)["pretrain"]:
        lines = problem.answer.splitlines()
        assert lines[-1].startswith("#### ")
        for line in lines[:-1]:
            match = _ANNOTATION.search(line)
            assert match, f"no calculator annotation in {line!r}"
            a, op, b, c, shown = match.groups()
            expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                        "/": int(a) / int(b)}[op]
            assert expected == int(c) == int(shown), line
        # The final answer is the last computed value, a non-negative integer.
        assert final_answer(problem.answer) == _ANNOTATION.search(lines[-2]).group(4)
        assert int(final_answer(problem.answer)) >= 0
        assert count_steps(problem.answer) == problem.steps == len(lines) - 1


def test_all_gsm8k_strata_are_populated() -> None:
    steps = [p.steps for p in generate_splits(2, SIZES)["eval"]]
    easy = sum(s <= 2 for s in steps)
    medium = sum(3 <= s <= 5 for s in steps)
    hard = sum(s >= 6 for s in steps)
    assert min(easy, medium, hard) >= 0.1 * len(steps), (easy, medium, hard)


def test_templates_vary() -> None:
    rows = generate_splits(4, SIZES)["pretrain"]
    openings = {" ".join(p.question.split()[1:3]) for p in rows}
    assert len(openings) >= 5
    names = {p.question.split()[0] for p in rows}
    assert len(names) >= 15


def test_files_are_gsm8k_jsonl(tmp_path: Path) -> None:
    paths = write_splits(tmp_path, seed=0, sizes={"train": 5, "eval": 5})
    assert set(paths) == {"train", "eval"}
    for line in paths["train"].read_text().splitlines():
        assert set(json.loads(line)) == {"question", "answer"}
    assert len(read_jsonl(paths["eval"])) == 5


def test_unknown_split_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        generate_splits(0, {"test": 3})


def test_read_jsonl_names_the_bad_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_jsonl(bad)


def test_eval_skeletons_are_never_used_outside_eval() -> None:
    """Template-disjoint: no pretrain, train or scan question is an eval question with other names and
    numbers (the review found 23 of 60 efficacy eval problems sharing a skeleton before the split)."""
    from consistency_worker.data.leakage import ngrams, skeleton

    splits = generate_splits(4, SIZES)
    eval_skeletons = {skeleton(p.question) for p in splits["eval"]}
    eval_grams = set().union(*(ngrams(p.question) for p in splits["eval"]))
    for name in ("pretrain", "train", "scan"):
        assert not {skeleton(p.question) for p in splits[name]} & eval_skeletons, name
        assert not any(ngrams(p.question) & eval_grams for p in splits[name]), name
    # The hash split leaves the eval side a real share of the templates, not a handful.
    assert len(eval_skeletons) > 0.6 * SIZES["eval"]


def test_skeleton_masks_names_and_numbers_only() -> None:
    from consistency_worker.data.leakage import skeleton

    a = skeleton("Mia has 5 apples. Then Mia buys 3 more apples.")
    assert a == skeleton("Ben has 12 apples.  Then Ben buys 7 more apples!")
    assert a == skeleton("Zoe has 1,200 apples. Then Zoe buys 3.5 more apples.")
    assert a == "◊ has ∅ apples ◊ ◊ buys ∅ more apples"
    assert a != skeleton("Mia has 5 pears. Then Mia buys 3 more pears.")
