"""Artifact store: one interface over local directories and S3, addressed by absolute URIs.

URIs: `s3://bucket/key`, `file:///abs/path` or a plain path. One `Store` serves every scheme, so a
campaign can read a dataset from a local path while its artifacts live in S3; the S3 settings
(endpoint, region, retries, multipart sizes) come from the campaign's `ArtifactStore` and the
environment.

Atomicity: readers never see half a file. Locally every write goes to a temp file in the
destination's directory and is renamed over it. On S3 a single PUT, or a multipart upload that only
becomes visible on completion (an interrupted one is aborted; if the server is gone the orphaned
parts stay invisible until a bucket lifecycle rule `AbortIncompleteMultipartUpload` reaps them).
Downloads go to a temp file that is renamed on success and removed on failure.

Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as a Kubernetes
Secret is injected) or from files in a mounted Secret directory (CONSISTENCY_S3_CREDENTIALS_DIR); they
are handed straight to boto3 and never stored on the Store, logged or put in error messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consistency_core.spec import ArtifactStore

from consistency_worker.integrity import Expected, HashingWriter, ManifestIndex, is_manifest, mismatch

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
_TRANSIENT = ("SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError")
_TMP_MARK = ".tmp-"  # temp files/dirs are named `.<name>.tmp-<random>` and hidden from list()

ENV_ENDPOINT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
ENV_REGION = ("AWS_REGION", "AWS_DEFAULT_REGION")
ENV_CREDENTIALS_DIR = "CONSISTENCY_S3_CREDENTIALS_DIR"
ENV_MAX_ATTEMPTS = "CONSISTENCY_S3_MAX_ATTEMPTS"
ENV_CONNECT_TIMEOUT = "CONSISTENCY_S3_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "CONSISTENCY_S3_READ_TIMEOUT"
ENV_MULTIPART_THRESHOLD = "CONSISTENCY_S3_MULTIPART_THRESHOLD"
ENV_MULTIPART_CHUNKSIZE = "CONSISTENCY_S3_MULTIPART_CHUNKSIZE"


class StoreError(Exception):
    """A store operation failed. `retryable` tells the CLI which exit code to use."""

    retryable = False

    def __init__(self, message: str, *, uri: str | None = None):
        super().__init__(message)
        self.uri = uri


class JsonlError(ValueError):
    """A JSONL text has a line that is not a JSON object (the message names source and line)."""


def parse_jsonl_objects(text: str, source: str) -> list[dict[str, Any]]:
    """JSON objects of a JSONL text, blank lines skipped; a bad line raises JsonlError naming source:line."""
    rows = []
    # Only "\n" ends a JSONL line: str.splitlines() also splits at U+2028 and U+0085, which
    # json.dumps(ensure_ascii=False) leaves raw inside strings (GSM8K has some).
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JsonlError(f"{source}:{lineno}: not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise JsonlError(f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a transient error (after retries)."""

    retryable = True


class StoreNotFound(StoreError, FileNotFoundError):
    """The object or file does not exist."""


class ArtifactMismatch(StoreError):
    """A file differs from what its stage's manifest records (truncated, replaced, corrupted). Retryable:
    the stage that wrote it runs again and rewrites it."""

    retryable = True


def _env_first(names: Iterable[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise StoreError(f"environment variable {name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class S3Settings:
    """How to talk to S3. Defaults retry for ~10-20 s in total with capped exponential backoff."""

    endpoint: str | None = None
    region: str | None = None
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 64 * MiB
    max_concurrency: int = 8

    @classmethod
    def from_env(cls, endpoint: str | None = None, region: str | None = None) -> S3Settings:
        return cls(
            endpoint=endpoint or _env_first(ENV_ENDPOINT),
            region=region or _env_first(ENV_REGION),
            max_attempts=max(1, int(_env_number(ENV_MAX_ATTEMPTS, cls.max_attempts))),
            connect_timeout=_env_number(ENV_CONNECT_TIMEOUT, cls.connect_timeout),
            read_timeout=_env_number(ENV_READ_TIMEOUT, cls.read_timeout),
            multipart_threshold=int(_env_number(ENV_MULTIPART_THRESHOLD, cls.multipart_threshold)),
            multipart_chunksize=int(_env_number(ENV_MULTIPART_CHUNKSIZE, cls.multipart_chunksize)),
        )


def _secret_file_credentials() -> dict[str, str]:
    """Credentials from a mounted Secret directory, used only where the env vars are absent."""
    directory = os.environ.get(ENV_CREDENTIALS_DIR)
    if not directory or os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}
    names = {
        "aws_access_key_id": "AWS_ACCESS_KEY_ID",
        "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "aws_session_token": "AWS_SESSION_TOKEN",
    }
    found: dict[str, str] = {}
    for arg, filename in names.items():
        path = Path(directory) / filename
        if path.is_file():
            found[arg] = path.read_text().strip()
    return found


# --------------------------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """Filesystem path of a `file://` or plain-path URI."""
    if is_s3(uri) or ("://" in uri and not uri.startswith("file://")):
        raise StoreError(f"not a local URI: {uri}", uri=uri)
    return Path(uri.removeprefix("file://"))


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StoreError(f"S3 URI without a bucket: {uri!r}", uri=uri)
    return bucket, key


def _child_uri(prefix_uri: str, relative: str) -> str:
    return prefix_uri.rstrip("/") + "/" + relative


def _check_scheme(uri: str) -> None:
    if "://" in uri and not (is_s3(uri) or uri.startswith("file://")):
        scheme = uri.split("://", 1)[0]
        raise StoreError(
            f"unsupported URI scheme {scheme!r} in {uri!r} (use s3://, file:// or a path)", uri=uri
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------- local side


@contextlib.contextmanager
def _atomic_local_file(dest: Path) -> Iterator[Path]:
    """Yield a temp path next to `dest`; rename it over `dest` on success, delete it on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}{_TMP_MARK}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _local_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if _TMP_MARK not in d)
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _TMP_MARK not in f)
    return found


# ------------------------------------------------------------------------------------------ store


@dataclass
class Store:
    """Artifact store rooted at `root`; every method takes absolute URIs of any supported scheme."""

    root: str = "."
    s3: S3Settings = field(default_factory=S3Settings.from_env)
    _client: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _manifests: ManifestIndex = field(default_factory=ManifestIndex, init=False, repr=False)

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
        _check_scheme(directory)
        if not is_s3(directory):
            root = local_path(directory)
            return [_child_uri(directory, p.name) for p in sorted(root.glob("manifest*.json")) if p.is_file()]
        bucket, key = split_s3(directory)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        with self._s3_errors("list", directory):
            page = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "manifest", Delimiter="/")
        return sorted(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []) if o["Key"].endswith(".json"))

    def verify(self, uri: str) -> str | None:
        """Stream `uri` through sha256 and compare it with its manifest: None if it matches (or has no
        record), else why not (missing included). The size is compared first, without reading."""
        expected = self.expected(uri)
        if expected is None:
            return None
        try:
            if not is_s3(uri):
                path = local_path(uri)
                if not path.is_file():
                    return "missing"
                size = path.stat().st_size
                if expected.size is not None and size != expected.size:
                    return mismatch(expected, "", size)
                return mismatch(expected, sha256_file(path), size)
            bucket, key = split_s3(uri)
            with self._s3_errors("verify", uri):
                body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
                writer = HashingWriter(_Discard())
                for chunk in iter(lambda: body.read(MiB), b""):
                    writer.write(chunk)
            return mismatch(expected, writer.digest.hexdigest(), writer.size)
        except StoreNotFound:
            return "missing"

    def uri(self, *parts: str) -> str:
        """URI of `parts` under the store's root."""
        from consistency_core.stage_wire import join_uri

        return join_uri(self.root, *parts)

    # ---- S3 plumbing

    def client(self) -> BaseClient:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"max_attempts": self.s3.max_attempts, "mode": "standard"},
                    connect_timeout=self.s3.connect_timeout,
                    read_timeout=self.s3.read_timeout,
                    # MinIO/Ceph and most non-AWS endpoints need path-style addressing.
                    s3={"addressing_style": "path" if self.s3.endpoint else "auto"},
                )
                session = boto3.session.Session(**_secret_file_credentials())
                self._client = session.client(
                    "s3",
                    endpoint_url=self.s3.endpoint,
                    region_name=self.s3.region or "us-east-1",
                    config=config,
                )
            return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.s3.multipart_threshold,
            multipart_chunksize=self.s3.multipart_chunksize,
            max_concurrency=self.s3.max_concurrency,
            num_download_attempts=self.s3.max_attempts,
        )

    @contextlib.contextmanager
    def _s3_errors(self, op: str, uri: str) -> Iterator[None]:
        """Translate botocore/s3transfer errors into StoreError naming the URI and the endpoint."""
        from botocore import exceptions as bex

        where = f"{uri} (endpoint {self.s3.endpoint or 'AWS default'})"
        try:
            yield
        except StoreError:
            raise
        except bex.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            detail = f"{code or status}: {err.get('Message', '')}".strip()
            if code in ("NoSuchKey", "404", "NotFound"):
                raise StoreNotFound(f"{op}: not found: {where}", uri=uri) from None
            if code == "NoSuchBucket":
                raise StoreError(f"{op}: bucket does not exist: {where}", uri=uri) from None
            if status in (401, 403) or code in _DENIED:
                raise StoreError(
                    f"{op}: access denied to {where} ({code}); check the store credentials", uri=uri
                ) from None
            if status >= 500 or status in (408, 429) or code in _TRANSIENT:
                raise StoreUnavailable(
                    f"{op}: S3 failed for {where} after retries: {detail}", uri=uri
                ) from None
            raise StoreError(f"{op}: S3 refused {where}: {detail}", uri=uri) from None
        except (bex.NoCredentialsError, bex.PartialCredentialsError):
            raise StoreError(
                f"{op}: no S3 credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                f"or mount the Secret and set {ENV_CREDENTIALS_DIR}",
                uri=uri,
            ) from None
        except bex.ParamValidationError as exc:
            raise StoreError(f"{op}: invalid S3 request for {where}: {exc}", uri=uri) from None
        except (bex.BotoCoreError, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"{op}: cannot reach S3 for {where} after {self.s3.max_attempts} attempt(s): "
                f"{type(exc).__name__}: {exc}",
                uri=uri,
            ) from None
        except Exception as exc:
            # s3transfer wraps the last streaming error in RetriesExceededError; transient by nature.
            if type(exc).__name__ == "RetriesExceededError":
                raise StoreUnavailable(f"{op}: transfer from {where} kept failing: {exc}", uri=uri) from None
            raise

    # ---- single objects

    def is_file(self, uri: str) -> bool:
        """True for an existing file / S3 object (not a directory or prefix)."""
        _check_scheme(uri)
        if not is_s3(uri):
            return local_path(uri).is_file()
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        with self._s3_errors("head", uri):
            try:
                self.client().head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def exists(self, uri: str) -> bool:
        """True for an existing file/object, or a directory/prefix with at least one file."""
        if self.is_file(uri):
            return True
        if not is_s3(uri):
            return bool(_local_files(local_path(uri)))
        bucket, key = split_s3(uri)
        with self._s3_errors("exists", uri):
            page = self.client().list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
        return bool(page.get("KeyCount", 0))

    def read_bytes(self, uri: str, *, verify: bool = True) -> bytes:
        """The file's bytes; with `verify`, checked against its manifest (ArtifactMismatch if they differ)."""
        _check_scheme(uri)
        if not is_s3(uri):
            path = local_path(uri)
            if not path.is_file():
                raise StoreNotFound(f"read: not found: {uri}", uri=uri)
            data = path.read_bytes()
        else:
            bucket, key = split_s3(uri)
            buf = io.BytesIO()
            with self._s3_errors("read", uri):
                self.client().download_fileobj(bucket, key, buf, Config=self._transfer_config())
            data = buf.getvalue()
        if verify:
            expected = self.expected(uri)
            if expected is not None:
                self._check(expected, hashlib.sha256(data).hexdigest(), len(data))
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: temp file + rename locally; one PUT or a completed multipart upload on S3."""
        _check_scheme(uri)
        log.debug("write %s (%d bytes)", uri, len(data))
        self._wrote(uri)
        if not is_s3(uri):
            with _atomic_local_file(local_path(uri)) as tmp:
                tmp.write_bytes(data)
            return
        bucket, key = split_s3(uri)
        with self._s3_errors("write", uri):
            self.client().upload_fileobj(io.BytesIO(data), bucket, key, Config=self._transfer_config())

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
        _check_scheme(uri)
        self._wrote(uri)
        if not is_s3(uri):
            path = local_path(uri)
            if path.is_dir() and recursive:
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        with self._s3_errors("delete", uri):
            if recursive:
                for child in self.list(uri):
                    self.client().delete_object(Bucket=bucket, Key=split_s3(child)[1])
            self.client().delete_object(Bucket=bucket, Key=key)

    def list(self, prefix: str) -> list[str]:
        """URIs of every file below the directory/prefix `prefix` (recursive, sorted)."""
        _check_scheme(prefix)
        if not is_s3(prefix):
            root = local_path(prefix)
            return [_child_uri(prefix, p.relative_to(root).as_posix()) for p in _local_files(root)]
        bucket, key = split_s3(prefix)
        key_prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        found: list[str] = []
        with self._s3_errors("list", prefix):
            paginator = self.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
                found.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return sorted(found)

    def sweep_temp(self, prefix: str, older_than_s: float) -> list[str]:
        """Remove what interrupted writes under `prefix` left behind more than `older_than_s` ago: local
        `.tmp-` files and directories (a SIGKILL skips their cleanup), and on S3 incomplete multipart
        uploads. Younger ones may belong to a live writer and stay. Returns what was removed."""
        _check_scheme(prefix)
        cutoff = time.time() - older_than_s
        removed: list[str] = []
        if not is_s3(prefix):
            root = local_path(prefix)
            if not root.is_dir():
                return removed
            for dirpath, dirnames, filenames in os.walk(root):
                for name in [*filenames, *dirnames]:
                    path = Path(dirpath) / name
                    if _TMP_MARK not in name or path.lstat().st_mtime >= cutoff:
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                        dirnames.remove(name)
                    else:
                        path.unlink(missing_ok=True)
                    removed.append(str(path))
            return removed
        bucket, key = split_s3(prefix)
        with self._s3_errors("sweep", prefix):
            page = self.client().list_multipart_uploads(Bucket=bucket, Prefix=key.rstrip("/") + "/")
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    self.client().abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                         UploadId=upload["UploadId"])
                    removed.append(f"s3://{bucket}/{upload['Key']} (upload {upload['UploadId']})")
        return removed

    # ---- whole files and directories

    def upload_file(self, path: Path | str, uri: str) -> None:
        """Copy a local file to `uri` (multipart above the threshold), atomically."""
        _check_scheme(uri)
        self._wrote(uri)
        path = Path(path)
        if not is_s3(uri):
            with _atomic_local_file(local_path(uri)) as tmp:
                shutil.copyfile(path, tmp)
            return
        bucket, key = split_s3(uri)
        with self._s3_errors("upload", uri), path.open("rb") as fh:
            self.client().upload_fileobj(fh, bucket, key, Config=self._transfer_config())

    def download_file(self, uri: str, path: Path | str) -> Path:
        """Copy `uri` to a local file via a temp file: a failed download leaves nothing behind. The copy is
        hashed as it is written and checked against the file's manifest before it is renamed into place."""
        _check_scheme(uri)
        path = Path(path)
        expected = self.expected(uri)
        if not is_s3(uri):
            src = local_path(uri)
            if not src.is_file():
                raise StoreNotFound(f"download: not found: {uri}", uri=uri)
            with _atomic_local_file(path) as tmp:
                with src.open("rb") as fin, tmp.open("wb") as fout:
                    writer = HashingWriter(fout)
                    for block in iter(lambda: fin.read(MiB), b""):
                        writer.write(block)
                self._check(expected, writer.digest.hexdigest(), writer.size)
            return path
        bucket, key = split_s3(uri)
        with self._s3_errors("download", uri), _atomic_local_file(path) as tmp:
            with tmp.open("wb") as fh:
                writer = HashingWriter(fh)
                self.client().download_fileobj(bucket, key, writer, Config=self._transfer_config())
            self._check(expected, writer.digest.hexdigest(), writer.size)
        return path

    def upload_dir(self, local_dir: Path | str, uri: str) -> list[str]:
        """Copy a local directory tree under `uri`; returns the written URIs."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreNotFound(f"upload_dir: not a directory: {local_dir}", uri=str(local_dir))
        files = _local_files(local_dir)
        if not is_s3(uri):
            self._copy_local_tree(local_dir, local_path(uri))
        else:
            for path in files:
                self.upload_file(path, _child_uri(uri, path.relative_to(local_dir).as_posix()))
        return [_child_uri(uri, p.relative_to(local_dir).as_posix()) for p in files]

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
            target = _child_uri(dst_uri, child[len(base):])
            sbucket, skey = split_s3(child)
            dbucket, dkey = split_s3(target)
            with self._s3_errors("copy", child):
                self.client().copy(
                    {"Bucket": sbucket, "Key": skey}, dbucket, dkey, Config=self._transfer_config()
                )
            written.append(target)
        return written

    @staticmethod
    def _copy_local_tree(src: Path, dst: Path) -> None:
        """A fresh destination appears whole (one rename); an existing one is merged file by file."""
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}{_TMP_MARK}", dir=dst.parent))
            try:
                shutil.copytree(src, tmp, dirs_exist_ok=True,
                                ignore=lambda _d, names: [n for n in names if _TMP_MARK in n])
                os.replace(tmp, dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        for path in _local_files(src):
            with _atomic_local_file(dst / path.relative_to(src)) as tmp:
                shutil.copyfile(path, tmp)


def open_store(store: ArtifactStore | Store | str | None = None) -> Store:
    """A Store for a campaign's ArtifactStore, a root URI, or (None) the current directory.

    Endpoint and region from the ArtifactStore win over AWS_ENDPOINT_URL / AWS_REGION."""
    if isinstance(store, Store):
        return store
    if store is None:
        return Store(root=".", s3=S3Settings.from_env())
    if isinstance(store, str):
        _check_scheme(store)
        return Store(root=store, s3=S3Settings.from_env())
    _check_scheme(store.uri)
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
