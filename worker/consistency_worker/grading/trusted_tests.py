"""Test assertions rewritten so that the verdict is the grader's, not the program's. Pure: no I/O.

A problem's tests (MBPP's ``assert f(x) == y`` lines, HumanEval's ``def check(candidate)`` with its
asserts) are split per assertion into
* the *call*: the one subexpression that calls the candidate (the entry point, or HumanEval's
  ``candidate``), optionally inside list / tuple / set / frozenset / sorted / dict / str; it runs in the
  sandbox, which records its canonical value or the exception type it raised (``canonical.py``);
* the *check*: everything else (``H == [1, 2]``, ``abs(H - 3.5) < 1e-6``, ``math.isclose(H, y,
  rel_tol=...)``, ``set(H) == set(y)``, ``not H``, ``H is True``), evaluated here by a small evaluator
  that knows literals, arithmetic, comparisons and a few pure built-ins and math functions, over the
  decoded plain value. The expected side never enters the sandbox, so a program cannot learn it, and
  nothing it defines (``__eq__``, patched builtins, a patched ``math``) takes part in the comparison.

Tests that do not fit (an expected value computed from loop variables, an assertion inside ``try`` or
``if``, a helper of the tests doing the comparison, a call to anything but the candidate) are not
rewritten: ``rewrite`` returns None and the caller grades them the old way, inside the sandbox, and
counts them as untrusted.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consistency_worker.grading.canonical import RECORDER_SOURCE, CanonicalError, Opaque, Records, decode

HOLE = "_cw_value"
_CANDIDATE_PARAM = "candidate"  # HumanEval: check(candidate)
# Single-argument built-ins that only turn the candidate's value into another shape: they may run in
# the sandbox with the call (so a returned generator or map is materialised the way the test meant).
_MATERIALISERS = frozenset({"list", "tuple", "set", "frozenset", "sorted", "dict", "str"})
_SAFE_FUNCS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "len": len, "set": set, "frozenset": frozenset, "list": list, "tuple": tuple,
    "dict": dict, "sorted": sorted, "min": min, "max": max, "sum": sum, "all": all, "any": any, "int": int,
    "float": float, "str": str, "bool": bool, "isinstance": isinstance,
}
_SAFE_MATH: dict[str, Any] = {
    "isclose": math.isclose, "fabs": math.fabs, "sqrt": math.sqrt, "floor": math.floor, "ceil": math.ceil,
    "isnan": math.isnan, "isinf": math.isinf, "pi": math.pi, "e": math.e, "inf": math.inf, "nan": math.nan,
}
_CONSTANT_NAMES = {"True": True, "False": False, "None": None}
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
_SINGLETONS = (None, True, False)


class Unsupported(Exception):
    """The check uses something the trusted evaluator does not do."""


@dataclass(frozen=True)
class Check:
    """One assertion: ``expr`` (with the recorded value as the name ``HOLE``), or a constant check
    when ``recorded`` is False."""

    index: int
    expr: ast.expr
    recorded: bool
    source: str


@dataclass(frozen=True)
class Rewritten:
    """``script``: what runs in the sandbox after the program (recorder, tests with each assertion
    replaced by a recorded call, end marker); ``checks``: what the grader evaluates."""

    script: str
    checks: tuple[Check, ...]


# ---------------------------------------------------------------------------------------------------
# rewriting


def rewrite(tests: str, entry_points: frozenset[str] | set[str]) -> Rewritten | None:
    """``tests`` split into sandbox calls and trusted checks, or None when any assertion cannot be.
    ``entry_points``: the names of the function under test (HumanEval's ``candidate`` is added)."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return None
    bound = _bound_names(tree)
    # A name the evaluator knows is never the candidate: `abs(f(x) - y)` must not run in the sandbox.
    candidates = {*entry_points, _CANDIDATE_PARAM} - bound - set(_SAFE_FUNCS) - _MATERIALISERS - {"math"}
    if not candidates:
        return None
    source = _Source(tests)
    rewriter = _Rewriter(source, candidates, bound)
    try:
        rewriter.visit(tree)
    except Unsupported:
        return None
    if not any(c.recorded for c in rewriter.checks):
        return None
    return Rewritten(f"{RECORDER_SOURCE}\n{source.splice(rewriter.edits)}\n_cw_done()\n", tuple(rewriter.checks))


class _Source:
    """The tests' text addressed the way the AST does (line numbers, UTF-8 byte columns)."""

    def __init__(self, text: str) -> None:
        self.data = text.encode()
        self.starts = [0]
        for line in self.data.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))

    def span(self, node: ast.stmt | ast.expr) -> tuple[int, int]:
        end_line = node.end_lineno if node.end_lineno is not None else node.lineno
        end_col = node.end_col_offset if node.end_col_offset is not None else node.col_offset
        return self.starts[node.lineno - 1] + node.col_offset, self.starts[end_line - 1] + end_col

    def segment(self, node: ast.expr) -> str:
        begin, end = self.span(node)
        return self.data[begin:end].decode()

    def splice(self, edits: list[tuple[ast.stmt, str]]) -> str:
        """The text with each statement's span replaced."""
        out, at = [], 0
        for node, replacement in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset)):
            begin, end = self.span(node)
            out += [self.data[at:begin], replacement.encode()]
            at = end
        out.append(self.data[at:])
        return b"".join(out).decode()


def _bound_names(tree: ast.AST) -> set[str]:
    """Names the tests themselves define or import (a helper of the tests is not the candidate)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names
                         if not (isinstance(node, ast.Import) and a.name == "math" and a.asname in (None, "math")))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


class _Rewriter(ast.NodeVisitor):
    def __init__(self, source: _Source, candidates: set[str], shadowed: set[str]) -> None:
        self.source = source
        self.candidates = candidates
        self.shadowed = shadowed
        self.checks: list[Check] = []
        self.edits: list[tuple[ast.stmt, str]] = []

    # Assertions are rewritten only where each one runs every time its block runs: in module and
    # function bodies and loops. Under if/try/with/while an assertion may legitimately not run, or
    # its AssertionError may be caught: those tests stay on the old path.
    def _guarded(self, node: ast.AST) -> None:
        if any(isinstance(n, ast.Assert) for n in ast.walk(node)):
            raise Unsupported(type(node).__name__)

    visit_If = visit_Try = visit_With = visit_While = visit_Match = _guarded
    visit_TryStar = visit_AsyncWith = visit_AsyncFunctionDef = visit_ClassDef = _guarded

    def visit_Assert(self, node: ast.Assert) -> None:
        holes = _holes(node.test, self.candidates)
        index = len(self.checks)
        source = self.source.segment(node.test)
        if len(holes) > 1:
            raise Unsupported("more than one value from the sandbox in one assertion")
        hole_source = self.source.segment(holes[0]) if holes else None
        # The check is the assertion's own expression with the hole swapped for a name (the assertion
        # itself is replaced in the text, so its tree can be taken over without a copy).
        expr = _swap(node.test, holes[0], ast.Name(HOLE, ast.Load())) if holes else node.test
        if self.shadowed & {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}:
            raise Unsupported("a name the tests rebind")  # HumanEval/38 compares with a local `str`
        self.checks.append(Check(index, expr, recorded=bool(holes), source=source))
        self.edits.append((node, f"_cw_record({index}, lambda: ({hole_source}))" if holes else "pass"))


def _swap(tree: ast.expr, target: ast.expr, replacement: ast.expr) -> ast.expr:
    """``tree`` with the node ``target`` (by identity) replaced, in place."""
    if tree is target:
        return replacement
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is target:
                setattr(parent, name, replacement)
                return tree
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is target:
                        value[i] = replacement
                        return tree
    raise Unsupported("hole not found")


def _is_call_of_candidate(node: ast.expr, candidates: set[str]) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return False
    if node.func.id in candidates:
        return True
    return (node.func.id in _MATERIALISERS and len(node.args) == 1 and not node.keywords
            and _is_call_of_candidate(node.args[0], candidates))


def _holes(node: ast.expr, candidates: set[str]) -> list[ast.expr]:
    """The subexpressions that must come from the sandbox; raises Unsupported where a part is neither
    one nor something the trusted evaluator does."""
    if _is_call_of_candidate(node, candidates):
        return [node]
    if isinstance(node, ast.Constant):
        return []
    if isinstance(node, ast.Name):
        if node.id in _CONSTANT_NAMES or node.id in _SAFE_FUNCS:
            return []
        raise Unsupported(f"name {node.id}")
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _SAFE_MATH:
            return []
        raise Unsupported("attribute")
    children: list[ast.expr]
    if isinstance(node, ast.Call):
        func = node.func
        safe = (isinstance(func, ast.Name) and func.id in _SAFE_FUNCS) or (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math"
            and func.attr in _SAFE_MATH)
        if not safe or any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords):
            raise Unsupported("call")
        children = [*node.args, *(k.value for k in node.keywords)]
    elif isinstance(node, ast.Compare):
        for op, left, right in zip(node.ops, [node.left, *node.comparators[:-1]], node.comparators, strict=True):
            if isinstance(op, (ast.Is, ast.IsNot)) and not any(
                    isinstance(x, ast.Constant) and any(x.value is s for s in _SINGLETONS) for x in (left, right)):
                raise Unsupported("identity with something other than None/True/False")
        children = [node.left, *node.comparators]
    elif isinstance(node, ast.BoolOp):
        children = list(node.values)
    elif isinstance(node, ast.UnaryOp):
        children = [node.operand]
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        children = [node.left, node.right]
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        children = list(node.elts)
    elif isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise Unsupported("dict unpacking")
        children = [*(k for k in node.keys if k is not None), *node.values]
    elif isinstance(node, ast.Subscript):
        children = [node.value, node.slice]
    elif isinstance(node, ast.Slice):
        children = [x for x in (node.lower, node.upper, node.step) if x is not None]
    else:
        raise Unsupported(type(node).__name__)
    return [hole for child in children for hole in _holes(child, candidates)]


# ---------------------------------------------------------------------------------------------------
# the trusted evaluator


def _evaluate(node: ast.expr, value: Any) -> Any:
    """``node`` over plain data, ``HOLE`` standing for ``value``. Raises on anything unexpected (the
    check then fails)."""
    if isinstance(value, Opaque):
        raise Unsupported(f"the program returned {value!r}")
    return _Eval(value).run(node)


class _Eval:
    def __init__(self, value: Any) -> None:
        self.value = value

    def run(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id == HOLE:
                return self.value
            if node.id in _CONSTANT_NAMES:
                return _CONSTANT_NAMES[node.id]
            return _SAFE_FUNCS[node.id]
        if isinstance(node, ast.Attribute):
            return _SAFE_MATH[node.attr]
        if isinstance(node, ast.Call):
            func = _SAFE_MATH[node.func.attr] if isinstance(node.func, ast.Attribute) else self.run(node.func)
            args = [self.run(a) for a in node.args]
            kwargs = {k.arg: self.run(k.value) for k in node.keywords if k.arg is not None}
            if any(isinstance(a, Opaque) for a in (*args, *kwargs.values())):
                raise Unsupported("opaque value")
            return func(*args, **kwargs)
        if isinstance(node, ast.Compare):
            left = self.run(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.run(comparator)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):
            result: Any = None
            for v in node.values:
                result = self.run(v)
                if isinstance(node.op, ast.And) != bool(result):
                    return result
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self.run(node.operand)
            ops: dict[type, Callable[[Any], Any]] = {ast.Not: operator.not_, ast.USub: operator.neg,
                                                    ast.UAdd: operator.pos, ast.Invert: operator.invert}
            return ops[type(node.op)](operand)
        if isinstance(node, ast.BinOp):
            left, right = self.run(node.left), self.run(node.right)
            if isinstance(node.op, (ast.Mult, ast.Pow)) and not all(
                    isinstance(x, (int, float, complex)) for x in (left, right)):
                raise Unsupported("repetition of a sequence")  # no memory bombs in the grader
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise Unsupported("large power")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.List):
            return [self.run(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.run(e) for e in node.elts)
        if isinstance(node, ast.Set):
            return {self.run(e) for e in node.elts}
        if isinstance(node, ast.Dict):
            return {self.run(k): self.run(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
        if isinstance(node, ast.Subscript):
            return self.run(node.value)[self.run(node.slice)]
        if isinstance(node, ast.Slice):
            parts = [None if x is None else self.run(x) for x in (node.lower, node.upper, node.step)]
            return slice(*parts)
        raise Unsupported(type(node).__name__)


# ---------------------------------------------------------------------------------------------------
# the verdict


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


def judge(checks: tuple[Check, ...], records: Records) -> Verdict:
    """Whether the run passes every check: the tests ran to the end, every recorded assertion has at
    least one record (one per time it ran), and each record satisfies its check."""
    if records.malformed:
        return Verdict(False, f"unreadable records: {records.malformed}")
    by_index: dict[int, list] = {}
    for r in records.records:
        if r.index >= len(checks) or not checks[r.index].recorded:
            return Verdict(False, f"a record for assertion {r.index + 1}, which records nothing")
        by_index.setdefault(r.index, []).append(r)
    for check in checks:
        if not check.recorded:
            if not _holds(check.expr, None):
                return Verdict(False, f"assertion {check.index + 1} ({check.source[:80]}) is false")
            continue
        if check.index not in by_index and records.done:
            return Verdict(False, f"assertion {check.index + 1} ({check.source[:80]}) never ran")
        for r in by_index.get(check.index, []):
            if r.raised is not None:
                return Verdict(False, f"assertion {check.index + 1} ({check.source[:80]}): raised {r.raised}")
            try:
                value = decode(r.value)
            except CanonicalError as exc:
                return Verdict(False, f"assertion {check.index + 1}: {exc}")
            if not _holds(check.expr, value):
                return Verdict(False, f"assertion {check.index + 1} ({check.source[:80]}) failed: "
                                      f"got {_short(value)}")
    if not records.done:
        return Verdict(False, "the tests did not run to their end")
    return Verdict(True, "")


def _holds(expr: ast.expr, value: Any) -> bool:
    try:
        return bool(_evaluate(expr, value))  # plain built-in data: its truth is the built-in one
    except Exception:  # a TypeError comparing a str with an int: the assertion does not hold
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
