"""The artifact store the stages use: one interface over local directories and S3, addressed by absolute
URIs (`s3://bucket/key`, `file:///abs/path` or a plain path, see `uris`).

One `Store` serves every scheme, so a campaign can read a dataset from a local path while its artifacts
live in S3: each call goes to the backend the URI names (`local.LocalBackend`, `s3.S3Backend`). What
holds on both lives here: every read of an artifact that a stage manifest records is checked against it
(size, sha256; downloads hashed as written; see `integrity`), text / JSON / JSONL on top of bytes, and
the copies between backends. Atomicity is each backend's (readers never see half a file); downloads go
to a temp file that is renamed on success and removed on failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consistency_core.spec import ArtifactStore

from consistency_worker.store.errors import ArtifactMismatch, StoreError, StoreNotFound
from consistency_worker.store.integrity import Expected, ManifestIndex, is_manifest, mismatch
from consistency_worker.store.jsonl import JsonlError, parse_jsonl_objects
from consistency_worker.store.local import LocalBackend, local_files
from consistency_worker.store.s3 import S3Backend, S3Settings
from consistency_worker.store.uris import check_scheme, child_uri, is_s3, local_path

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

_LOCAL = LocalBackend()


@dataclass
class Store:
    """Artifact store rooted at `root`; every method takes absolute URIs of any supported scheme."""

    root: str = "."
    s3: S3Settings = field(default_factory=S3Settings.from_env)
    _s3: S3Backend = field(init=False, repr=False)
    _manifests: ManifestIndex = field(default_factory=ManifestIndex, init=False, repr=False)

    def __post_init__(self) -> None:
        self._s3 = S3Backend(self.s3)

    def _backend(self, uri: str) -> LocalBackend | S3Backend:
        check_scheme(uri)
        return self._s3 if is_s3(uri) else _LOCAL

    def client(self) -> BaseClient:
        """The S3 client (built on first use)."""
        return self._s3.client()

    # ---- integrity (see integrity.py)

    def expected(self, uri: str) -> Expected | None:
        """What the manifest of the stage that wrote `uri` records for it, if any."""
        return self._manifests.expected(self, uri)

    def _check(self, expected: Expected | None, sha256: str, size: int) -> None:
        if expected is None:
            return
        why = mismatch(expected, sha256, size)
        if why is not None:
            raise ArtifactMismatch(f"{expected.uri} does not match its manifest: {why}; the stage that wrote "
                                   "it must run again", uri=expected.uri)

    def _wrote(self, uri: str) -> None:
        if is_manifest(uri):
            self._manifests.forget(uri)

    def manifest_uris(self, directory: str) -> list[str]:
        """Manifest files directly in `directory` (not below it)."""
        return self._backend(directory).manifest_uris(directory)

    def verify(self, uri: str) -> str | None:
        """Stream `uri` through sha256 and compare it with its manifest: None if it matches (or has no
        record), else why not (missing included). The size is compared first, without reading."""
        expected = self.expected(uri)
        if expected is None:
            return None
        return self._backend(uri).verify(uri, expected)

    def uri(self, *parts: str) -> str:
        """URI of `parts` under the store's root."""
        from consistency_core.stage_wire import join_uri

        return join_uri(self.root, *parts)

    # ---- single objects

    def is_file(self, uri: str) -> bool:
        """True for an existing file / S3 object (not a directory or prefix)."""
        return self._backend(uri).is_file(uri)

    def exists(self, uri: str) -> bool:
        """True for an existing file/object, or a directory/prefix with at least one file."""
        return self.is_file(uri) or self._backend(uri).has_files_below(uri)

    def read_bytes(self, uri: str, *, verify: bool = True) -> bytes:
        """The file's bytes; with `verify`, checked against its manifest (ArtifactMismatch if they differ)."""
        data = self._backend(uri).read_bytes(uri)
        if verify:
            expected = self.expected(uri)
            if expected is not None:
                self._check(expected, hashlib.sha256(data).hexdigest(), len(data))
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: temp file + rename locally; one PUT or a completed multipart upload on S3."""
        backend = self._backend(uri)
        log.debug("write %s (%d bytes)", uri, len(data))
        self._wrote(uri)
        backend.write_bytes(uri, data)

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_json(self, uri: str) -> Any:
        text = self.read_text(uri)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{uri}: not valid JSON: {exc}", uri=uri) from None

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_text(uri, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def read_jsonl(self, uri: str) -> list[dict[str, Any]]:
        """Rows of a JSONL file; a bad line is an error naming the file and line number."""
        try:
            return parse_jsonl_objects(self.read_text(uri), uri)
        except JsonlError as exc:
            raise StoreError(str(exc), uri=uri) from None

    def write_jsonl(self, uri: str, rows: Iterable[Any]) -> bytes:
        """Write rows as JSONL atomically; returns the bytes written (for manifest hashes)."""
        lines = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
        data = "".join(lines).encode("utf-8")
        self.write_bytes(uri, data)
        return data

    def delete(self, uri: str, *, recursive: bool = False) -> None:
        """Delete a file/object (missing is fine); with recursive, everything under the prefix too."""
        backend = self._backend(uri)
        self._wrote(uri)
        backend.delete(uri, recursive=recursive)

    def list(self, prefix: str) -> list[str]:
        """URIs of every file below the directory/prefix `prefix` (recursive, sorted)."""
        return self._backend(prefix).list(prefix)

    def sweep_temp(self, prefix: str, older_than_s: float) -> list[str]:
        """Remove what interrupted writes under `prefix` left behind more than `older_than_s` ago: local
        `.tmp-` files and directories (a SIGKILL skips their cleanup), and on S3 incomplete multipart
        uploads. Younger ones may belong to a live writer and stay. Returns what was removed."""
        return self._backend(prefix).sweep_temp(prefix, older_than_s)

    # ---- whole files and directories

    def upload_file(self, path: Path | str, uri: str) -> None:
        """Copy a local file to `uri` (multipart above the threshold), atomically."""
        backend = self._backend(uri)
        self._wrote(uri)
        backend.upload_file(Path(path), uri)

    def download_file(self, uri: str, path: Path | str) -> Path:
        """Copy `uri` to a local file via a temp file: a failed download leaves nothing behind. The copy is
        hashed as it is written and checked against the file's manifest before it is renamed into place."""
        backend = self._backend(uri)
        path = Path(path)
        expected = self.expected(uri)
        backend.download_file(uri, path, lambda sha256, size: self._check(expected, sha256, size))
        return path

    def upload_dir(self, local_dir: Path | str, uri: str) -> list[str]:
        """Copy a local directory tree under `uri`; returns the written URIs."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreNotFound(f"upload_dir: not a directory: {local_dir}", uri=str(local_dir))
        files = local_files(local_dir)
        if not is_s3(uri):
            _LOCAL.copy_tree(local_dir, local_path(uri))
        else:
            for path in files:
                self.upload_file(path, child_uri(uri, path.relative_to(local_dir).as_posix()))
        return [child_uri(uri, p.relative_to(local_dir).as_posix()) for p in files]

    def download_dir(self, uri: str, local_dir: Path | str) -> Path:
        """Copy everything under `uri` into `local_dir` (each file atomically); returns local_dir."""
        local_dir = Path(local_dir)
        children = self.list(uri)
        if not children:
            raise StoreNotFound(f"download_dir: nothing under {uri}", uri=uri)
        base = uri.rstrip("/") + "/"
        for child in children:
            self.download_file(child, local_dir / child[len(base):])
        return local_dir

    def copy_dir(self, src_uri: str, dst_uri: str) -> list[str]:
        """Copy a directory tree between any two locations (server-side within S3)."""
        if not is_s3(src_uri):
            return self.upload_dir(local_path(src_uri), dst_uri)
        if not is_s3(dst_uri):
            self.download_dir(src_uri, local_path(dst_uri))
            return self.list(dst_uri)
        children = self.list(src_uri)
        if not children:
            raise StoreNotFound(f"copy_dir: nothing under {src_uri}", uri=src_uri)
        base = src_uri.rstrip("/") + "/"
        written = []
        for child in children:
            target = child_uri(dst_uri, child[len(base):])
            self._s3.copy(child, target)
            written.append(target)
        return written


def open_store(store: ArtifactStore | Store | str | None = None) -> Store:
    """A Store for a campaign's ArtifactStore, a root URI, or (None) the current directory.

    Endpoint and region from the ArtifactStore win over AWS_ENDPOINT_URL / AWS_REGION."""
    if isinstance(store, Store):
        return store
    if store is None:
        return Store(root=".", s3=S3Settings.from_env())
    if isinstance(store, str):
        check_scheme(store)
        return Store(root=store, s3=S3Settings.from_env())
    check_scheme(store.uri)
    return Store(root=store.uri, s3=S3Settings.from_env(endpoint=store.endpoint, region=store.region))


_default: Store | None = None
_default_lock = threading.Lock()


def default_store() -> Store:
    """Process-wide store configured from the environment only (for dataset loaders, config files)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = open_store(None)
        return _default


def read_bytes(uri: str) -> bytes:
    """Read any URI with settings from the environment."""
    return default_store().read_bytes(uri)


def read_text(uri: str) -> str:
    return default_store().read_text(uri)
