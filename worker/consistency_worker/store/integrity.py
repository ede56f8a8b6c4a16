"""Stored artifacts are checked against the manifest that records them, on every read.

A stage writes `manifest.json` (or `manifest-<i>-of-<n>.json` per shard) next to its outputs with each
output's sha256 and size (a directory output: the sha256 of each file in it). Any later read of such an
artifact (by the next stage, a resumed stage, the report) compares what it got with that record: a
truncated JSONL, a half-synced adapter or a file edited by hand is a clear, retryable error naming the
file instead of silently fewer rows.

The manifest of an artifact is looked up in its directory and up to MAX_LEVELS directories above (a
directory output's files sit below the manifest), once per directory per Store. Files without a
manifest (datasets, models, a stage's own partial outputs) are read as they are.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
MAX_LEVELS = 3
MANIFEST_PREFIX = "manifest"


@dataclass(frozen=True)
class Expected:
    """What the manifest says a file holds; size is None for a file of a directory output."""

    uri: str
    sha256: str
    size: int | None
    manifest: str


def parent(uri: str) -> str | None:
    head, sep, _ = uri.rstrip("/").rpartition("/")
    if not sep or not head or head.endswith(":/") or head.endswith(":"):
        return None
    return head


def is_manifest(uri: str) -> bool:
    name = uri.rstrip("/").rpartition("/")[2]
    return name.startswith(MANIFEST_PREFIX) and name.endswith(".json")


def expected_in(manifest: dict[str, Any], manifest_uri: str, uri: str, *, exact: bool) -> Expected | None:
    """The record of `uri` among a manifest's outputs (pure): its own entry (exact), or its line in the
    file list of a directory output."""
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outputs, dict):
        return None
    for entry in outputs.values():
        if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
            continue
        base = entry["uri"].rstrip("/")
        if exact and base == uri.rstrip("/") and isinstance(entry.get("sha256"), str):
            size = entry.get("bytes")
            return Expected(uri, entry["sha256"], size if isinstance(size, int) else None, manifest_uri)
        files = entry.get("files")
        if not exact and isinstance(files, dict) and uri.startswith(base + "/"):
            digest = files.get(uri[len(base) + 1:])
            if isinstance(digest, str):
                return Expected(uri, digest, None, manifest_uri)
    return None


def mismatch(expected: Expected, sha256: str, size: int) -> str | None:
    """Why the bytes read do not match the record, or None (pure)."""
    if expected.size is not None and size != expected.size:
        return f"{size} bytes where {expected.manifest} records {expected.size}"
    if sha256 != expected.sha256:
        return f"sha256 {sha256[:12]}... where {expected.manifest} records {expected.sha256[:12]}..."
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


class HashingWriter:
    """A write-only, non-seekable file object that hashes what passes through it (so a download is
    checked in the same pass that writes it; s3transfer then writes parts in order)."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.digest, self.size = sink, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.sink.write(data)

    def seekable(self) -> bool:
        return False


@dataclass
class ManifestIndex:
    """Manifests by directory, read once per Store; a manifest written or deleted through the Store drops
    its directory from the index."""

    _by_dir: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def forget(self, uri: str) -> None:
        directory = parent(uri)
        with self._lock:
            if directory is not None:
                self._by_dir.pop(directory, None)

    def expected(self, store: Any, uri: str) -> Expected | None:
        if is_manifest(uri):
            return None
        manifests: list[tuple[str, dict[str, Any]]] = []
        directory = parent(uri)
        for _ in range(MAX_LEVELS):
            if directory is None:
                break
            manifests += self._manifests(store, directory)
            directory = parent(directory)
        # A file's own entry wins over a directory listing: a shard's manifest lists the whole output
        # directory as it was then, including other shards' files those shards may have rewritten since.
        for exact in (True, False):
            for manifest_uri, manifest in manifests:
                found = expected_in(manifest, manifest_uri, uri, exact=exact)
                if found is not None:
                    return found
        return None

    def _manifests(self, store: Any, directory: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            cached = self._by_dir.get(directory)
        if cached is not None:
            return cached
        found = []
        for manifest_uri in store.manifest_uris(directory):
            try:
                found.append((manifest_uri, json.loads(store.read_bytes(manifest_uri, verify=False))))
            except (ValueError, OSError):
                continue  # a broken manifest vouches for nothing; the stage that owns it rewrites it
        with self._lock:
            self._by_dir[directory] = found
        return found
