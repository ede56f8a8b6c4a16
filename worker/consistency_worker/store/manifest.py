"""Provenance record each stage writes next to its outputs (`manifest.json`): what went in, what came
out (with content hashes), under which config and code version, and how long each part took."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from consistency_core.stage_wire import StageConfig, StageResult

from consistency_worker.store.facade import Store
from consistency_worker.store.integrity import sha256_file

ENV_CODE_VERSION = "CONSISTENCY_CODE_VERSION"  # set by image builds (tag or commit)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """Package version, build label and (from a source checkout) the git commit."""
    from importlib import metadata

    version: dict[str, str] = {}
    try:
        version["package"] = metadata.version("consistency-training-operator")
    except metadata.PackageNotFoundError:
        version["package"] = "unknown"
    if os.environ.get(ENV_CODE_VERSION):
        version["build"] = os.environ[ENV_CODE_VERSION]
    here = Path(__file__).resolve().parent
    if any((p / ".git").exists() for p in here.parents):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                 timeout=5, check=False)
            if out.returncode == 0 and out.stdout.strip():
                version["git"] = out.stdout.strip()
    return version


def _entry(uri: str, data: bytes | None, path: Path | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": uri}
    if data is not None:
        entry.update(sha256=sha256_bytes(data), bytes=len(data))
    elif path is not None and path.is_file():
        entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    elif path is not None and path.is_dir():
        entry["files"] = {
            p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()
        }
    return entry


@dataclass
class ManifestBuilder:
    """Collects a stage's provenance while it runs; `write` puts it in the output directory."""

    config: StageConfig | None = None
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add_input(self, name: str, uri: str, *, data: bytes | None = None, path: Path | None = None) -> None:
        """Record an input; pass its bytes or local copy to hash it without reading it again."""
        self.inputs[name] = _entry(uri, data, path)

    def add_output(self, name: str, uri: str, *, data: bytes | None = None, path: Path | None = None) -> None:
        """Record an output; unhashed ones are hashed from the store when the manifest is written."""
        self.outputs[name] = _entry(uri, data, path)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)

    def _hash_missing(self, store: Store, entries: dict[str, dict[str, Any]]) -> None:
        for entry in entries.values():
            if "sha256" in entry or "files" in entry:
                continue
            uri = entry["uri"]
            # Unverified reads: these bytes are what the new manifest will vouch for.
            if store.is_file(uri):
                data = store.read_bytes(uri, verify=False)
                entry.update(sha256=sha256_bytes(data), bytes=len(data))
            else:
                base = uri.rstrip("/") + "/"
                entry["files"] = {c[len(base):]: sha256_bytes(store.read_bytes(c, verify=False))
                                  for c in store.list(uri)}

    def build(self, store: Store, result: StageResult | None = None) -> dict[str, Any]:
        if result is not None:
            for name, uri in result.outputs.items():
                self.outputs.setdefault(name, {"uri": uri})
        self._hash_missing(store, self.outputs)
        finished = time.time()
        manifest: dict[str, Any] = {
            "codeVersion": code_version(),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "timings": {**self.timings, "total": round(finished - self.started, 3)},
            "startedAt": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "finishedAt": datetime.fromtimestamp(finished, UTC).isoformat(),
        }
        if self.config is not None:
            # The config names the credentials Secret at most, never the credentials themselves.
            manifest.update(key=self.config.key, stage=self.config.stage.value, config=self.config.to_wire())
        if result is not None:
            manifest["metrics"] = result.metrics
        if self.extra:
            manifest["extra"] = self.extra
        return manifest

    def write(self, store: Store, uri: str, result: StageResult | None = None) -> dict[str, Any]:
        manifest = self.build(store, result)
        store.write_json(uri, manifest)
        return manifest
