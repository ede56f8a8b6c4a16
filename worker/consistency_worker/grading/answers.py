"""Final answers of text problems: the number a math completion ends on and the letter a multiple-choice
completion picks, each only when the completion marks it as its answer."""

from __future__ import annotations

import re
from decimal import Decimal

from consistency_worker.data.numbers import canonical_number, first_number, format_number, last_number

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
    return first_number(span)


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
        value = last_number(text)
    return None if value is None else format_number(value)


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
