"""Seeded generator of grade-school arithmetic word problems in GSM8K format, for the demo.

The demo needs data it can ship (no hub downloads) whose difficulty strata match GSM8K's
(number of solution steps: easy 0-2, medium 3-5, hard 6+). Each problem is a small story
built from a chain of operations; each operation is one question sentence and one worked
solution line with a `<<a+b=c>>` calculator annotation, so step counts are exact.

Splits (pretrain / train / scan / eval) are disjoint by normalised question text and by question
skeleton (the question with names and numbers masked, `consistency_worker.data.leakage.skeleton`): a seeded
hash assigns every skeleton to the evaluation side (a share EVAL_SKELETON_SHARE of them) or to the
training side, eval problems are drawn only from evaluation skeletons and every other split only from
the rest. So no train, scan or pretrain problem is an evaluation problem with other names and numbers;
nor does one share a 13-word run with an evaluation problem (two templates can: such draws are redrawn).
The campaign's prepare stage re-checks both (13-gram and skeleton overlap, which must read 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from consistency_worker.data.leakage import ngrams, skeleton
from consistency_worker.store.jsonl import BadLine, iter_jsonl

SPLITS = ("pretrain", "train", "scan", "eval")
# Bumped when the same seed gives other splits (2: template-disjoint), so cached data is regenerated.
SPLIT_VERSION = 2
# Share of question skeletons reserved for evaluation problems.
EVAL_SKELETON_SHARE = 0.3
DEFAULT_SIZES: Mapping[str, int] = {"pretrain": 6000, "train": 600, "scan": 400, "eval": 500}

NAMES = (
    "Mia", "Liam", "Ava", "Noah", "Emma", "Leo", "Zoe", "Omar", "Lily", "Ben", "Nora", "Sam",
    "Ivy", "Max", "Ruby", "Eli", "Rosa", "Theo", "Maya", "Jack", "Ana", "Kai", "Ella", "Tom",
)
# (plural object, container) pairs: the container word is used by grouping operations.
OBJECTS = (
    ("apples", "baskets"), ("marbles", "jars"), ("stickers", "albums"), ("cookies", "boxes"),
    ("pencils", "cups"), ("books", "shelves"), ("shells", "buckets"), ("cards", "packs"),
    ("stamps", "pages"), ("eggs", "cartons"), ("flowers", "vases"), ("coins", "bags"),
    ("toys", "bins"), ("beads", "strings"), ("candies", "bowls"), ("balloons", "bunches"),
)
FRIENDS = ("her brother", "his sister", "a friend", "a neighbor", "the teacher", "a cousin")
PRICED_ITEMS = (
    ("notebooks", "notebook"), ("tickets", "ticket"), ("sandwiches", "sandwich"), ("pens", "pen"),
    ("muffins", "muffin"), ("kites", "kite"), ("plants", "plant"), ("puzzles", "puzzle"),
)
# Small numbers keep the arithmetic learnable by a model trained for minutes on a CPU.
MAX_VALUE = 40


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # worked solution lines, then "#### N"
    steps: int

    def to_json(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}


def normalise_question(text: str) -> str:
    """Key used for disjointness: case, punctuation and spacing do not make a new problem."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def count_steps(answer: str) -> int:
    """GSM8K difficulty measure: solution lines before the final `#### N` line."""
    return sum(1 for line in answer.splitlines() if line.strip() and not line.startswith("####"))


def final_answer(answer: str) -> str:
    return answer.rsplit("####", 1)[1].strip()


# --- one operation of a chain -------------------------------------------------------------------

@dataclass(frozen=True)
class _Step:
    sentence: str
    line: str
    value: int


def _eq(a: int, op: str, b: int, result: int) -> str:
    return f"{a} {op} {b} = <<{a}{op}{b}={result}>>{result}"


def _op_add(rng: random.Random, x: int, who: str, obj: str, box: str) -> _Step | None:
    n = rng.randint(1, 10)
    y = x + n
    if y > MAX_VALUE:
        return None
    verb, done = rng.choice((
        ("buys", "after buying more"), ("finds", "after finding more"), ("gets", "after getting more"),
        ("is given", "after the gift"), ("collects", "after collecting more"),
    ))
    s = f"{rng.choice(('Then', 'Next,', 'Later,', 'After that,'))} {who} {verb} {n} more {obj}."
    return _Step(s, f"{who} has {_eq(x, '+', n, y)} {obj} {done}.", y)


def _op_sub(rng: random.Random, x: int, who: str, obj: str, box: str) -> _Step | None:
    if x < 3:
        return None
    n = rng.randint(1, min(x - 1, 10))
    y = x - n
    verb = rng.choice(("gives", "sells", "lends", "trades away"))
    s = f"{rng.choice(('Then', 'Next,', 'Later,', 'After that,'))} {who} {verb} {n} {obj}"
    s += f" to {rng.choice(FRIENDS)}." if verb in ("gives", "lends") else "."
    return _Step(s, f"{who} has {_eq(x, '-', n, y)} {obj} left.", y)


def _op_lose(rng: random.Random, x: int, who: str, obj: str, box: str) -> _Step | None:
    if x < 3:
        return None
    n = rng.randint(1, min(x - 1, 5))
    y = x - n
    s = f"{rng.choice(('Sadly,', 'Then', 'On the way home,'))} {n} of the {obj} get lost."
    return _Step(s, f"There are {_eq(x, '-', n, y)} {obj} left.", y)


def _op_mul(rng: random.Random, x: int, who: str, obj: str, box: str) -> _Step | None:
    m = rng.choice([k for k in (2, 3) if x * k <= MAX_VALUE] or [0])
    if not m:
        return None
    word = {2: "doubles", 3: "triples"}[m]
    s = f"{rng.choice(('Then', 'Next,', 'Later,'))} {who} {word} the number of {obj}."
    return _Step(s, f"{who} now has {_eq(x, '*', m, x * m)} {obj}.", x * m)


def _op_half(rng: random.Random, x: int, who: str, obj: str, box: str) -> _Step | None:
    if x % 2 or x < 4:
        return None
    y = x // 2
    s = f"{rng.choice(('Then', 'Next,', 'Later,'))} {who} gives half of the {obj} away."
    return _Step(s, f"{who} keeps {_eq(x, '/', 2, y)} {obj}.", y)


def _op_groups(rng: random.Random, x: int, who: str, obj: str, box: str) -> _Step | None:
    g, per = rng.randint(2, 4), rng.randint(2, 5)
    n = g * per
    if x + n > MAX_VALUE:
        return None
    s = f"{rng.choice(('Then', 'Next,', 'Later,'))} {who} buys {g} {box} with {per} {obj} in each."
    # Two solution lines: the product, then the running total. Returned as one step pair.
    return _Step(
        s,
        f"The {box} hold {_eq(g, '*', per, n)} {obj}.\n{who} has {_eq(x, '+', n, x + n)} {obj} in all.",
        x + n,
    )


_OPS: tuple[Callable[[random.Random, int, str, str, str], _Step | None], ...] = (
    _op_add, _op_add, _op_sub, _op_sub, _op_lose, _op_mul, _op_half, _op_groups,
)


# --- story shapes ----------------------------------------------------------------------------------

def _chain_story(rng: random.Random, steps: int) -> Problem | None:
    """One person, a starting amount, a chain of operations, 'how many now?'."""
    who = rng.choice(NAMES)
    obj, box = rng.choice(OBJECTS)
    x = rng.randint(3, 15)
    sentences = [f"{who} has {x} {obj}."]
    lines: list[str] = []
    while len(lines) < steps:
        op = rng.choice(_OPS)
        step = op(rng, x, who, obj, box)
        if step is None:
            continue
        new_lines = step.line.split("\n")
        if len(lines) + len(new_lines) > steps:
            continue
        sentences.append(step.sentence)
        lines.extend(new_lines)
        x = step.value
    sentences.append(rng.choice((
        f"How many {obj} does {who} have now?", f"How many {obj} does {who} have at the end?",
        f"How many {obj} are left with {who}?",
    )))
    return _problem(sentences, lines, x)


def _compare_story(rng: random.Random, steps: int) -> Problem | None:
    """People defined relative to each other; the last step may total them."""
    people = rng.sample(NAMES, k=min(steps + 1, 6))
    obj, _ = rng.choice(OBJECTS)
    values = [rng.randint(4, 15)]
    sentences = [f"{people[0]} has {values[0]} {obj}."]
    lines: list[str] = []
    total = steps >= 2 and rng.random() < 0.5
    relations = steps - 1 if total else steps
    if relations + 1 > len(people):
        return None
    for i in range(1, relations + 1):
        prev, cur = values[-1], people[i]
        kind = rng.choice(("more", "fewer", "times"))
        if kind == "more":
            n = rng.randint(1, 10)
            v = prev + n
            if v > MAX_VALUE:
                return None
            sentences.append(f"{cur} has {n} more {obj} than {people[i - 1]}.")
            lines.append(f"{cur} has {_eq(prev, '+', n, v)} {obj}.")
        elif kind == "fewer" and prev > 3:
            n = rng.randint(1, min(prev - 1, 10))
            v = prev - n
            sentences.append(f"{cur} has {n} fewer {obj} than {people[i - 1]}.")
            lines.append(f"{cur} has {_eq(prev, '-', n, v)} {obj}.")
        else:
            m = 2 if prev * 3 > MAX_VALUE else rng.choice((2, 3))
            if prev * m > MAX_VALUE:
                return None
            v = prev * m
            word = "twice" if m == 2 else "three times"
            sentences.append(f"{cur} has {word} as many {obj} as {people[i - 1]}.")
            lines.append(f"{cur} has {_eq(prev, '*', m, v)} {obj}.")
        values.append(v)
    if total:
        # Sum the last two named people: one step, keeps every step a single operation.
        a, b = values[-2], values[-1]
        sentences.append(f"How many {obj} do {people[relations - 1]} and {people[relations]} have together?")
        lines.append(f"Together they have {_eq(a, '+', b, a + b)} {obj}.")
        return _problem(sentences, lines, a + b)
    sentences.append(f"How many {obj} does {people[relations]} have?")
    return _problem(sentences, lines, values[-1])


def _money_story(rng: random.Random, steps: int) -> Problem | None:
    """Buying at a unit price, then spending or earning money in further steps."""
    who = rng.choice(NAMES)
    plural, single = rng.choice(PRICED_ITEMS)
    count, price = rng.randint(2, 5), rng.randint(2, 5)
    cost = count * price
    money = cost + rng.randint(1, 10)
    sentences = [f"{who} has ${money}.", f"{who} buys {count} {plural} that cost ${price} per {single}."]
    lines = [f"The {plural} cost {_eq(count, '*', price, cost)} dollars."]
    x = money
    if steps >= 2:
        lines.append(f"{who} has {_eq(money, '-', cost, money - cost)} dollars left.")
        x = money - cost
    while len(lines) < steps:
        if rng.random() < 0.5 and x > 3:
            n = rng.randint(1, min(x - 1, 10))
            sentences.append(f"Then {who} spends ${n} on lunch.")
            lines.append(f"{who} has {_eq(x, '-', n, x - n)} dollars left.")
            x -= n
        elif x + 10 <= MAX_VALUE:
            n = rng.randint(1, 10)
            sentences.append(f"Then {who} earns ${n} doing chores.")
            lines.append(f"{who} has {_eq(x, '+', n, x + n)} dollars.")
            x += n
    if steps == 1:
        sentences = sentences[1:]
        sentences.append(f"How much does {who} spend?")
        return _problem(sentences, lines, cost)
    sentences.append(f"How many dollars does {who} have now?")
    return _problem(sentences, lines, x)


def _problem(sentences: list[str], lines: list[str], answer: int) -> Problem:
    return Problem(" ".join(sentences), "\n".join([*lines, f"#### {answer}"]), len(lines))


_STORIES = (_chain_story, _chain_story, _compare_story, _money_story)
# Step counts 1..7, weighted so all three GSM8K strata (easy 0-2, medium 3-5, hard 6+) are populated.
_STEP_WEIGHTS = {1: 2, 2: 3, 3: 3, 4: 2, 5: 2, 6: 1.5, 7: 1}


def generate_problem(rng: random.Random, step_weights: Mapping[int, float] = _STEP_WEIGHTS) -> Problem:
    steps = rng.choices(list(step_weights), weights=list(step_weights.values()))[0]
    while True:
        problem = rng.choice(_STORIES)(rng, steps)
        if problem is not None:
            return problem


def is_eval_skeleton(question: str, seed: int) -> bool:
    """Whether the question's skeleton belongs to the evaluation side (a seeded hash, so the split of
    skeletons is fixed by the seed and independent of draw order and split sizes)."""
    digest = hashlib.sha256(f"{seed}:{skeleton(question)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < EVAL_SKELETON_SHARE * 2**64


def generate_splits(
    seed: int = 0, sizes: Mapping[str, int] = DEFAULT_SIZES, step_weights: Mapping[int, float] = _STEP_WEIGHTS
) -> dict[str, list[Problem]]:
    """Splits disjoint by question and by skeleton (eval skeletons never outside eval); the same seed,
    sizes and step weights give byte-identical output."""
    if not step_weights or any(s < 1 or w < 0 for s, w in step_weights.items()):
        raise ValueError(f"step_weights: need step counts >= 1 with weights >= 0, got {dict(step_weights)}")
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split name(s) {sorted(unknown)}; expected some of {SPLITS}")
    rng = random.Random(seed)
    seen: set[str] = set()
    eval_grams: set[tuple[str, ...]] = set()
    out: dict[str, list[Problem]] = {}
    # Held-out splits are drawn first so their content never depends on the pretrain size.
    for split in ("eval", "scan", "train", "pretrain"):
        want = sizes.get(split, 0)
        rows: list[Problem] = []
        attempts = 0
        while len(rows) < want:
            attempts += 1
            if attempts > 50 * want + 1000:
                raise RuntimeError(f"could not draw {want} unique problems for split {split!r}")
            problem = generate_problem(rng, step_weights)
            key = normalise_question(problem.question)
            if key in seen or is_eval_skeleton(problem.question, seed) != (split == "eval"):
                continue
            grams = ngrams(problem.question)
            if split == "eval":
                eval_grams |= grams
            elif grams & eval_grams:
                continue
            seen.add(key)
            rows.append(problem)
        out[split] = rows
    return {s: out[s] for s in SPLITS if s in sizes}


def write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Atomic write: a killed demo never leaves a half-written split that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_splits(
    out_dir: Path,
    seed: int = 0,
    sizes: Mapping[str, int] = DEFAULT_SIZES,
    step_weights: Mapping[int, float] = _STEP_WEIGHTS,
) -> dict[str, Path]:
    """Write `<split>.jsonl` files (GSM8K format) and return their paths."""
    splits = generate_splits(seed, sizes, step_weights)
    paths: dict[str, Path] = {}
    for name, rows in splits.items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(paths[name], (p.to_json() for p in rows))
    return paths


def read_jsonl(path: Path) -> list[dict[str, str]]:
    rows = []
    for lineno, row in iter_jsonl(path.read_text(encoding="utf-8")):
        if isinstance(row, BadLine) and row.error is not None:
            raise ValueError(f"{path}:{lineno}: not JSON: {row.error}") from row.error
        if isinstance(row, BadLine) or not {"question", "answer"} <= row.keys():
            raise ValueError(f"{path}:{lineno}: expected an object with 'question' and 'answer'")
        rows.append(row)
    return rows


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the demo's GSM8K-format splits.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in write_splits(args.out_dir, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
