"""Dataset loaders: GSM8K, MBPP, HumanEval, MMLU and generic JSONL into ``Problem`` records.

``load_problems(spec)`` takes the campaign's ``DatasetSpec`` (or anything with the same fields as
attributes or keys: name, uri, format, split, fields, domain, limit). Malformed rows are skipped,
counted and reported with their row number and reason; a source with no usable row is an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from consistency_worker.data.numbers import canonical_number
from consistency_worker.data.problems import DOMAINS, Problem
from consistency_worker.data.sources import (
    DatasetError,
    EmptyDatasetError,
    MalformedRow,
    Reader,
    Row,
    iter_rows,
    source_label,
)
from consistency_worker.data.strata import code_stratum, math_stratum, stratified_sample

__all__ = [
    "FORMATS",
    "MBPP_SPLITS",
    "DatasetError",
    "EmptyDatasetError",
    "LoadReport",
    "load_problems",
]

log = logging.getLogger(__name__)

# google-research/mbpp's conventional split by task_id (inclusive ranges).
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
FIELD_KEYS = ("id", "prompt", "answer", "solution", "domain", "tests", "entry_point", "choices", "stratum")


@dataclass
class LoadReport:
    problems: list[Problem]
    malformed: list[tuple[int, str]] = field(default_factory=list)
    rows_read: int = 0
    source: str = ""

    def summary(self) -> str:
        return (f"{self.source}: {len(self.problems)} problems from {self.rows_read} rows, "
                f"{len(self.malformed)} malformed")


@dataclass(frozen=True)
class _Spec:
    name: str
    uri: str
    format: str
    split: str | None
    fields: dict[str, str]
    domain: str | None
    limit: int | None


def _spec_value(spec: Any, key: str) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(key)
    return getattr(spec, key, None)


def _as_spec(spec_like: Any) -> _Spec:
    uri = _spec_value(spec_like, "uri")
    if not uri or not isinstance(uri, str):
        raise DatasetError("dataset spec: `uri` is required")
    fmt = _spec_value(spec_like, "format")
    fmt = getattr(fmt, "value", fmt)
    if fmt not in FORMATS:
        raise DatasetError(f"dataset {uri}: `format` must be one of {sorted(FORMATS)}, got {fmt!r}")
    raw_fields = _spec_value(spec_like, "fields") or {}
    if hasattr(raw_fields, "model_dump"):
        raw_fields = raw_fields.model_dump()
    fields = {k: v for k, v in dict(raw_fields).items() if v is not None}
    unknown = set(fields) - set(FIELD_KEYS)
    if unknown:
        raise DatasetError(f"dataset {uri}: unknown `fields` key(s) {sorted(unknown)} (known: {list(FIELD_KEYS)})")
    domain = _spec_value(spec_like, "domain")
    domain = getattr(domain, "value", domain)
    if domain is not None and domain not in DOMAINS:
        raise DatasetError(f"dataset {uri}: `domain` must be one of {list(DOMAINS)}, got {domain!r}")
    limit = _spec_value(spec_like, "limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"dataset {uri}: `limit` must be a positive integer, got {limit!r}")
    split = _spec_value(spec_like, "split")
    if fmt == "mbpp" and split is not None and not uri.startswith("hf://") and split not in MBPP_SPLITS:
        raise DatasetError(f"dataset {uri}: MBPP `split` must be one of {list(MBPP_SPLITS)}, got {split!r}")
    name = _spec_value(spec_like, "name") or source_label(uri)
    return _Spec(name=name, uri=uri, format=fmt, split=split, fields=fields, domain=domain, limit=limit)


# ---------------------------------------------------------------------------------------------------
# per-format row parsers: raise MalformedRow with a reason naming the field


def _text(row: Row, key: str, *, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise MalformedRow(f"missing field `{key}`")
        return None
    if not isinstance(value, (str, int, float)):
        raise MalformedRow(f"field `{key}` must be text, got {type(value).__name__}")
    return str(value)


def _gsm8k(row: Row, number: int, spec: _Spec) -> Problem:
    question = _text(row, "question")
    solution = _text(row, "answer")
    assert question is not None and solution is not None
    if "####" not in solution:
        raise MalformedRow("field `answer` has no `#### <number>` final line")
    gold = canonical_number(solution.rsplit("####", 1)[1])
    if gold is None:
        raise MalformedRow("field `answer`: the text after #### is not a number")
    return Problem(
        id=f"{spec.name}/{number - 1}", domain="math", prompt=question, answer=gold,
        solution=_strip_calculator(solution), stratum=math_stratum(solution), source=spec.name,
    )


_CALC = re.compile(r"<<[^<>]*>>")


def _strip_calculator(solution: str) -> str:
    # GSM8K's <<48/2=24>> calculator annotations are tool calls, not text a model should learn to write.
    return _CALC.sub("", solution)


_BUILTIN_CALLS = frozenset({
    "set", "sorted", "list", "tuple", "dict", "str", "int", "float", "abs", "round", "len", "math", "isclose",
    "all", "any", "sum", "min", "max", "bool", "type", "frozenset", "repr", "print", "isinstance",
})


def _entry_point(tests: list[str], code: str | None) -> str | None:
    names = [n for t in tests for n in re.findall(r"([A-Za-z_]\w*)\s*\(", t) if n not in _BUILTIN_CALLS]
    if code:
        defined = set(re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", code, re.M))
        for n in names:
            if n in defined:
                return n
    return names[0] if names else None


def _mbpp(row: Row, number: int, spec: _Spec) -> Problem | None:
    task_id = row.get("task_id")
    if not isinstance(task_id, int):
        raise MalformedRow("field `task_id` must be an integer")
    if spec.split is not None and not spec.uri.startswith("hf://"):
        lo, hi = MBPP_SPLITS[spec.split]
        if not lo <= task_id <= hi:
            return None
    text = _text(row, "text", required=False) or _text(row, "prompt")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise MalformedRow("field `test_list` must be a non-empty list of strings")
    setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])  # type: ignore[arg-type]
    if not isinstance(setup, str):
        raise MalformedRow("field `test_setup_code` must be a string")
    code = _text(row, "code", required=False)
    script = "\n".join(part for part in (setup.strip(), *tests) if part)
    return Problem(
        id=f"{spec.name}/{task_id}", domain=_domain(spec, "code"), prompt=str(text), tests=script,
        entry_point=_entry_point(tests, code), examples=tuple(tests), solution=code,
        stratum=code_stratum(code), source=spec.name,
    )


def _humaneval(row: Row, number: int, spec: _Spec) -> Problem:
    task_id = _text(row, "task_id")
    prompt = _text(row, "prompt")
    test = _text(row, "test")
    entry = _text(row, "entry_point")
    canonical = _text(row, "canonical_solution", required=False)
    assert prompt is not None and test is not None and entry is not None
    return Problem(
        id=f"{spec.name}/{str(task_id).split('/')[-1]}", domain=_domain(spec, "code"), prompt=prompt,
        tests=f"{test.rstrip()}\n\n\ncheck({entry})\n", entry_point=entry,
        solution=prompt + canonical if canonical else None, stratum=code_stratum(canonical),
        source=spec.name,
    )


_LETTERS = "ABCD"


def _mmlu(row: Row, number: int, spec: _Spec) -> Problem:
    if "0" in row and "question" not in row:  # header-less CSV: question, A, B, C, D, answer
        if len(row) < 6:
            raise MalformedRow(f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
        row = {"question": row["0"], "choices": [row[str(i)] for i in range(1, 5)], "answer": row["5"]}
    question = _text(row, "question")
    choices = row.get("choices")
    if choices is None and all(k in row for k in _LETTERS):
        choices = [row[k] for k in _LETTERS]
    if not isinstance(choices, (list, tuple)) or len(choices) != 4:
        raise MalformedRow("field `choices` must hold four options (or give columns A, B, C, D)")
    if not all(isinstance(c, (str, int, float)) and str(c).strip() for c in choices):
        raise MalformedRow("field `choices`: every option must be non-empty text")
    answer = _letter(row.get("answer"))
    ident = row.get("id")
    subject = row.get("subject")
    return Problem(
        id=f"{spec.name}/{ident if ident is not None else number - 1}", domain=_domain(spec, "reasoning"),
        prompt=str(question), choices=tuple(str(c) for c in choices), answer=answer,
        stratum=str(subject).strip() if isinstance(subject, str) and subject.strip() else "all",
        source=spec.name,
    )


def _letter(value: object) -> str:
    if isinstance(value, bool):
        raise MalformedRow("field `answer` must be a letter A-D or an index 0-3")
    if isinstance(value, int) and 0 <= value < 4:
        return _LETTERS[value]
    text = str(value).strip().upper() if value is not None else ""
    if text in _LETTERS and text:
        return text
    if text in ("0", "1", "2", "3"):
        return _LETTERS[int(text)]
    raise MalformedRow(f"field `answer` must be a letter A-D or an index 0-3, got {value!r}")


def _jsonl(row: Row, number: int, spec: _Spec) -> Problem:
    f = spec.fields
    if "prompt" not in f:
        raise DatasetError(f"dataset {spec.uri}: format jsonl needs `fields.prompt`")
    prompt = _text(row, f["prompt"])
    domain = spec.domain
    if domain is None and "domain" in f:
        domain = _text(row, f["domain"])
        if domain not in DOMAINS:
            raise MalformedRow(f"field `{f['domain']}` must be one of {list(DOMAINS)}, got {domain!r}")
    tests = _text(row, f["tests"], required=False) if "tests" in f else None
    if domain is None:
        domain = "code" if tests else "math"
    solution = _text(row, f["solution"], required=False) if "solution" in f else None
    raw_answer = _text(row, f["answer"], required=False) if "answer" in f else None
    answer: str | None = None
    choices: tuple[str, ...] = ()
    if domain == "math":
        source = raw_answer if raw_answer is not None else solution
        if source is None:
            raise MalformedRow(f"missing field `{f.get('answer', 'answer')}`")
        answer = canonical_number(source.rsplit("####", 1)[-1])
        if answer is None:
            raise MalformedRow(f"field `{f.get('answer', f.get('solution'))}` is not a number: {source[-40:]!r}")
        stratum = math_stratum(solution)
    elif domain == "reasoning":
        answer = _letter(raw_answer)
        if "choices" in f:
            raw = row.get(f["choices"])
            if not isinstance(raw, list) or not raw:
                raise MalformedRow(f"field `{f['choices']}` must be a list of options")
            choices = tuple(str(c) for c in raw)
        stratum = "all"
    else:
        if not tests:
            raise MalformedRow(f"missing field `{f.get('tests', 'tests')}`")
        stratum = code_stratum(solution)
    if "stratum" in f and row.get(f["stratum"]) is not None:
        stratum = str(row[f["stratum"]])
    ident = row.get(f["id"]) if "id" in f else None
    if "id" in f and ident is None:
        raise MalformedRow(f"missing field `{f['id']}`")
    entry = _text(row, f["entry_point"], required=False) if "entry_point" in f else None
    return Problem(
        id=f"{spec.name}/{ident if ident is not None else number - 1}", domain=domain,  # type: ignore[arg-type]
        prompt=str(prompt), answer=answer, choices=choices, tests=tests, entry_point=entry,
        solution=solution, stratum=stratum, source=spec.name,
    )


def _domain(spec: _Spec, default: str) -> Any:
    return spec.domain or default


Parser = Callable[[Row, int, _Spec], Problem | None]
FORMATS: dict[str, Parser] = {
    "gsm8k": _gsm8k,
    "mbpp": _mbpp,
    "humaneval": _humaneval,
    "mmlu": _mmlu,
    "jsonl": _jsonl,
}
_CSV_HEADERS = frozenset({"question", "prompt", "answer", "id", "choices", "a", "subject"})


# Formats whose sources are sorted by a stratum (MMLU: by subject), so their first N rows are a few
# subjects only: `limit` draws a seeded sample stratified by that stratum instead.
_SAMPLED_LIMIT = frozenset({"mmlu"})


def load_problems(spec_like: Any, *, reader: Reader | None = None, seed: int = 0) -> LoadReport:
    """Load one dataset source into problems. ``reader(uri) -> bytes`` replaces the default byte reader
    (local files, s3:// through ``consistency_worker.store.facade``); hf:// sources go through ``datasets``.
    ``limit`` keeps the first N problems, except for MMLU: a sample of N stratified by subject, drawn
    with ``seed`` (the same problems for the same seed and source)."""
    spec = _as_spec(spec_like)
    sampled = spec.format in _SAMPLED_LIMIT
    parse = FORMATS[spec.format]
    header_hint = _CSV_HEADERS | {v.lower() for v in spec.fields.values()}
    report = LoadReport(problems=[], source=spec.uri)
    seen: set[str] = set()
    for number, row in iter_rows(spec.uri, reader=reader, split=spec.split, csv_header_hint=header_hint):
        report.rows_read += 1
        try:
            if isinstance(row, MalformedRow):
                raise row
            problem = parse(row, number, spec)
            if problem is None:
                continue  # outside the requested split
            if problem.id in seen:
                raise MalformedRow(f"duplicate id {problem.id}")
        except MalformedRow as exc:
            report.malformed.append((number, str(exc)))
            continue
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "row"
            report.malformed.append((number, f"{where}: {first['msg']}"))
            continue
        seen.add(problem.id)
        report.problems.append(problem)
        if spec.limit is not None and not sampled and len(report.problems) >= spec.limit:
            break
    if sampled and spec.limit is not None and len(report.problems) > spec.limit:
        report.problems = stratified_sample(report.problems, spec.limit, seed=seed)
    if report.malformed:
        shown = "; ".join(f"row {n}: {r}" for n, r in report.malformed[:5])
        log.warning("%s: skipped %d malformed row(s): %s", spec.uri, len(report.malformed), shown)
    if not report.problems:
        detail = (f"; {len(report.malformed)} malformed, first: row {report.malformed[0][0]}: "
                  f"{report.malformed[0][1]}") if report.malformed else ""
        where = f" (split {spec.split})" if spec.split else ""
        raise EmptyDatasetError(f"dataset source {spec.uri}{where} yielded no problems from "
                                f"{report.rows_read} rows{detail}")
    return report
