"""Grading model answers, one entry point per problem: math numbers and multiple-choice letters
(``answers``), code by running its tests in the sandbox (``code``).

Public API used by the generate and evaluate stages and by external checks: ``grade`` / ``grade_many``
and ``Grade``; the pieces live in ``answers`` and ``code``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from consistency_worker.data.problems import Problem
from consistency_worker.grading.answers import extract_choice, extract_math_answer, math_answers_match
from consistency_worker.grading.code import build_program, instrument_tests, plan_for, signature_of, trusted_outcome
from consistency_worker.grading.trusted_tests import Rewritten
from consistency_worker.sandbox.pool import join_program, run_many, run_program
from consistency_worker.sandbox.types import TestResult

# ---------------------------------------------------------------------------------------------------
# one entry point per problem


@dataclass(frozen=True)
class Grade:
    """``answer``: the normalised answer used for voting: a number (math), a letter (reasoning); code:
    "pass", or a digest of the values it returned (``_trusted_outcome``), or for tests that do not
    rewrite the old test-outcome signature (``signature_of``)."""

    correct: bool
    answer: str | None
    detail: str = ""


def _grade_text(problem: Problem, completion: str, cut_off: bool = False) -> Grade:
    """``cut_off``: the completion hit its token budget; without a final-answer marker it has no answer
    (None: never right, never agreeing with another sample)."""
    if problem.domain == "math":
        answer = extract_math_answer(completion, cut_off=cut_off)
        return Grade(correct=answer is not None and math_answers_match(completion, problem.answer or "",
                                                                       cut_off=cut_off), answer=answer)
    letter = extract_choice(completion, cut_off=cut_off)
    return Grade(correct=letter is not None and letter == (problem.answer or "").upper(), answer=letter)


def _code_grade(result: TestResult, how: Rewritten | str | None) -> Grade:
    if isinstance(how, Rewritten):
        passed, status, reason, answer = trusted_outcome(result, how)
        return Grade(correct=passed, answer=answer, detail=f"{status}: {reason}".rstrip(": "))
    nonce = how
    reason = re.sub(rf"\[{nonce}:[^\]]*\] ", "", result.reason) if nonce else result.reason
    return Grade(correct=result.passed, answer=signature_of(result, nonce),
                 detail=f"untrusted tests, {result.status}: {reason}".rstrip(": "))


def _code_source(problem: Problem, completion: str) -> tuple[str, Rewritten | str | None]:
    """The script that grades one code completion, and how to read its run: the rewritten tests'
    checks, or (tests that do not rewrite) the nonce tagging the old path's signature (a fresh one per
    run, so the model's own output cannot forge it)."""
    program = build_program(problem, completion)
    plan = plan_for(problem)
    if plan is not None:
        return join_program(program, plan.script), plan
    nonce = secrets.token_hex(6)
    tests = instrument_tests(problem.tests or "", nonce)
    if tests is None:
        return join_program(program, problem.tests or ""), None
    return join_program(program, tests), nonce


def grade(problem: Problem, completion: str, *, timeout_s: float = 10.0, cut_off: bool = False) -> Grade:
    """Grade one completion for one problem; ``cut_off``: it stopped at maxNewTokens (see _grade_text)."""
    if problem.domain != "code":
        return _grade_text(problem, completion, cut_off)
    source, how = _code_source(problem, completion)
    return _code_grade(run_program(source, timeout_s=timeout_s), how)


def grade_many(pairs: Sequence[tuple[Problem, str]], *, timeout_s: float = 10.0,
               workers: int | None = None, cut_off: Sequence[bool] | None = None) -> list[Grade]:
    """Grade many (problem, completion) pairs; code runs in parallel sandboxes. Input order kept.
    ``cut_off``: per pair, whether the completion stopped at maxNewTokens (see _grade_text)."""
    if cut_off is not None and len(cut_off) != len(pairs):
        raise ValueError(f"cut_off has {len(cut_off)} flags for {len(pairs)} completions")
    grades: list[Grade | None] = [None] * len(pairs)
    code_idx = [i for i, (p, _) in enumerate(pairs) if p.domain == "code"]
    for i, (p, c) in enumerate(pairs):
        if p.domain != "code":
            grades[i] = _grade_text(p, c, bool(cut_off[i]) if cut_off is not None else False)
    scripts = [_code_source(*pairs[i]) for i in code_idx]
    results = run_many([src for src, _ in scripts], workers=workers, timeout_s=timeout_s)
    for i, result, (_, how) in zip(code_idx, results, scripts, strict=True):
        grades[i] = _code_grade(result, how)
    return [g for g in grades if g is not None]
