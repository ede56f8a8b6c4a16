"""Canonical values: what a sandboxed program hands back for each recorded test call, and its decoding.

The untrusted side (``RECORDER_SOURCE``, pasted into the graded script) turns each value the candidate
returned into JSON-like data: None, bool, int, float, str and lists as themselves; tuple, set,
frozenset, dict, bytes and complex tagged (``{"tuple": [...]}``); subclasses of these (Counter,
OrderedDict, namedtuple, IntEnum) and bytearray as their plain base value; anything else as ``{"opaque": type name}``,
which no comparison accepts. A call that raised is recorded as the exception type's name.

Nothing here trusts that encoding: the program can patch the recorder, write forged lines on the data
descriptor or print anything. ``parse_records`` reads whatever arrived as untrusted data and
``decode`` rebuilds plain built-in objects from it (bounded depth and size, unknown shapes refused), so
a comparison made by the grader runs the built-in types' own ``==``, never one the program defined.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

DATA_FD = 3  # the descriptor the sandbox host gives every program for its records
MAX_DEPTH = 64
MAX_NODES = 200_000

# Runs in the sandbox, after the program and before the tests. Written defensively only for honest
# programs' sake (big or nested values); a hostile program can subvert it and gains nothing by that.
RECORDER_SOURCE = f'''
import os as _cw_os, json as _cw_json

def _cw_enc(v, depth=0):
    if depth > {MAX_DEPTH}:
        raise ValueError("value nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [_cw_enc(x, depth + 1) for x in v]
    if t is tuple:
        return {{"tuple": [_cw_enc(x, depth + 1) for x in v]}}
    if t is set or t is frozenset:
        return {{t.__name__: [_cw_enc(x, depth + 1) for x in v]}}
    if t is dict:
        return {{"dict": [[_cw_enc(k, depth + 1), _cw_enc(x, depth + 1)] for k, x in v.items()]}}
    if t is bytes:
        return {{"bytes": v.hex()}}
    if t is complex:
        return {{"complex": [v.real, v.imag]}}
    if isinstance(v, bytearray):  # equal to the bytes it holds, as in a plain comparison
        return _cw_enc(bytes(v), depth + 1)
    for base in (bool, int, float, str, bytes, complex, list, tuple, frozenset, set, dict):
        if isinstance(v, base):
            return _cw_enc(base(v), depth + 1)
    return {{"opaque": t.__name__}}

def _cw_write(rec):
    data = (_cw_json.dumps(rec) + "\\n").encode()
    while data:
        data = data[_cw_os.write({DATA_FD}, data):]

def _cw_record(i, thunk):
    try:
        v = thunk()
    except Exception as e:
        _cw_write({{"i": i, "x": type(e).__name__}})
        return
    try:
        rec = {{"i": i, "v": _cw_enc(v)}}
        _cw_json.dumps(rec)
    except Exception as e:
        rec = {{"i": i, "bad": type(e).__name__}}
    _cw_write(rec)

def _cw_done():
    _cw_write({{"done": True}})
'''


class CanonicalError(ValueError):
    """Records that are not well-formed canonical data."""


class Opaque:
    """A value the program returned that has no canonical form: unequal to everything, and any
    operation on it raises, so every check involving it fails."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name} object>"

    def __bool__(self) -> bool:
        raise TypeError(f"no truth value for a returned {self.type_name}")


@dataclass(frozen=True)
class Record:
    """One recorded test call: its assertion index and either the encoded value or the error type."""

    index: int
    value: Any = None  # the encoded (JSON) form, decoded by ``decode``
    raised: str | None = None  # the exception type's name, or "unencodable: <type>"


@dataclass(frozen=True)
class Records:
    records: tuple[Record, ...]
    done: bool  # the tests ran to their end
    malformed: str | None = None  # why the data could not be read, if it could not


def parse_records(text: str) -> Records:
    """The records a run wrote, as untrusted data: a line that is not one of the three shapes
    (value, raised, done) makes the whole run malformed."""
    records: list[Record] = []
    done = False
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return Records(tuple(records), done, f"record line {n} is not JSON")
        if not isinstance(obj, dict):
            return Records(tuple(records), done, f"record line {n} is not an object")
        if obj == {"done": True}:
            done = True
            continue
        index = obj.get("i")
        if type(index) is not int or index < 0 or len(obj) != 2:
            return Records(tuple(records), done, f"record line {n} has no assertion index")
        if "v" in obj:
            records.append(Record(index, value=obj["v"]))
        elif isinstance(obj.get("x"), str):
            records.append(Record(index, raised=obj["x"][:100]))
        elif isinstance(obj.get("bad"), str):
            records.append(Record(index, raised=f"unencodable: {obj['bad'][:100]}"))
        else:
            return Records(tuple(records), done, f"record line {n} has an unknown shape")
    return Records(tuple(records), done)


def decode(data: Any) -> Any:
    """Plain built-in objects from encoded data; raises CanonicalError on anything else."""
    budget = [MAX_NODES]

    def go(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH + 2:
            raise CanonicalError("value too large or nested too deeply")
        t = type(v)
        if v is None or t in (bool, int, float, str):
            return v
        if t is list:
            return [go(x, depth + 1) for x in v]
        if t is not dict or len(v) != 1:
            raise CanonicalError(f"unexpected {t.__name__} in a record")
        ((tag, body),) = v.items()
        try:
            if tag == "tuple" and type(body) is list:
                return tuple(go(x, depth + 1) for x in body)
            if tag in ("set", "frozenset") and type(body) is list:
                items = [go(x, depth + 1) for x in body]
                return set(items) if tag == "set" else frozenset(items)
            if tag == "dict" and type(body) is list:
                if any(type(p) is not list or len(p) != 2 for p in body):
                    raise CanonicalError("malformed dict entry")
                return {go(p[0], depth + 1): go(p[1], depth + 1) for p in body}
            if tag == "bytes" and type(body) is str:
                return bytes.fromhex(body)
            if tag == "complex" and type(body) is list and len(body) == 2 and all(
                    type(x) in (int, float) for x in body):
                return complex(body[0], body[1])
            if tag == "opaque" and type(body) is str:
                return Opaque(body[:100])
        except (TypeError, ValueError, IndexError) as exc:  # unhashable set members, bad hex
            raise CanonicalError(f"malformed {tag}: {exc}") from None
        raise CanonicalError(f"unknown tag {tag!r}")

    return go(data, 0)


def canonical_text(data: Any) -> str:
    """A stable text of encoded data: set members and dict entries sorted (their iteration order in
    the sandbox follows string hashing, which differs between processes)."""

    def norm(v: Any) -> Any:
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict) and len(v) == 1:
            ((tag, body),) = v.items()
            if tag in ("set", "frozenset") and isinstance(body, list):
                return {tag: sorted((norm(x) for x in body), key=_key)}
            if tag == "dict" and isinstance(body, list):
                return {tag: sorted((norm(x) for x in body), key=_key)}
            return {tag: norm(body)}
        if isinstance(v, float) and not math.isfinite(v):
            return {"float": repr(v)}
        return v

    return _key(norm(data))


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def records_digest(records: Records) -> str:
    """A short digest of what a run returned, call by call (values and exception types, in order)."""
    parts = [f"{r.index}:" + (f"raised {r.raised}" if r.raised is not None else canonical_text(r.value))
             for r in records.records]
    parts.append("done" if records.done else "unfinished")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
