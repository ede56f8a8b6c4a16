"""The canonical form of a numeric answer: the loaders store a math problem's gold answer in it and the
grader compares the number it extracts from a completion in it ("1,234.50" -> "1234.5")."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
    value = first_number(text)
    return None if value is None else format_number(value)


def format_number(value: Decimal) -> str:
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


def first_number(text: str) -> Decimal | None:
    frac = _FRAC.search(text)
    match = _NUMBER.search(text)
    if frac and (match is None or frac.start() <= match.start()):
        try:
            num, den = (Decimal(x.replace(",", "")) for x in frac.groups())
            return None if den == 0 else num / den
        except InvalidOperation:
            return None
    return _to_decimal(match) if match else None


def last_number(text: str) -> Decimal | None:
    matches = list(_NUMBER.finditer(text))
    return _to_decimal(matches[-1]) if matches else None
