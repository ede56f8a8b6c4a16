"""Grading model answers: math numbers, multiple-choice letters, code by running its tests.

Public API used by the generate and evaluate stages and by external checks:
``math_answers_match``, ``extract_math_answer``, ``extract_choice``, ``extract_code``, ``run_tests``,
``build_program``, ``grade`` / ``grade_many``.
"""

from __future__ import annotations

import ast
import copy
import functools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

from consistency_worker.data.problems import Problem
from consistency_worker.grading.canonical import parse_records, records_digest
from consistency_worker.grading.trusted_tests import Rewritten, judge, rewrite
from consistency_worker.sandbox.pool import SandboxLimits, TestResult, join_program, run_many, run_program

__all__ = [
    "Grade",
    "TestResult",
    "build_program",
    "canonical_number",
    "code_grading_metrics",
    "extract_choice",
    "extract_code",
    "extract_math_answer",
    "grade",
    "grade_many",
    "has_trusted_tests",
    "instrument_tests",
    "math_answers_match",
    "run_tests",
    "signature_of",
]

# ---------------------------------------------------------------------------------------------------
# numbers

_MINUS = "-\u2212\u2013"  # ASCII hyphen, unicode minus, en dash (models and LaTeX emit all three)
_NUMBER = re.compile(
    # A dash right after a word or number is a range or subtraction ("pages 10-20"), not a sign.
    rf"(?:(?<![\w.)\]])(?P<sign>[{_MINUS}]))?\s*(?:[$€£¥]|\\\$|USD\s*|Rs\.?\s*)?\s*"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    # Scientific forms: 1.5e3, 2 x 10^3, 2 \times 10^{3}, 2*10**3.
    r"(?:(?P<exp>[eE][+\-]?\d+)(?![\w.])"
    r"|\s*(?:[x\u00d7*]|\\times|\\cdot)\s*10\s*(?:\^|\*\*)\s*\{?\s*(?P<pow>[\-\u2212]?\d+)\s*\}?)?"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d.]))?"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")


def canonical_number(text: str) -> str | None:
    """The first number in ``text`` as a canonical decimal string ("1,234.50" -> "1234.5"), or None."""
    value = _first_number(text)
    return None if value is None else _format(value)


def _format(value: Decimal) -> str:
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _to_decimal(match: re.Match[str]) -> Decimal | None:
    try:
        value = Decimal(match.group("num").replace(",", ""))
        if match.group("exp"):
            value = value.scaleb(int(match.group("exp")[1:]))
        elif match.group("pow"):
            value = value.scaleb(int(match.group("pow").replace("\u2212", "-")))
        if match.group("den"):
            den = Decimal(match.group("den"))
            if den == 0:
                return None
            value = value / den
    except InvalidOperation:
        return None
    return -value if match.group("sign") else value


def _first_number(text: str) -> Decimal | None:
    frac = _FRAC.search(text)
    match = _NUMBER.search(text)
    if frac and (match is None or frac.start() <= match.start()):
        try:
            num, den = (Decimal(x.replace(",", "")) for x in frac.groups())
            return None if den == 0 else num / den
        except InvalidOperation:
            return None
    return _to_decimal(match) if match else None


def _last_number(text: str) -> Decimal | None:
    matches = list(_NUMBER.finditer(text))
    return _to_decimal(matches[-1]) if matches else None


# Final-answer markers, in order of precedence (see extract_math_answer).
_HASHES = re.compile(r"####\s*(?P<span>[^\n]*)")
_BOXED = re.compile(r"\\boxed\s*\{(?P<span>(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
# Not "answer =": worked solutions say "2 points/answer = 48" mid-way.
_PHRASE = re.compile(r"(?i)\b(?:final\s+answer|the\s+answer|answer)\s*(?:is\b|:)\s*:?\s*(?P<span>[^\n]*)")
_BOLD = re.compile(r"\*\*(?P<span>[^*\n]+?)\*\*")
# LaTeX digit grouping: 1{,}080 and 1\,080 (thin space) are 1080, not 1 followed by 080.
_LATEX_COMMA = re.compile(r"(?<=\d)\{,\}(?=\d)")
_LATEX_SPACE = re.compile(r"(?<=\d)\\[,!;: ]\s*(?=\d{3}(?!\d))")


# Thin and narrow no-break spaces only ever group digits ("1\u2009200").
_THIN_GROUPING = re.compile(r"(?<=\d)[\u2009\u202f](?=\d{3}(?!\d))")
# Right after a marker a plain or no-break space groups digits too ("The answer is 1 200").
_SPACE_GROUPING = re.compile(r"(?<=\d)[ \u00a0](?=\d{3}(?!\d|[.,]\d))")
_OPERAND = r"[$(]*\s*[\-\u2212]?\d[\d.,]*\s*\)*"
_OPERATOR = r"(?:[-+*/x\u00d7\u00f7\u2212]|\\times|\\cdot|\\div)"
# A marker followed at once by pure arithmetic and "=" ("Answer: 3 + 4 = 7") gives its result.
_LEADING_EQUATION = re.compile(rf"^\s*(?:{_OPERAND}\s*{_OPERATOR}\s*)+{_OPERAND}\s*=\s*")


def _untex(text: str) -> str:
    return _THIN_GROUPING.sub("", _LATEX_SPACE.sub("", _LATEX_COMMA.sub(",", text)))


def _span_number(span: str) -> Decimal | None:
    """The answer a marker introduces: the first number after it. What follows on the line is
    justification ("The answer is 5 apples. Check: 5*2=10" is 5), except that arithmetic standing right
    after the marker is the answer's own working ("Answer: 3 + 4 = 7" is 7)."""
    while (head := _LEADING_EQUATION.match(span)) is not None:
        span = span[head.end():]
    leading = re.match(r"\D*\d[\d \u00a0]*", span)
    if leading is not None:
        span = _SPACE_GROUPING.sub("", leading.group(0)) + span[leading.end():]
    return _first_number(span)


def _marked(pattern: re.Pattern[str], text: str, *, last: bool) -> Decimal | None:
    matches = list(pattern.finditer(text))
    for match in reversed(matches) if last else matches:
        value = _span_number(match.group("span"))
        if value is not None:
            return value
    return None


def extract_math_answer(completion: str, *, cut_off: bool = False) -> str | None:
    """The completion's final numeric answer as a canonical number string, or None.

    Precedence: the first ``#### X`` (GSM8K's format; a model that rambles on into a made-up next
    question repeats it with other numbers); else the last ``\\boxed{...}``; else the last "answer is" /
    "Answer:" phrase; else the last bold span with a number; else the last number. Earlier mentions of
    "the answer" are usually intermediate results, so among the later markers the last one wins. After
    a marker the answer is the first number (see ``_span_number``).

    ``cut_off``: the completion stopped at its token budget. Then only a final-answer marker (####,
    \\boxed, "answer is" / "Answer:") counts: the last number of a cut-off text is an intermediate value,
    so without a marker it has no answer."""
    if not completion:
        return None
    text = _untex(completion)
    value = _marked(_HASHES, text, last=False)
    for pattern in (_BOXED, _PHRASE) if cut_off else (_BOXED, _PHRASE, _BOLD):
        if value is None:
            value = _marked(pattern, text, last=True)
    if value is None and not cut_off:
        value = _last_number(text)
    return None if value is None else _format(value)


def math_answers_match(completion: str, gold: str, *, cut_off: bool = False) -> bool:
    """Whether the completion's final answer equals ``gold`` numerically."""
    got = extract_math_answer(completion, cut_off=cut_off)
    want = canonical_number(gold.split("####")[-1]) if gold else None
    if got is None or want is None:
        return False
    return abs(Decimal(got) - Decimal(want)) <= Decimal("1e-9")


# ---------------------------------------------------------------------------------------------------
# multiple choice

_LETTER = r"(?:\*\*|__)?\s*[(\[]?\s*(?P<letter>[A-Da-d])\s*[)\].:]?(?:\*\*|__)?(?![A-Za-z0-9])"
# A commitment: "answer is X", "Answer: X", "the correct option is X". A bare "option A" / "choice A"
# is the model weighing an option while reasoning, not choosing it.
_OPTION_WORD = r"(?:(?:option|choice)\s+)?"
_CHOICE_MARKER = re.compile(
    r"(?i)(?:\banswer|\b(?:correct|right|best|final)\s+(?:option|choice))"
    r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be))?\s*(?:is\s*)?[:=\-]?\s*" + _OPTION_WORD + _LETTER
)
# "I would choose B", "I'll go with option D", "I pick C".
_CHOICE_CHOOSE = re.compile(
    r"(?i)\bI(?:\s+(?:would|will|shall)|'d|'ll)?\s+(?:choose|pick|select|go\s+with)\s+" + _OPTION_WORD + _LETTER
)
# "... not A; it is C": the letter after the correction is the choice.
_CHOICE_NOT = re.compile(
    r"(?i)\bnot\s+" + _OPTION_WORD + r"\(?[A-D]\)?\s*[;,:.]?\s*(?:it\s+is|it's|but|rather)\s+" + _OPTION_WORD + _LETTER
)
_CHOICE_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text\{\s*)?\(?(?P<letter>[A-D])\)?\s*\}?\s*\}")
_CHOICE_BOLD = re.compile(r"\*\*\s*\(?(?P<letter>[A-D])\)?[.:]?\s*\*\*")
_CHOICE_LINE = re.compile(r"(?m)^[ \t]*\(?(?P<letter>[A-D])(?:[).:]|[ \t]*$|[ \t]+[-\u2013][ \t])")
_CHOICE_PAREN = re.compile(r"\((?P<letter>[A-D])\)")


def _letter_ok(match: re.Match[str]) -> str | None:
    letter = match.group("letter")
    # A lower-case letter is only an answer when bracketed: "answer is a bit" is prose.
    if letter.islower() and not re.search(r"[(\[]\s*" + letter + r"\s*[)\]]", match.group(0)):
        return None
    return letter.upper()


def extract_choice(completion: str, *, cut_off: bool = False) -> str | None:
    """The chosen letter A-D, or None when the completion does not commit to one.

    Precedence: the last explicit commitment ("Answer: X", "the answer is (option) X", "the best answer
    is X", "I would choose X", "not A; it is X", ``\\boxed{X}``); else the last bold letter; else a letter
    opening a line ("X." / "(X)" / "X)"), when those lines name one letter (several are the options
    listed out); else a single distinct "(X)". ``cut_off`` (stopped at the token budget): only an
    explicit commitment counts, the rest of a cut-off text is reasoning that did not finish."""
    if not completion:
        return None
    marked = [(m.start(), _letter_ok(m)) for pattern in (_CHOICE_MARKER, _CHOICE_CHOOSE)
              for m in pattern.finditer(completion)]
    # The corrected letter sits at the end of its match: order it there, after the "not A" it follows.
    marked += [(m.end(), _letter_ok(m)) for m in _CHOICE_NOT.finditer(completion)]
    marked += [(m.start(), m.group("letter")) for m in _CHOICE_BOXED.finditer(completion)]
    marked = [(pos, letter) for pos, letter in marked if letter]
    if marked:
        return max(marked)[1]
    if cut_off:
        return None
    bold = _CHOICE_BOLD.findall(completion)
    if bold:
        return bold[-1]
    lines = list(_CHOICE_LINE.finditer(completion))
    if lines and len({m.group("letter") for m in lines}) == 1:
        return lines[0].group("letter")
    parens = set(_CHOICE_PAREN.findall(completion))
    if len(parens) == 1:
        return parens.pop()
    return None


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
    passed, status, reason, _ = _trusted_outcome(result, plan)
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


def _plan_for(problem: Problem) -> Rewritten | None:
    return _rewritten(problem.tests or "", frozenset([problem.entry_point] if problem.entry_point else []))


def has_trusted_tests(problem: Problem) -> bool:
    """Whether a code problem's tests are graded by the grader's own comparisons (else by the old path,
    inside the sandbox: counted as ``testsUntrusted`` in stage results)."""
    return _plan_for(problem) is not None


def code_grading_metrics(problems: Sequence[Problem]) -> dict[str, int | list[str]]:
    """For a stage's result, when it graded code: ``testsUntrusted``, the code problems whose tests did
    not rewrite (graded by the old in-sandbox path), and ``sandboxLayers``, the containment in force."""
    code = [p for p in problems if p.domain == "code"]
    if not code:
        return {}
    from consistency_worker.sandbox.pool import default_sandbox

    return {"testsUntrusted": sum(not has_trusted_tests(p) for p in code), "sandboxLayers": default_sandbox().layers}


def _trusted_outcome(result: TestResult, plan: Rewritten) -> tuple[bool, str, str, str]:
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
        passed, status, reason, answer = _trusted_outcome(result, how)
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
    plan = _plan_for(problem)
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
