"""The one problem record every dataset is normalised into (one JSONL line per problem)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from consistency_worker.store.jsonl import jsonl_lines

Domain = Literal["math", "code", "reasoning"]
DOMAINS: tuple[Domain, ...] = ("math", "code", "reasoning")


class Problem(BaseModel):
    """A normalised problem.

    ``answer``: math, the canonical number string; reasoning, the letter. ``tests``: code, a script that
    runs after the program in the same module (asserts, or HumanEval's ``check`` plus its call).
    ``solution``: the dataset's reference solution when it has one (a training-target fallback).
    ``examples``: visible examples shown in the prompt (MBPP's convention: its asserts).
    ``content_hash`` is filled from the graded content when not given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    domain: Domain
    prompt: str = Field(min_length=1)
    answer: str | None = None
    choices: tuple[str, ...] = ()
    tests: str | None = None
    entry_point: str | None = None
    examples: tuple[str, ...] = ()
    solution: str | None = None
    stratum: str = "all"
    source: str = ""
    content_hash: str = ""

    @model_validator(mode="after")
    def _check(self) -> Problem:
        if self.domain == "math" and not self.answer:
            raise ValueError(f"problem {self.id}: a math problem needs an answer")
        if self.domain == "reasoning" and not self.answer:
            raise ValueError(f"problem {self.id}: a reasoning problem needs an answer letter")
        if self.domain == "code" and not self.tests:
            raise ValueError(f"problem {self.id}: a code problem needs tests")
        if not self.content_hash:
            object.__setattr__(self, "content_hash", compute_content_hash(self))
        return self

    def to_jsonl(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_jsonl(cls, line: str) -> Problem:
        return cls.model_validate_json(line)


def compute_content_hash(problem: Problem | dict[str, Any]) -> str:
    """sha256 over what defines the task (not id/source/stratum), so copies across sources collide."""
    data = problem.model_dump() if isinstance(problem, Problem) else problem
    keyed = {k: data.get(k) for k in ("domain", "prompt", "choices", "answer", "tests", "entry_point")}
    keyed["choices"] = list(keyed["choices"] or [])
    blob = json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


class ProblemFileError(ValueError):
    """A problems file has a bad line or a repeated id (permanent: the same file fails the same way)."""


def parse_problems(text: str, source: str) -> list[Problem]:
    """The problems of a JSONL text (the one reader of problems files); errors name source and line."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, line in jsonl_lines(text):
        try:
            problem = Problem.from_jsonl(line)
        except ValueError as exc:
            raise ProblemFileError(f"{source}:{lineno}: not a problem record: {exc}") from None
        if problem.id in seen:
            raise ProblemFileError(f"{source}:{lineno}: duplicate problem id {problem.id!r}")
        seen.add(problem.id)
        problems.append(problem)
    return problems
