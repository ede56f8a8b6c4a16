"""The grader cannot be fooled: every reward hack in ``reward_hacks.ATTACKS`` grades as a failure, in the
sandbox's unprivileged mode (no namespaces, no cgroup, the worker's own uid: what a default pod gets),
while a correct program for each problem passes. Also the pure parts: assertion rewriting, the trusted
evaluator and the canonical encoding."""

from __future__ import annotations

import pytest
from consistency_worker.data.problems import Problem
from consistency_worker.grading.canonical import CanonicalError, Opaque, Records, decode, parse_records, records_digest
from consistency_worker.grading.code import code_grading_metrics, has_trusted_tests, run_tests
from consistency_worker.grading.grade import grade_many
from consistency_worker.grading.trusted_tests import judge, rewrite
from consistency_worker.sandbox import pool as sandbox_mod
from consistency_worker.sandbox.pool import Sandbox
from consistency_worker.sandbox.types import SandboxConfig

from tests.worker.reward_hacks import ATTACKS, HONEST, PROBLEMS


@pytest.fixture(scope="module")
def unprivileged() -> Sandbox:
    """The default sandbox replaced by one in unprivileged mode for this module's grading."""
    before = sandbox_mod._default
    with Sandbox(SandboxConfig(namespaces=False, cgroups=False, fresh_uid=False)) as sb:
        sandbox_mod._default = sb
        try:
            yield sb
        finally:
            sandbox_mod._default = before


def test_every_problem_is_passable_by_an_honest_program(unprivileged: Sandbox) -> None:
    grades = grade_many([(PROBLEMS[k], c) for k, c in HONEST.items()])
    assert [(k, g.correct, g.answer) for k, g in zip(HONEST, grades, strict=True)] == \
        [(k, True, "pass") for k in HONEST]
    assert all(has_trusted_tests(p) for p in PROBLEMS.values())


def test_reward_hacks_grade_as_failures(unprivileged: Sandbox) -> None:
    assert len(ATTACKS) >= 14
    grades = grade_many([(PROBLEMS[key], completion) for _, key, completion in ATTACKS], timeout_s=10)
    fooled = [(name, g.detail) for (name, _, _), g in zip(ATTACKS, grades, strict=True) if g.correct]
    assert fooled == []
    assert all(g.answer != "pass" for g in grades)
    # the failures are the grader's: each names the assertion it judged or the unfinished run
    assert all("assertion" in g.detail or "did not run to their end" in g.detail for g in grades), \
        [g.detail for g in grades]


def test_run_tests_gives_the_graders_verdict(unprivileged: Sandbox) -> None:
    liar = "class L(int):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return L(0)"
    assert not run_tests(liar, "assert add(1, 2) == 3").passed
    assert run_tests("def add(a, b):\n    return a + b", "assert add(1, 2) == 3").passed


def test_code_grading_metrics(unprivileged: Sandbox) -> None:
    loop = Problem(id="loop", domain="code", prompt="p", entry_point="sq",
                   tests="for i in range(3):\n    assert sq(i) == i * i")
    math = Problem(id="m", domain="math", prompt="1+1", answer="2")
    metrics = code_grading_metrics([PROBLEMS["add"], loop, math])
    assert metrics["testsUntrusted"] == 1
    assert "seccomp" in metrics["sandboxLayers"] or not unprivileged.isolation.seccomp
    assert "namespaces" not in metrics["sandboxLayers"]
    assert code_grading_metrics([math]) == {}


# ------------------------------------------------------------------------------ code consistency


def test_different_wrong_programs_disagree(unprivileged: Sandbox) -> None:
    p = PROBLEMS["add"]
    programs = ["def add(a, b):\n    return 7", "def add(a, b):\n    return 99", "def add(a, b):\n    pass",
                "def add(a, b):\n    return 7", "def add(a, b):\n    raise ValueError",
                "def add(a, b):\n    raise KeyError", "def add(a, b):\n    return a - b"]
    answers = [g.answer for g in grade_many([(p, c) for c in programs])]
    assert answers[0] == answers[3]  # the same wrong values agree
    assert len(set(answers)) == len(programs) - 1, answers
    assert all(a is not None and a.startswith("v") for a in answers)


def test_equal_sets_agree_whatever_their_iteration_order(unprivileged: Sandbox) -> None:
    p = Problem(id="s", domain="code", prompt="p", entry_point="words",
                tests="assert words('b a') == {'a', 'b', 'c'}")
    first = "def words(s):\n    return set(s.split())"
    second = "def words(s):\n    out = set()\n    for w in reversed(s.split()):\n        out.add(w)\n    return out"
    a, b = grade_many([(p, first), (p, second)])
    assert not a.correct and a.answer == b.answer


# ------------------------------------------------------------------------------ rewriting (pure)


@pytest.mark.parametrize("tests", [
    "assert f(1) == 2",
    "assert 2 == f(1)",
    "assert abs(f(1) - 2.0) < 1e-6",
    "import math\nassert math.isclose(f(1), 2.0, rel_tol=1e-3)",
    "assert set(f(1)) == set([1, 2])",
    "assert sorted(f(1)) == [1, 2]",
    "assert not f(1)",
    "assert f(1) is True",
    "assert f(1)",
    "assert round(f(1), 2) == 0.5",
    "x = [3, 1]\nassert f(x) == (1, 3)",
    "def check(candidate):\n    assert candidate(1) == 2\n"
    "    for i in range(3):\n        assert candidate(i) != -1\n\ncheck(f)",
    "assert True\nassert f(1) == float('inf')",
])
def test_supported_shapes_rewrite(tests: str) -> None:
    plan = rewrite(tests, frozenset({"f"}))
    assert plan is not None
    # the expected side stays with the grader: none of the checks' constants reach the sandbox script
    assert "== 2" not in plan.script and "1e-06" not in plan.script and "_cw_record(" in plan.script


@pytest.mark.parametrize("tests", [
    "for i in range(3):\n    assert f(i) == i * i",  # expected from a loop variable
    "assert f(1) == f(2)",  # two values from the sandbox
    "if True:\n    assert f(1) == 2",  # may not run
    "try:\n    assert f(1) == 2\nexcept AssertionError:\n    pass",
    "def same(a, b):\n    return a == b\nassert same(f(1), 2)",  # a helper does the comparison
    "from math import isclose\nassert isclose(f(1), 2.0)",
    "str = 'x'\nassert f(1) == str",  # a name the tests rebind
    "assert g(1) == 2",  # not the candidate
    "x = 1",  # nothing to check
    "assert f(1 == 2",  # does not parse
])
def test_unsupported_shapes_do_not_rewrite(tests: str) -> None:
    assert rewrite(tests, frozenset({"f"})) is None


def test_a_builtin_name_is_never_the_candidate() -> None:
    # `abs(...)` as the candidate would send the expected value into the sandbox
    plan = rewrite("assert abs(f(1) - 3) < 0.1", frozenset({"abs", "f"}))
    assert plan is not None and "3" not in plan.script.split("_cw_record(", 1)[1]


def _records(*lines: str) -> Records:
    return parse_records("\n".join(lines))


def test_judge() -> None:
    plan = rewrite("assert f(1) == [1, 2]\nassert abs(f(2) - 0.5) < 0.01\nassert True", frozenset({"f"}))
    assert plan is not None
    ok = _records('{"i": 0, "v": [1, 2]}', '{"i": 1, "v": 0.501}', '{"done": true}')
    assert judge(plan.checks, ok).passed
    assert not judge(plan.checks, _records('{"i": 0, "v": [1, 2]}', '{"done": true}')).passed  # one never ran
    assert not judge(plan.checks, _records('{"i": 0, "v": [1, 2]}', '{"i": 1, "v": 0.501}')).passed  # unfinished
    assert not judge(plan.checks, _records('{"i": 0, "v": {"tuple": [1, 2]}}', '{"i": 1, "v": 0.5}',
                                           '{"done": true}')).passed  # a tuple is not a list
    assert not judge(plan.checks, _records('{"i": 0, "x": "ValueError"}', '{"i": 1, "v": 0.5}',
                                           '{"done": true}')).passed
    assert not judge(plan.checks, _records('{"i": 0, "v": {"opaque": "Liar"}}', '{"i": 1, "v": 0.5}',
                                           '{"done": true}')).passed
    assert not judge(plan.checks, _records('{"i": 2, "v": true}', '{"done": true}')).passed  # records nothing
    assert not judge(plan.checks, _records("passed", '{"done": true}')).passed  # forged text
    # repetition of a returned sequence is refused rather than computed in the grader
    rep = rewrite("assert f(1) * 10 ** 9 == 'x'", frozenset({"f"}))
    assert rep is not None and not judge(rep.checks, _records('{"i": 0, "v": "x"}', '{"done": true}')).passed


def test_canonical_decoding() -> None:
    assert decode({"tuple": [1, {"set": ["a"]}, {"dict": [[{"tuple": [1]}, None]]}]}) == (1, {"a"}, {(1,): None})
    assert decode({"bytes": "6869"}) == b"hi" and decode({"complex": [1, 2]}) == 1 + 2j
    assert isinstance(decode({"opaque": "Gen"}), Opaque)
    for bad in ({"set": [[1]]}, {"weird": 1}, {"dict": [[1]]}, {"a": 1, "b": 2}, {"bytes": "zz"}):
        with pytest.raises(CanonicalError):
            decode(bad)
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    with pytest.raises(CanonicalError):
        decode(deep)
    # digests ignore the order of set members and dict entries, not anything else
    a = _records('{"i": 0, "v": {"set": ["a", "b"]}}', '{"done": true}')
    b = _records('{"i": 0, "v": {"set": ["b", "a"]}}', '{"done": true}')
    c = _records('{"i": 0, "v": ["b", "a"]}', '{"done": true}')
    assert records_digest(a) == records_digest(b) != records_digest(c)
    assert parse_records('{"i": -1, "v": 1}').malformed and parse_records("[1]").malformed
