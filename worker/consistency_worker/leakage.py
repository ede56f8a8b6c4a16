"""Leakage guard: no training or scan problem may appear in an evaluation set."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .problems import Problem

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
