"""Answer extraction and grading, on hand-written cases and on the real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from consistency_worker.data.loaders import load_problems
from consistency_worker.data.numbers import canonical_number
from consistency_worker.data.problems import Problem
from consistency_worker.grading.answers import extract_choice, extract_math_answer, math_answers_match
from consistency_worker.grading.code import build_program, extract_code, run_tests
from consistency_worker.grading.grade import Grade, grade, grade_many
from consistency_worker.sandbox.pool import join_program, run_many

# MBPP reference solutions that fail their own tests. Every one of the 974 passes in this sandbox
# (mbpp/123, summing amicable numbers below 10,000, needs ~8 s of CPU: the test allows 60 s).
MBPP_KNOWN_BROKEN: frozenset[str] = frozenset()

# ---------------------------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("The answer is $18.00.", "18"),
        ("So the total is \\boxed{42}.", "42"),
        ("Answer: -7", "-7"),
        ("The final answer is: **12**", "12"),
        ("Step 1: 3 apples\n**Total: 15 apples**\nThanks!", "15"),
        ("First 3, then 4, then 5", "5"),
        ("The answer is 25%.", "25"),
        ("It costs €1,000,000 in total.", "1000000"),
        ("She runs 3.50 km", "3.5"),
        ("#### 0.50", "0.5"),
        ("Answer: 3 + 4 = 7", "7"),
        ("The temperature is −5 degrees", "-5"),
        ("pages 10-20", "20"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("The answer is 1/2", "0.5"),
        ("The answer is 5 km.", "5"),
        ("The answer is 12.", "12"),
        # rambling into a made-up next question: the first #### wins
        ("#### 18\n\nQuestion: Tom has 3 cars and buys 4. How many?\n#### 7", "18"),
        # #### beats every other marker, wherever it is
        ("The answer is 2 apples for Tom.\nThen 2 + 5 = 7\n#### 7", "7"),
        ("\\boxed{3}\n#### 7", "7"),
        # the last boxed, the last "answer is": earlier ones are intermediate results
        ("The answer is 18. Now another: \\boxed{9}", "9"),
        ("First \\boxed{4}, corrected: \\boxed{5}", "5"),
        ("The answer to part one is 6 eggs.\nSo the answer is 12.", "12"),
        ("The answer is 18.\nAfter checking, the final answer is 19.", "19"),
        # LaTeX digit grouping
        ("The final answer is $\\boxed{1{,}080}$.", "1080"),
        ("\\boxed{1\\,080}", "1080"),
        ("\\boxed{\\$2{,}500.00}", "2500"),
        ("So we get $12{,}345$ dollars.", "12345"),
        ("\\boxed{\\dfrac{1{,}000}{8}}", "125"),
        # "2 points/answer = 48" is arithmetic, not an answer marker (a real GSM8K solution)
        ("He earned 24 answers * 2 points/answer = 48 points.\n#### 66", "66"),
        # issue 19: the answer is the first number after the marker, not later arithmetic on its line
        ("The answer is 5 apples. Check: 5*2=10", "5"),
        ("The answer is 15. Janet had 3 + 4 = 7 eggs left", "15"),
        ("the answer is 120 km, because speed = 60 km/h and time = 2 h", "120"),
        ("#### 5 apples = 10 halves", "5"),
        ("So the answer is $3 \\times 4 = 12$ cookies.", "12"),
        # digit grouping by spaces, scientific forms
        ("The answer is 1 200.", "1200"),
        ("#### 1\u2009200", "1200"),
        ("It weighs 1\u202f200 g", "1200"),
        ("The answer is 1.5e3", "1500"),
        ("Answer: 2 x 10^3", "2000"),
        ("\\boxed{2 \\times 10^{3}}", "2000"),
        ("The answer is 5 120 km away? no: 7", "5120"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_math_answer(completion: str, expected: str | None) -> None:
    assert extract_math_answer(completion) == expected


def test_math_answers_match_numerically() -> None:
    assert math_answers_match("so it is 18.0 dollars\n#### $18.00", "18")
    assert math_answers_match("#### 1,000", "1000")
    assert math_answers_match("The answer is 1000", "1,000")
    assert math_answers_match("Answer: 0.5", ".5")
    assert not math_answers_match("#### 17", "18")
    assert not math_answers_match("I don't know", "18")
    assert not math_answers_match("#### 18", "")
    # a gold solution given whole grades by its #### line
    assert math_answers_match("#### 64", "blah 48 + 16 = 64\n#### 64")


def test_canonical_number() -> None:
    assert canonical_number("1,234.50") == "1234.5"
    assert canonical_number("-0.0") == "0"
    assert canonical_number("100") == "100"
    assert canonical_number("1e3 things") == "1000"
    assert canonical_number("nothing") is None


def test_every_gsm8k_gold_solution_matches_its_answer(shared_datasets: Path) -> None:
    for split in ("train", "test"):
        report = load_problems({"name": f"gsm8k-{split}", "uri": str(shared_datasets / "gsm8k" / f"{split}.jsonl"),
                                "format": "gsm8k"})
        assert len(report.problems) == {"train": 7473, "test": 1319}[split]
        raw = [line for line in (shared_datasets / "gsm8k" / f"{split}.jsonl").read_text().splitlines() if line]
        import json

        mismatched = [i for i, line in enumerate(raw) if not math_answers_match(json.loads(line)["answer"],
                                                                               report.problems[i].answer or "")]
        assert mismatched == [], f"{split}: {mismatched[:10]}"
        # the stored (calculator-stripped) solution grades the same
        assert all(math_answers_match(p.solution or "", p.answer or "") for p in report.problems)


def _gsm8k_rows(shared_datasets: Path, split: str = "test") -> list[dict[str, str]]:
    import json

    return [json.loads(line) for line in (shared_datasets / "gsm8k" / f"{split}.jsonl").read_text().splitlines()
            if line]


def _intermediates(solution: str) -> list[str]:
    """Numbers a worked solution computes before its final line (its <<a*b=c>> results)."""
    import re

    return re.findall(r"=(-?[\d.]+)>>", solution)


def test_model_style_completions_on_gsm8k_grade_the_final_answer(shared_datasets: Path) -> None:
    """Every GSM8K test problem, written out the ways chat models end their answers: LaTeX-boxed with
    {,} thousands separators, an intermediate "answer is" before the final one, a #### line followed by
    chatter with other numbers. The earliest-marker rule got these wrong (1{,}080 graded as 1)."""
    rows = _gsm8k_rows(shared_datasets)
    wrong: list[tuple[int, str, str | None]] = []
    big = 0
    for i, row in enumerate(rows):
        gold = canonical_number(row["answer"].rsplit("####", 1)[1])
        assert gold is not None
        body = row["answer"].rsplit("####", 1)[0].strip()
        steps = _intermediates(row["answer"]) or ["0"]
        if "." not in gold and abs(int(gold)) >= 1000:
            big += 1
            grouped = f"{int(gold):,}".replace(",", "{,}")
        else:
            grouped = gold
        styles = [
            f"{body}\n\nThe final answer is $\\boxed{{{grouped}}}$.",
            f"For the first part the answer is {steps[0]}.\n{body}\nSo the answer is {gold}.",
            f"{body}\n#### {gold}\n\nQuestion: a made-up follow-up costs {steps[-1]}?\nThe answer is 3.",
            f"The answer is {steps[0]} for now. {body}\n#### {gold}",
        ]
        for text in styles:
            got = extract_math_answer(text)
            if not math_answers_match(text, gold):
                wrong.append((i, text[-60:], got))
    assert big > 100  # the {,} case is common, not an edge case
    assert wrong == [], wrong[:5]


# ------------------------------------------------------------------------------------------- choices


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("(B)", "B"),
        ("Answer: C", "C"),
        ("The correct option is D) because it is larger.", "D"),
        ("**A**", "A"),
        ("B", "B"),
        ("B.", "B"),
        ("The answer is (c).", "C"),
        ("Answer: **D**", "D"),
        ("The correct answer is: B", "B"),
        ("C. Paris is the capital of France.", "C"),
        ("A) x\nB) y\nLooking at both, the answer is B", "B"),
        # the last commitment wins; weighing "option A" is not choosing it
        ("Option A is tempting, but option B fits better.\nAnswer: B", "B"),
        ("Let's look at choice A first. It fails. Choice D works.\nThe answer is D.", "D"),
        ("The answer is A? No: re-reading, the answer is C.", "C"),
        ("So the final result is $\\boxed{C}$", "C"),
        ("\\boxed{\\text{B}}", "B"),
        ("Reasoning...\n(D) is correct since 7 * 8 = 56.", "D"),
        ("Thinking it over.\nB. Queue", "B"),
        ("A. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium", None),
        ("I think the answer is a bit unclear", None),
        ("Between (A) and (C), hard to say", None),
        # issue 19: phrasings that returned no letter
        ("The best answer is option C", "C"),
        ("Answer: Option B", "B"),
        ("I would choose B", "B"),
        ("... not A; it is C", "C"),
        ("The answer is not A; it is C.", "C"),
        ("I'll go with option D.", "D"),
        ("I would choose a different approach", None),
        ("no idea", None),
        ("", None),
    ],
)
def test_extract_choice(completion: str, expected: str | None) -> None:
    assert extract_choice(completion) == expected


def _mmlu_rows() -> list[Problem]:
    return load_problems({"uri": str(Path(__file__).parent / "data" / "mmlu_sample.csv"),
                          "format": "mmlu"}).problems


def test_reasoning_style_completions_on_mmlu_rows_grade_the_final_choice() -> None:
    """Each MMLU row answered the way instruction-tuned models write: the options weighed one by one
    (naming wrong ones first), then a commitment in one of the usual forms."""
    problems = _mmlu_rows()
    assert len(problems) == 8
    for p in problems:
        gold = p.answer or ""
        others = [x for x in "ABCD" if x != gold]
        weighing = (f"Let's consider option {others[0]}: {p.choices['ABCD'.index(others[0])]}. That does not fit.\n"
                    f"Choice {others[1]} ({p.choices['ABCD'.index(others[1])]}) is also wrong.\n")
        forms = [f"Answer: {gold}", f"Therefore, the answer is ({gold}).", f"$\\boxed{{{gold}}}$",
                 f"**{gold}**", f"{gold}. {p.choices['ABCD'.index(gold)]}"]
        for form in forms:
            completion = weighing + form
            assert extract_choice(completion) == gold, completion
            assert grade(p, completion).correct, completion
        # an answer revised at the end: the last one counts
        revised = f"The answer is {others[2]}.\nWait, that is wrong: {weighing}The answer is {gold}."
        assert extract_choice(revised) == gold


# ---------------------------------------------------------------------------------------------- code


def test_extract_code() -> None:
    fenced = "Here you go:\n```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\n```"
    assert extract_code(fenced) == "def f(x):\n    return x"
    assert extract_code("```\ndef g():\n    pass\n```") == "def g():\n    pass"
    assert extract_code("def h():\n    return 1\n") == "def h():\n    return 1"
    truncated = "```python\ndef f(x):\n    return x + 1"
    assert extract_code(truncated) == "def f(x):\n    return x + 1"
    two = "```python\ndef helper():\n    pass\n```\n```python\ndef target():\n    return 2\n```"
    assert extract_code(two, entry_point="target") == "def target():\n    return 2"


def test_run_tests_statuses() -> None:
    assert run_tests("def add(a, b):\n    return a + b", "assert add(1, 2) == 3").status == "passed"
    failed = run_tests("def add(a, b):\n    return a - b", "assert add(1, 2) == 3")
    assert (failed.passed, failed.status) == (False, "failed")
    assert run_tests("def add(a, b):\n    while True: pass", "assert add(1, 2) == 3", timeout_s=0.5).status == "timeout"
    assert run_tests("def add(a, b) return", "assert add(1, 2) == 3").status == "error"
    completion = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nHope this helps."
    assert run_tests(completion, "assert add(2, 2) == 4").passed


def _humaneval() -> list[Problem]:
    return load_problems({"uri": "builtin://humaneval", "format": "humaneval"}).problems


def _perturb_source(entry_point: str) -> str:
    # Wrap the correct function so every result is slightly wrong: the tests must notice.
    return f"""
_original = {entry_point}
def _wrong(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + [None]
    if isinstance(value, tuple):
        return value + (None,)
    if value is None:
        return 0
    return None
def {entry_point}(*args, **kwargs):
    return _wrong(_original(*args, **kwargs))
"""


def test_humaneval_canonical_solutions_pass_and_broken_variants_fail() -> None:
    problems = _humaneval()
    assert len(problems) == 164
    good = [join_program(build_program(p, p.solution or ""), p.tests or "") for p in problems]
    broken = [join_program(build_program(p, p.solution or "") + _perturb_source(p.entry_point or ""), p.tests or "")
              for p in problems]
    results = run_many(good + broken, timeout_s=20)
    failing_good = [(p.id, r.status, r.reason) for p, r in zip(problems, results[:164], strict=True) if not r.passed]
    passing_broken = [p.id for p, r in zip(problems, results[164:], strict=True) if r.passed]
    assert failing_good == []
    assert passing_broken == []
    # broken answers are reported as failures of the tests, not as crashes of the harness
    assert sum(r.status == "failed" for r in results[164:]) > 120


def test_humaneval_completion_styles() -> None:
    problem = next(p for p in _humaneval() if p.entry_point == "has_close_elements")
    body_only = (problem.solution or "")[len(problem.prompt):]
    assert grade(problem, body_only).correct  # a completion that continues the prompt
    full = f"```python\nfrom typing import List\n\n{problem.solution}\n```"
    assert grade(problem, full).correct  # a chat answer with the whole function
    assert not grade(problem, "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```").correct


@pytest.mark.slow
def test_mbpp_reference_solutions_pass(shared_datasets: Path) -> None:
    problems = load_problems({"uri": str(shared_datasets / "mbpp" / "mbpp.jsonl"), "format": "mbpp"}).problems
    assert len(problems) == 974
    results = run_many([join_program(p.solution or "", p.tests or "") for p in problems], timeout_s=60)
    failing = {p.id for p, r in zip(problems, results, strict=True) if not r.passed}
    assert failing == MBPP_KNOWN_BROKEN, sorted(failing)
    # the same through grade_many: the grader's own comparisons on the values the programs returned
    grades = grade_many([(p, p.solution or "") for p in problems], timeout_s=60)
    assert {p.id for p, g in zip(problems, grades, strict=True) if not g.correct} == MBPP_KNOWN_BROKEN


# ------------------------------------------------------------------------------------- grade dispatch


def test_grade_and_grade_many_dispatch_by_domain() -> None:
    math = Problem(id="m", domain="math", prompt="2+3?", answer="5")
    mc = Problem(id="r", domain="reasoning", prompt="Pick", choices=("a", "b", "c", "d"), answer="C")
    code = Problem(id="c", domain="code", prompt="add", tests="assert add(1, 2) == 3", entry_point="add")
    assert grade(math, "#### 5") == Grade(correct=True, answer="5")
    assert grade(mc, "Answer: B") == Grade(correct=False, answer="B")
    pairs = [
        (math, "The answer is 6"),
        (code, "```python\ndef add(a, b):\n    return a + b\n```"),
        (mc, "(C)"),
        (code, "def add(a, b):\n    return 0"),
    ]
    grades = grade_many(pairs, workers=2)
    assert [g.correct for g in grades] == [False, True, True, False]
    assert [g.answer for g in grades][:3] == ["6", "pass", "C"]
    # a wrong program votes with the digest of what it returned; the grader's verdict names the assertion
    assert (grades[3].answer or "").startswith("v")
    assert grades[3].detail == "failed: assertion 1 (add(1, 2) == 3) failed: got 0"


@pytest.mark.parametrize(
    ("completion", "cut_off_answer", "full_answer"),
    [
        # cut off mid-working: the last number is an intermediate value, not an answer
        ("Janet has 16 eggs. She eats 3, so 16 - 3 = 13. Then she bakes with 4, so 13 - 4 = 9. Selling",
         None, "9"),
        ("Step 1: **3 apples**. Step 2: 3 * 4", None, "3"),  # a bold span is no final-answer marker
        # a final-answer marker before the cut still answers
        ("16 - 3 - 4 = 9, 9 * 2 = 18.\n#### 18\n\nQuestion: Tom has", "18", "18"),
        ("So the answer is 18. Let me double-check: 16 - 3", "18", "18"),
        ("Thus \\boxed{18}. Now, a similar problem: 4 + ", "18", "18"),
    ],
)
def test_cut_off_math_answer_needs_a_final_answer_marker(completion: str, cut_off_answer: str | None,
                                                        full_answer: str) -> None:
    assert extract_math_answer(completion, cut_off=True) == cut_off_answer
    assert extract_math_answer(completion) == full_answer


def test_cut_off_choice_needs_a_commitment() -> None:
    reasoning = "Option A is about X.\nB. would mean"
    assert extract_choice(reasoning) == "B"
    assert extract_choice(reasoning, cut_off=True) is None
    assert extract_choice("Hmm. The answer is C. Let me verify option", cut_off=True) == "C"


def test_cut_off_grades_as_no_answer() -> None:
    math = Problem(id="m", domain="math", prompt="2+3?", answer="9")
    mc = Problem(id="r", domain="reasoning", prompt="Pick", choices=("a", "b", "c", "d"), answer="B")
    text = "16 - 3 = 13, 13 - 4 = 9"
    assert grade(math, text) == Grade(correct=True, answer="9")
    assert grade(math, text, cut_off=True) == Grade(correct=False, answer=None)
    grades = grade_many([(math, text), (math, text), (mc, "B. would"), (mc, "Answer: B")],
                        cut_off=[False, True, True, True])
    assert [(g.answer, g.correct) for g in grades] == [("9", True), (None, False), (None, False), ("B", True)]
    with pytest.raises(ValueError, match="cut_off has 1 flags for 2"):
        grade_many([(math, text), (math, text)], cut_off=[True])
