"""Code consistency on real MBPP problems: samples agree when they return the same values (and raise the
same exception types) on every recorded test call, not merely when they all fail.
Before, five different wrong programs counted as a consistent problem (all
"fail"), so with k=5 the modal share of code was always >= 0.6 and neither the 1B.1 agreement filter nor
the 1B.2 "agreement < 0.30" failure rule could ever act on code."""

from __future__ import annotations

import json
from pathlib import Path

from consistency_core.spec import AgreementFilter
from consistency_worker.data.loaders import load_problems
from consistency_worker.data.problems import Problem
from consistency_worker.grading.grade import grade_many
from consistency_worker.grading.selection import LOW_AGREEMENT, decide_consistent
from consistency_worker.grading.voting import failure
from consistency_worker.stages.evaluate import outcome_of, per_problem_row, summarise
from consistency_worker.store.generations import Completion, GenerationRecord


def _mbpp(shared: Path, n: int) -> list[Problem]:
    problems = load_problems({"name": "mbpp", "uri": str(shared / "mbpp" / "mbpp.jsonl"), "format": "mbpp",
                              "split": "test"}).problems
    return problems[:n]


def _variants(p: Problem) -> list[str]:
    """Five programs a model might write: the reference; one that is right except on the first test's
    input; one returning a constant; one that raises; one off by a wrapper."""
    ref = p.solution or ""
    entry = p.entry_point
    first_call = p.examples[0].split("assert", 1)[1].split("==")[0].strip()
    return [
        f"```python\n{ref}\n```",
        f"```python\n{ref}\n_right = {entry}\ndef {entry}(*a, **k):\n"
        f"    return None if repr(a) == repr(({first_call.split('(', 1)[1].rsplit(')', 1)[0]},)) "
        f"else _right(*a, **k)\n```",
        f"```python\ndef {entry}(*a, **k):\n    return 0\n```",
        f"```python\ndef {entry}(*a, **k):\n    raise NotImplementedError\n```",
        f"```python\n{ref}\n_orig = {entry}\ndef {entry}(*a, **k):\n    return [_orig(*a, **k)]\n```",
    ]


def test_signatures_separate_different_wrong_programs_on_mbpp(shared_datasets: Path) -> None:
    problems = _mbpp(shared_datasets, 12)
    pairs = [(p, text) for p in problems for text in _variants(p)]
    grades = grade_many(pairs, timeout_s=20)
    by_problem = [grades[i * 5:(i + 1) * 5] for i in range(len(problems))]
    for p, gs in zip(problems, by_problem, strict=True):
        assert gs[0].correct and gs[0].answer == "pass", (p.id, gs[0])
        assert "raised NotImplementedError" in gs[3].detail, (p.id, gs[3])  # every call raised
        assert all(not g.correct for g in gs[2:]), p.id
        # five different behaviours, five different answers (values returned, exceptions raised)
        assert len({g.answer for g in gs}) == 5, (p.id, [g.answer for g in gs])
    # one wrong input only: the grader names the first assertion as the one that failed
    partial = [gs[1].detail for gs in by_problem]
    assert sum(d.startswith("failed: assertion 1 (") for d in partial) >= 8, partial

    # five samples per problem: the reference is the greedy answer, the four others are the samples
    records = [GenerationRecord(problem_id=p.id, domain="code", stratum=p.stratum,
                                greedy=Completion(text=pairs[i * 5][1], answer=gs[0].answer, correct=gs[0].correct),
                                samples=[Completion(text=pairs[i * 5 + j][1], answer=g.answer, correct=g.correct)
                                         for j, g in enumerate(gs[1:], start=1)])
               for i, (p, gs) in enumerate(zip(problems, by_problem, strict=True))]
    outcomes = [outcome_of(r) for r in records]
    summary = summarise(outcomes)
    # four different failing behaviours per problem: never consistent (was: every problem consistent)
    assert summary["consistencyByDomain"] == {"code": 0.0}
    assert all(o.vote.agreement <= 0.5 for o in outcomes)
    # the 1B.2 failure rule can now fire for code on disagreement alone
    assert all(failure(None, o.vote, min_agreement=0.3).failed == (o.vote.agreement < 0.3) for o in outcomes)
    # unbiased pass@1 from the samples beside the greedy pass@1
    assert summary["accuracy"] == {"code": 1.0}
    assert summary["passAt1"]["code"] == round(sum(o.samples_correct / 4 for o in outcomes) / len(outcomes), 4)
    # and the 1B.1 agreement filter (minAgreement 0.6) drops them: their samples do not agree
    rule = AgreementFilter(minAgreement=0.6)
    assert {decide_consistent(r, rule, seed=1).reason for r in records} == {LOW_AGREEMENT}
    rows = [per_problem_row(o, r) for o, r in zip(outcomes, records, strict=True)]
    assert all(r["samplesGraded"] == 4 for r in rows)
    json.dumps(summary)


def test_consistency_given_a_correct_sample() -> None:
    def rec(pid: str, answers: list[tuple[str, bool]]) -> GenerationRecord:
        return GenerationRecord(problem_id=pid, domain="code", greedy=Completion(text="", answer="pass", correct=True),
                                samples=[Completion(text="", answer=a, correct=c) for a, c in answers])

    records = [rec("all-pass", [("pass", True)] * 5),          # consistent, has a correct sample
               rec("all-same-fail", [("FFF", False)] * 5),     # consistent, but no correct sample
               rec("mixed", [("pass", True)] * 3 + [("PFF", False)] * 2)]
    summary = summarise([outcome_of(r) for r in records])
    assert summary["consistencyByDomain"]["code"] == round(2 / 3, 4)
    assert summary["consistencyGivenCorrect"]["code"] == 0.5  # of all-pass and mixed, one is consistent
    assert summary["passAt1"]["code"] == round((1 + 0 + 0.6) / 3, 4)
    assert summary["byDomain"]["code"]["problems_with_correct"] == 2


def test_instrumented_humaneval_grades_like_the_plain_harness() -> None:
    """The grader's own comparisons must not change a verdict: all 164 HumanEval canonical solutions
    pass, and each broken variant fails, through grade_many (rewritten tests, and the old path for the
    few that do not rewrite)."""
    from tests.worker.test_grading import _humaneval, _perturb_source

    problems = _humaneval()
    good = [(p, p.solution or "") for p in problems]
    broken = [(p, (p.solution or "") + _perturb_source(p.entry_point or "")) for p in problems]
    grades = grade_many(good + broken, timeout_s=20)
    assert [p.id for p, g in zip(problems, grades[:164], strict=True) if not (g.correct and g.answer == "pass")] == []
    wrong = grades[164:]
    assert not any(g.correct for g in wrong)
    signature_chars = set("PFEh0123456789abcdef")  # the old path's signatures, for tests that do not rewrite
    assert all(g.answer in ("timeout", "error") or (g.answer or "").startswith("v")
               or set(g.answer or "x") <= signature_chars for g in wrong)
    assert sum((g.answer or "").startswith("v") for g in wrong) > 140  # most are the grader's own verdicts
    # signatures carry more than pass/fail: broken variants differ in which assertions they fail
    assert len({g.answer for g in wrong}) > 20
