"""The generation record (one JSON line per problem, written by generate, read by distill and evaluate)
and the shard files that hold them.

Layout in a generate output directory:
  generations-{i:05d}-of-{n:05d}.jsonl            shard i of n, complete (written once, atomically)
  parts/shard-{i:05d}-of-{n:05d}/chunk-{j:06d}.jsonl  progress of an unfinished shard (resume reads these)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from consistency_core.stage_wire import join_uri
from pydantic import BaseModel, ConfigDict, Field

from consistency_worker.store.facade import Store
from consistency_worker.store.jsonl import jsonl_lines

_SHARD_RE = re.compile(r"generations-(\d{5})-of-(\d{5})\.jsonl$")


class Completion(BaseModel):
    """One answer: its text, the domain-normalised answer used for voting, and whether it is right
    (None when the problem has no gold answer)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    answer: str | None = None
    correct: bool | None = None
    # It stopped at the token budget (maxNewTokens), not at EOS or a stop string: likely cut off.
    truncated: bool = False
    # Generated tokens (the whole budget when truncated): what the cost forecast learns from.
    tokens: int | None = None


class GenerationRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    problem_id: str = Field(alias="problemId", min_length=1)
    domain: str
    stratum: str = "all"
    greedy: Completion
    samples: list[Completion] = Field(default_factory=list)

    def to_json_line(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json_line(cls, line: str) -> GenerationRecord:
        return cls.model_validate_json(line)


class GenerationsError(ValueError):
    """Generations are missing or malformed (a data error: permanent)."""


def shard_file_name(index: int, count: int) -> str:
    return f"generations-{index:05d}-of-{count:05d}.jsonl"


def parts_dir(output_uri: str, index: int, count: int) -> str:
    return join_uri(output_uri, "parts", f"shard-{index:05d}-of-{count:05d}")


def chunk_file_name(number: int) -> str:
    return f"chunk-{number:06d}.jsonl"


def dump_records(records: Iterable[GenerationRecord]) -> bytes:
    return "".join(r.to_json_line() + "\n" for r in records).encode("utf-8")


def parse_records(text: str, source: str) -> list[GenerationRecord]:
    """Records of one JSONL text; a bad line raises an error naming `source` and the line number."""
    records = []
    for lineno, line in jsonl_lines(text):
        try:
            records.append(GenerationRecord.from_json_line(line))
        except ValueError as exc:
            raise GenerationsError(f"{source}:{lineno}: not a generation record: {exc}") from None
    return records


def shard_files(store: Store, uri: str) -> dict[int, str]:
    """Complete shard files in a generate output directory by index; all must agree on the count."""
    found: dict[int, str] = {}
    counts: set[int] = set()
    for child in store.list(uri):
        name = child.rsplit("/", 1)[-1]
        match = _SHARD_RE.fullmatch(name)
        if match and "/parts/" not in child[len(uri.rstrip("/")) :]:
            found[int(match.group(1))] = child
            counts.add(int(match.group(2)))
    if not found:
        raise GenerationsError(f"{uri}: no generation shard files (generations-*-of-*.jsonl)")
    if len(counts) != 1:
        raise GenerationsError(f"{uri}: shard files from different shard counts {sorted(counts)}; clean the directory")
    (count,) = counts
    missing = sorted(set(range(count)) - set(found))
    if missing:
        names = ", ".join(shard_file_name(i, count) for i in missing)
        raise GenerationsError(f"{uri}: {len(missing)} of {count} shard(s) missing: {names}")
    return found


def read_generations(store: Store, uri: str) -> list[GenerationRecord]:
    """Every record of a generate output directory (all shards, in shard order), or a single JSONL file.

    Fails naming the missing shard(s) if any shard has not finished, and on duplicate problem ids."""
    if uri.endswith(".jsonl"):
        return parse_records(store.read_text(uri), uri)
    records: list[GenerationRecord] = []
    for _, file_uri in sorted(shard_files(store, uri).items()):
        records.extend(parse_records(store.read_text(file_uri), file_uri))
    seen: set[str] = set()
    for record in records:
        if record.problem_id in seen:
            raise GenerationsError(f"{uri}: problem {record.problem_id!r} appears in more than one shard")
        seen.add(record.problem_id)
    return records
