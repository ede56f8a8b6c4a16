"""The S3 backend: settings (endpoint, region, retries, multipart sizes) from the campaign's
`ArtifactStore` and the environment, one lazily built boto3 client, and botocore's errors translated
into StoreErrors that name the URI and the endpoint.

Atomicity: a single PUT, or a multipart upload that only becomes visible on completion (an interrupted
one is aborted; if the server is gone the orphaned parts stay invisible until a bucket lifecycle rule
`AbortIncompleteMultipartUpload` reaps them, or `sweep_temp` does).

Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as a Kubernetes
Secret is injected) or from files in a mounted Secret directory (CONSISTENCY_S3_CREDENTIALS_DIR); they
are handed straight to boto3 and never stored, logged or put in error messages.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consistency_worker.store.errors import StoreError, StoreNotFound, StoreUnavailable
from consistency_worker.store.integrity import Expected, HashingWriter, MiB, mismatch
from consistency_worker.store.local import atomic_local_file
from consistency_worker.store.uris import split_s3

if TYPE_CHECKING:
    from botocore.client import BaseClient

_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
_TRANSIENT = ("SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError")

ENV_ENDPOINT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
ENV_REGION = ("AWS_REGION", "AWS_DEFAULT_REGION")
ENV_CREDENTIALS_DIR = "CONSISTENCY_S3_CREDENTIALS_DIR"
ENV_MAX_ATTEMPTS = "CONSISTENCY_S3_MAX_ATTEMPTS"
ENV_CONNECT_TIMEOUT = "CONSISTENCY_S3_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "CONSISTENCY_S3_READ_TIMEOUT"
ENV_MULTIPART_THRESHOLD = "CONSISTENCY_S3_MULTIPART_THRESHOLD"
ENV_MULTIPART_CHUNKSIZE = "CONSISTENCY_S3_MULTIPART_CHUNKSIZE"


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


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class S3Backend:
    """Objects under `s3://bucket/key` URIs, through one boto3 client built on first use."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> BaseClient:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"max_attempts": self.settings.max_attempts, "mode": "standard"},
                    connect_timeout=self.settings.connect_timeout,
                    read_timeout=self.settings.read_timeout,
                    # MinIO/Ceph and most non-AWS endpoints need path-style addressing.
                    s3={"addressing_style": "path" if self.settings.endpoint else "auto"},
                )
                session = boto3.session.Session(**_secret_file_credentials())
                self._client = session.client(
                    "s3",
                    endpoint_url=self.settings.endpoint,
                    region_name=self.settings.region or "us-east-1",
                    config=config,
                )
            return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.settings.multipart_threshold,
            multipart_chunksize=self.settings.multipart_chunksize,
            max_concurrency=self.settings.max_concurrency,
            num_download_attempts=self.settings.max_attempts,
        )

    @contextlib.contextmanager
    def errors(self, op: str, uri: str) -> Iterator[None]:
        """Translate botocore/s3transfer errors into StoreError naming the URI and the endpoint."""
        from botocore import exceptions as bex

        where = f"{uri} (endpoint {self.settings.endpoint or 'AWS default'})"
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
                f"{op}: cannot reach S3 for {where} after {self.settings.max_attempts} attempt(s): "
                f"{type(exc).__name__}: {exc}",
                uri=uri,
            ) from None
        except Exception as exc:
            # s3transfer wraps the last streaming error in RetriesExceededError; transient by nature.
            if type(exc).__name__ == "RetriesExceededError":
                raise StoreUnavailable(f"{op}: transfer from {where} kept failing: {exc}", uri=uri) from None
            raise

    def manifest_uris(self, directory: str) -> list[str]:
        bucket, key = split_s3(directory)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        with self.errors("list", directory):
            page = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "manifest", Delimiter="/")
        return sorted(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []) if o["Key"].endswith(".json"))

    def verify(self, uri: str, expected: Expected) -> str | None:
        bucket, key = split_s3(uri)
        try:
            with self.errors("verify", uri):
                body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
                writer = HashingWriter(_Discard())
                for chunk in iter(lambda: body.read(MiB), b""):
                    writer.write(chunk)
        except StoreNotFound:
            return "missing"
        return mismatch(expected, writer.digest.hexdigest(), writer.size)

    def is_file(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        with self.errors("head", uri):
            try:
                self.client().head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def has_files_below(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        with self.errors("exists", uri):
            page = self.client().list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
        return bool(page.get("KeyCount", 0))

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        buf = io.BytesIO()
        with self.errors("read", uri):
            self.client().download_fileobj(bucket, key, buf, Config=self._transfer_config())
        return buf.getvalue()

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        with self.errors("write", uri):
            self.client().upload_fileobj(io.BytesIO(data), bucket, key, Config=self._transfer_config())

    def delete(self, uri: str, *, recursive: bool) -> None:
        bucket, key = split_s3(uri)
        with self.errors("delete", uri):
            if recursive:
                for child in self.list(uri):
                    self.client().delete_object(Bucket=bucket, Key=split_s3(child)[1])
            self.client().delete_object(Bucket=bucket, Key=key)

    def list(self, prefix: str) -> list[str]:
        bucket, key = split_s3(prefix)
        key_prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        found: list[str] = []
        with self.errors("list", prefix):
            paginator = self.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
                found.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return sorted(found)

    def sweep_temp(self, prefix: str, older_than_s: float) -> list[str]:
        """Incomplete multipart uploads under `prefix` started more than `older_than_s` ago."""
        cutoff = time.time() - older_than_s
        removed: list[str] = []
        bucket, key = split_s3(prefix)
        with self.errors("sweep", prefix):
            page = self.client().list_multipart_uploads(Bucket=bucket, Prefix=key.rstrip("/") + "/")
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    self.client().abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                         UploadId=upload["UploadId"])
                    removed.append(f"s3://{bucket}/{upload['Key']} (upload {upload['UploadId']})")
        return removed

    def upload_file(self, path: Path, uri: str) -> None:
        bucket, key = split_s3(uri)
        with self.errors("upload", uri), path.open("rb") as fh:
            self.client().upload_fileobj(fh, bucket, key, Config=self._transfer_config())

    def download_file(self, uri: str, path: Path, check: Callable[[str, int], None]) -> None:
        """Download `uri` to `path`, hashed as it is written; `check(sha256, size)` runs before the rename."""
        bucket, key = split_s3(uri)
        with self.errors("download", uri), atomic_local_file(path) as tmp:
            with tmp.open("wb") as fh:
                writer = HashingWriter(fh)
                self.client().download_fileobj(bucket, key, writer, Config=self._transfer_config())
            check(writer.digest.hexdigest(), writer.size)

    def copy(self, src_uri: str, dst_uri: str) -> None:
        """Server-side copy of one object."""
        sbucket, skey = split_s3(src_uri)
        dbucket, dkey = split_s3(dst_uri)
        with self.errors("copy", src_uri):
            self.client().copy({"Bucket": sbucket, "Key": skey}, dbucket, dkey, Config=self._transfer_config())
