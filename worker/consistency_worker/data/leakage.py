"""Leakage guard: no training or scan problem may appear in an evaluation set, as an exact copy
(normalised text; refused) or as a near copy sharing a 13-word run (reported and left out); and the
skeleton overlap (the same question template once names and numbers are masked) is reported."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from consistency_worker.data.problems import Problem

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Case, whitespace and punctuation folded: copies that differ only in formatting compare equal."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch)[0] in "PZC" else ch for ch in folded)
    return _SPACE.sub(" ", kept).strip()


class LeakageError(ValueError):
    """Training/scan problems found in an evaluation set; ``leaks`` holds (train id, eval id) pairs."""

    def __init__(self, leaks: list[tuple[Problem, Problem]], max_examples: int) -> None:
        self.leaks = [(a.id, b.id) for a, b in leaks]
        lines = [f"  {a.id} == {b.id}: {normalise_text(a.prompt)[:80]!r}" for a, b in leaks[:max_examples]]
        more = f"\n  ... and {len(leaks) - max_examples} more" if len(leaks) > max_examples else ""
        super().__init__(
            f"data leakage: {len(leaks)} training/scan problem(s) also appear in an evaluation set "
            f"(normalised text match):\n" + "\n".join(lines) + more
        )


def find_leaks(train_like: Iterable[Problem], eval_problems: Iterable[Problem]) -> list[tuple[Problem, Problem]]:
    """(train problem, eval problem) pairs whose normalised prompt text is equal."""
    index: dict[str, Problem] = {}
    for p in eval_problems:
        index.setdefault(normalise_text(p.prompt), p)
    return [(p, index[key]) for p in train_like if (key := normalise_text(p.prompt)) in index]


def check_leakage(train_like: list[Problem], eval: list[Problem], *, max_examples: int = 5) -> None:
    """Raise ``LeakageError`` (listing up to ``max_examples``) if any training/scan problem's normalised
    text also appears in ``eval``."""
    leaks = find_leaks(train_like, eval)
    if leaks:
        raise LeakageError(leaks, max_examples)


# ---------------------------------------------------------------------------------------------------
# n-gram overlap: the standard contamination test (GPT-3, Brown et al. 2020, used 13-grams). A train
# problem that shares a 13-word run with an evaluation problem is a paraphrase or a variant of it.

NGRAM = 13


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """The n-word runs of the normalised text (none when it has fewer than n words)."""
    words = normalise_text(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    """A train/scan problem sharing something with an evaluation problem: `shared` is the first shared
    n-gram (kind "ngram") or the shared question skeleton (kind "skeleton")."""

    train_id: str
    eval_id: str
    shared: str
    kind: str = "ngram"

    @property
    def ngram(self) -> str:
        return self.shared

    def as_json(self) -> dict[str, str]:
        return {"trainId": self.train_id, "evalId": self.eval_id, self.kind: self.shared}


def find_overlaps(train_like: Iterable[Problem], eval_problems: Iterable[Problem],
                  n: int = NGRAM) -> list[Overlap]:
    """One ``Overlap`` per train problem whose prompt shares an n-gram with some eval problem's prompt,
    in train order. Exact copies count too (a caller that refuses those checks them first)."""
    index: dict[tuple[str, ...], str] = {}
    for p in eval_problems:
        for gram in sorted(ngrams(p.prompt, n)):
            index.setdefault(gram, p.id)
    found = []
    for p in train_like:
        shared = sorted(g for g in ngrams(p.prompt, n) if g in index)
        if shared:
            found.append(Overlap(p.id, index[shared[0]], " ".join(shared[0])))
    return found


# ---------------------------------------------------------------------------------------------------
# Question skeletons: a problem's template with names and numbers masked. Two problems with one skeleton
# differ only in who and how many: an evaluation problem whose skeleton a train problem shares measures
# recall of a template, not generalisation. Generated problem sets are split by skeleton
# (consistency_local.demo_data); prepare reports the overlap for every campaign.

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Every capitalised word, sentence starts included: names need not stand mid-sentence ("Mia has 5 apples."),
# and masking a few non-names too only makes skeletons coarser, so the overlap count errs towards more.
_CAPITALISED = re.compile(r"\b[A-Z][A-Za-z'-]*")
# Symbols that normalise_text keeps as they are (NFKC and casefold leave them; not punctuation).
NUMBER_MASK = "\u2205"  # ∅
NAME_MASK = "\u25ca"  # ◊


def skeleton(text: str) -> str:
    """The normalised question with every number and every capitalised word masked."""
    masked = _NUMBER.sub(f" {NUMBER_MASK} ", text)
    masked = _CAPITALISED.sub(NAME_MASK, masked)
    return normalise_text(masked)


def find_skeleton_overlaps(train_like: Iterable[Problem], eval_problems: Iterable[Problem]) -> list[Overlap]:
    """One ``Overlap`` (kind "skeleton") per train problem sharing its skeleton with some eval problem, in
    train order."""
    index: dict[str, str] = {}
    for p in eval_problems:
        index.setdefault(skeleton(p.prompt), p.id)
    return [Overlap(p.id, index[key], key, "skeleton") for p in train_like if (key := skeleton(p.prompt)) in index]
