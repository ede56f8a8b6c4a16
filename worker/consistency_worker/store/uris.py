"""Store URIs: `s3://bucket/key`, `file:///abs/path` or a plain path; which backend serves one, and the
checks that refuse other schemes."""

from __future__ import annotations

from pathlib import Path

from consistency_worker.store.errors import StoreError


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


def child_uri(prefix_uri: str, relative: str) -> str:
    return prefix_uri.rstrip("/") + "/" + relative


def check_scheme(uri: str) -> None:
    if "://" in uri and not (is_s3(uri) or uri.startswith("file://")):
        scheme = uri.split("://", 1)[0]
        raise StoreError(
            f"unsupported URI scheme {scheme!r} in {uri!r} (use s3://, file:// or a path)", uri=uri
        )
