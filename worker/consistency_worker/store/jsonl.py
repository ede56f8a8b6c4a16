"""The one JSONL reader of the tree: the store's `read_jsonl`, training data, dataset sources, generation
records and the local demo's splits all split and parse lines here, so they agree on what a line is and
on the line numbers their errors name.

Only "\\n" ends a JSONL line: str.splitlines() also splits at U+2028 and U+0085, which
json.dumps(ensure_ascii=False) leaves raw inside strings (GSM8K has some). Blank lines are skipped.
What a caller does with a bad line differs (the store raises, a dataset loader counts the row as
malformed and moves on), so a bad line is handed back as a `BadLine`, not raised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class JsonlError(ValueError):
    """A JSONL text has a line that is not a JSON object (the message names source and line)."""


@dataclass(frozen=True)
class BadLine:
    """A line that is not a JSON object: `error` when it is not JSON at all, else `got`, the JSON type
    it holds (list, str, ...)."""

    error: json.JSONDecodeError | None = None
    got: str = ""


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every non-blank line."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield lineno, line


def iter_jsonl(text: str) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, object) of every non-blank line; a line that is not a JSON object comes as a BadLine."""
    for lineno, line in jsonl_lines(text):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, BadLine(error=exc)
            continue
        yield lineno, row if isinstance(row, dict) else BadLine(got=type(row).__name__)


def parse_jsonl_objects(text: str, source: str) -> list[dict[str, Any]]:
    """JSON objects of a JSONL text, blank lines skipped; a bad line raises JsonlError naming source:line."""
    rows = []
    for lineno, row in iter_jsonl(text):
        if isinstance(row, BadLine):
            if row.error is not None:
                raise JsonlError(f"{source}:{lineno}: not valid JSON: {row.error}")
            raise JsonlError(f"{source}:{lineno}: expected a JSON object, got {row.got}")
        rows.append(row)
    return rows
