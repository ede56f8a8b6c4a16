"""Grading code: the program in a completion, its tests run in the sandbox, the grader's own verdict on
tests that rewrite (``trusted_tests``) and, for tests that do not, the test-outcome signature a sample
votes with."""

from __future__ import annotations

import ast
import copy
import functools
import re
from collections.abc import Sequence
from dataclasses import replace

from consistency_worker.data.problems import Problem
from consistency_worker.grading.canonical import parse_records, records_digest
from consistency_worker.grading.trusted_tests import Rewritten, judge, rewrite
from consistency_worker.sandbox.pool import join_program, run_program
from consistency_worker.sandbox.types import SandboxLimits, TestResult

# ---------------------------------------------------------------------------------------------------
# code

_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)(?:```|\Z)", re.S)


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The program in a completion: a fenced block (python-tagged first; the one defining
    ``entry_point`` or any function when there are several; an unclosed final fence counts), else the
    completion itself."""
    blocks = [(m.group("lang").lower(), m.group("body")) for m in _FENCE.finditer(completion)]
    if not blocks:
        return completion.strip("\n")
    python = [b for lang, b in blocks if lang in ("python", "py", "python3", "")] or [b for _, b in blocks]
    if entry_point:
        defining = [b for b in python if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            return defining[0].strip("\n")
    with_defs = [b for b in python if re.search(r"^\s*(?:def|class)\s", b, re.M)]
    return (with_defs or python)[0].strip("\n")


def build_program(problem: Problem, completion: str) -> str:
    """The program to test for a code problem. HumanEval-style problems (the prompt is the function's
    signature and docstring) get the prompt prepended: it carries imports and helpers, and a
    completion that only continues the body needs its header."""
    code = extract_code(completion, problem.entry_point)
    if problem.entry_point and f"def {problem.entry_point}(" in problem.prompt:
        if re.search(rf"\bdef\s+{re.escape(problem.entry_point)}\s*\(", code):
            return f"{problem.prompt.rstrip()}\n\n\n{code}\n"
        return problem.prompt + completion if "```" not in completion else problem.prompt + code
    return code


def run_tests(program: str, tests: str, timeout_s: float = 10.0, *,
              limits: SandboxLimits | None = None) -> TestResult:
    """Run ``tests`` against ``program`` (a raw completion is reduced to its code) in the sandbox. The
    functions the program defines are the candidates; tests that rewrite (``trusted_tests``) get the
    grader's verdict, others the old in-sandbox one."""
    code = extract_code(program) if "```" in program else program
    plan = _rewritten(tests, frozenset(_defined_functions(code)))
    if plan is None:
        return run_program(join_program(code, tests), timeout_s=timeout_s, limits=limits)
    result = run_program(join_program(code, plan.script), timeout_s=timeout_s, limits=limits)
    passed, status, reason, _ = trusted_outcome(result, plan)
    return replace(result, passed=passed, status=status, reason=reason)


def _defined_functions(code: str) -> list[str]:
    try:
        return [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    except (SyntaxError, ValueError):
        return []


# ---------------------------------------------------------------------------------------------------
# trusted verdicts: the sandbox records the candidate's values, the grader compares (trusted_tests)


@functools.lru_cache(maxsize=4096)
def _rewritten(tests: str, entry_points: frozenset[str]) -> Rewritten | None:
    return rewrite(tests, entry_points)


def plan_for(problem: Problem) -> Rewritten | None:
    return _rewritten(problem.tests or "", frozenset([problem.entry_point] if problem.entry_point else []))


def has_trusted_tests(problem: Problem) -> bool:
    """Whether a code problem's tests are graded by the grader's own comparisons (else by the old path,
    inside the sandbox: counted as ``testsUntrusted`` in stage results)."""
    return plan_for(problem) is not None


def code_grading_metrics(problems: Sequence[Problem]) -> dict[str, int | list[str]]:
    """For a stage's result, when it graded code: ``testsUntrusted``, the code problems whose tests did
    not rewrite (graded by the old in-sandbox path), and ``sandboxLayers``, the containment in force."""
    code = [p for p in problems if p.domain == "code"]
    if not code:
        return {}
    from consistency_worker.sandbox.pool import default_sandbox

    return {"testsUntrusted": sum(not has_trusted_tests(p) for p in code), "sandboxLayers": default_sandbox().layers}


def trusted_outcome(result: TestResult, plan: Rewritten) -> tuple[bool, str, str, str]:
    """(passed, status, reason, answer) of a run of rewritten tests. The program's own status line and
    exit code decide nothing: only its records, judged here. The answer a sample votes with is "pass",
    how the run ended before recording anything ("timeout", "error"), or a digest of every recorded
    value and exception type, so different wrong programs disagree."""
    records = parse_records(result.data)
    verdict = judge(plan.checks, records)
    if verdict.passed:
        return True, "passed", "", "pass"
    if result.status == "timeout" and not records.done:
        status = "timeout"
    elif not records.done and not records.records:
        status = "error"
    else:
        status = "failed"
    reason = verdict.reason
    if status != "failed" and result.reason:
        reason = f"{reason}; {result.reason}"
    answer = status if status != "failed" else "v" + records_digest(records)
    return False, status, reason, answer


# ---------------------------------------------------------------------------------------------------
# test-outcome signatures: two programs "agree" when they pass and fail the same assertions

_SIG_PRELUDE = """
_cw_sig_outcomes = []
_cw_sig_first = []
def _cw_sig_note(mark, exc=None):
    _cw_sig_outcomes.append(mark)
    if exc is not None and not _cw_sig_first:
        _cw_sig_first.append(exc)
"""
_SIG_EPILOGUE = """
if _cw_sig_first:
    _cw_sig = "".join(_cw_sig_outcomes)
    if len(_cw_sig) > {max_len}:
        import hashlib as _cw_hashlib
        _cw_sig = "h" + _cw_hashlib.sha256(_cw_sig.encode()).hexdigest()[:16]
    # the first assertion that did not hold decides failed (false) or error (raised), as without the recording
    _cw_sig_type = AssertionError if next(m for m in _cw_sig_outcomes if m != "P") == "F" else RuntimeError
    raise _cw_sig_type("[{nonce}:" + _cw_sig + "] first failure: " + repr(_cw_sig_first[0])[:120])
"""
_SIGNATURE_MAX = 64


_RECORD_TEMPLATE = ast.parse(
    "try:\n    _cw_sig_ok = bool(TEST)\n"
    "except Exception as _cw_sig_exc:\n    _cw_sig_note('E', _cw_sig_exc)\n"
    "else:\n    if _cw_sig_ok:\n        _cw_sig_note('P')\n"
    "    else:\n        _cw_sig_note('F', AssertionError(MSG))\n"
).body[0]


class _Fill(ast.NodeTransformer):
    def __init__(self, values: dict[str, ast.expr]) -> None:
        self.values = values

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return self.values.get(node.id, node)


class _AssertRecorder(ast.NodeTransformer):
    """``assert test, msg`` -> evaluate ``test``, note P (true), F (false) or E (it raised), go on."""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        msg = node.msg if node.msg is not None else ast.Constant("")
        filled = _Fill({"TEST": node.test, "MSG": msg}).visit(copy.deepcopy(_RECORD_TEMPLATE))
        return ast.copy_location(filled, node)


def instrument_tests(tests: str, nonce: str) -> str | None:
    """``tests`` rewritten so every assertion is recorded instead of stopping the run; at the end a
    failing run raises (AssertionError, or RuntimeError when the first bad assertion raised) with the
    signature tagged by ``nonce``, so passed/failed/error mean what they meant. None when the tests do
    not parse."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return None
    body = ast.unparse(ast.fix_missing_locations(_AssertRecorder().visit(tree)))
    return _SIG_PRELUDE + body + "\n" + _SIG_EPILOGUE.format(nonce=nonce, max_len=_SIGNATURE_MAX)


def signature_of(result: TestResult, nonce: str | None) -> str:
    """The answer a code sample votes with: "pass" (every assertion held), the P/F/E string of its
    assertions in the order they ran ("PPF": the third failed; E: it raised), or how the run ended
    before the tests could finish ("timeout", "error")."""
    if result.passed:
        return "pass"
    if nonce:
        match = re.search(rf"\[{nonce}:([PFEh0-9a-f]+)\]", result.reason)
        if match:
            return match.group(1)
    return result.status if result.status in ("timeout", "error") else "fail"
