"""Artifact store against a local directory and a real S3 server over HTTP (moto server mode)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from consistency_worker.store import facade as store_mod
from consistency_worker.store.errors import StoreError, StoreNotFound, StoreUnavailable
from consistency_worker.store.facade import Store, open_store
from consistency_worker.store.integrity import MiB
from consistency_worker.store.s3 import S3Settings

from tests.conftest import S3_TEST_ENV, S3Server, make_bucket


def _exercise_roundtrip(store: Store, base: str) -> None:
    """The same contract on every backend."""
    store.write_bytes(f"{base}/a/bin.dat", b"\x00\x01binary")
    store.write_text(f"{base}/a/text.txt", "héllo")
    store.write_json(f"{base}/b/obj.json", {"x": [1, 2], "y": "z"})
    data = store.write_jsonl(f"{base}/b/rows.jsonl", [{"i": 1}, {"i": 2}])
    assert store.read_bytes(f"{base}/a/bin.dat") == b"\x00\x01binary"
    assert store.read_text(f"{base}/a/text.txt") == "héllo"
    assert store.read_json(f"{base}/b/obj.json") == {"x": [1, 2], "y": "z"}
    assert store.read_jsonl(f"{base}/b/rows.jsonl") == [{"i": 1}, {"i": 2}]
    assert store.read_bytes(f"{base}/b/rows.jsonl") == data

    # Overwrite replaces the whole content.
    store.write_text(f"{base}/a/text.txt", "short")
    assert store.read_text(f"{base}/a/text.txt") == "short"

    assert store.is_file(f"{base}/a/bin.dat")
    assert not store.is_file(f"{base}/a")
    assert store.exists(f"{base}/a")  # a non-empty directory / prefix
    assert not store.exists(f"{base}/nope")
    assert store.list(f"{base}/a") == [f"{base}/a/bin.dat", f"{base}/a/text.txt"]
    assert store.list(base) == [
        f"{base}/a/bin.dat", f"{base}/a/text.txt", f"{base}/b/obj.json", f"{base}/b/rows.jsonl",
    ]
    assert store.list(f"{base}/missing") == []

    with pytest.raises(StoreNotFound) as info:
        store.read_bytes(f"{base}/missing.txt")
    assert f"{base}/missing.txt" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)

    store.delete(f"{base}/a/bin.dat")
    assert not store.exists(f"{base}/a/bin.dat")
    store.delete(f"{base}/a/bin.dat")  # deleting twice is fine
    store.delete(f"{base}/b", recursive=True)
    assert store.list(base) == [f"{base}/a/text.txt"]


def _exercise_dirs(store: Store, base: str, tmp_path: Path) -> None:
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (src / "sub" / "extra.txt").write_text("x")
    written = store.upload_dir(src, f"{base}/adapter")
    assert sorted(written) == store.list(f"{base}/adapter")
    assert len(written) == 3

    store.copy_dir(f"{base}/adapter", f"{base}/copy")
    out = store.download_dir(f"{base}/copy", tmp_path / "back")
    for rel in ("adapter_config.json", "adapter_model.safetensors", "sub/extra.txt"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    with pytest.raises(StoreNotFound):
        store.download_dir(f"{base}/nothing-here", tmp_path / "nothing")


def test_local_roundtrip_plain_path(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    _exercise_roundtrip(store, str(tmp_path / "root"))


def test_local_roundtrip_file_uri(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    _exercise_roundtrip(store, f"file://{tmp_path}/root")
    _exercise_dirs(store, f"file://{tmp_path}/root", tmp_path)


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    dest = tmp_path / "out" / "data.bin"
    store.write_bytes(str(dest), b"old")
    # A copy that fails half-way (missing source) leaves the old content and no temp file.
    with pytest.raises(FileNotFoundError):
        store.upload_file(tmp_path / "does-not-exist", str(dest))
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.bin"]
    # Temp files of an interrupted writer are never listed as outputs.
    (dest.parent / ".data.bin.tmp-abc").write_bytes(b"half")
    assert store.list(str(dest.parent)) == [str(dest)]


def test_local_copy_dir_to_fresh_destination_appears_whole(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_text(str(i))
    store.copy_dir(str(src), str(tmp_path / "dst"))
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [f"f{i}" for i in range(5)]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_unsupported_scheme_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="unsupported URI scheme 'gs'"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="unsupported URI scheme"):
        Store().read_bytes("ftp://host/file")


def test_s3_roundtrip_over_http(s3_bucket: str) -> None:
    store = open_store(s3_bucket)
    _exercise_roundtrip(store, f"{s3_bucket}/run1")


def test_s3_dirs_and_cross_backend_copies(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    _exercise_dirs(store, f"{s3_bucket}/run1", tmp_path)
    # S3 -> local and local -> S3 through the same call.
    store.copy_dir(f"{s3_bucket}/run1/adapter", str(tmp_path / "local-copy"))
    assert (tmp_path / "local-copy" / "sub" / "extra.txt").read_text() == "x"
    store.copy_dir(str(tmp_path / "local-copy"), f"{s3_bucket}/run2/adapter")
    assert len(store.list(f"{s3_bucket}/run2/adapter")) == 3


def test_s3_list_treats_prefix_as_directory(s3_bucket: str) -> None:
    store = open_store(s3_bucket)
    store.write_text(f"{s3_bucket}/gen/a.jsonl", "1")
    store.write_text(f"{s3_bucket}/generations/b.jsonl", "2")
    assert store.list(f"{s3_bucket}/gen") == [f"{s3_bucket}/gen/a.jsonl"]
    assert store.list(f"{s3_bucket}/gen/") == [f"{s3_bucket}/gen/a.jsonl"]
    assert len(store.list(s3_bucket)) == 2


def test_s3_multipart_above_threshold(s3_env: dict[str, str], s3_bucket: str, tmp_path: Path) -> None:
    settings = S3Settings(endpoint=s3_env["AWS_ENDPOINT_URL"], max_attempts=2,
                          multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = Store(root=s3_bucket, s3=settings)
    payload = os.urandom(11 * MiB)
    store.write_bytes(f"{s3_bucket}/big.bin", payload)
    local = tmp_path / "big-src.bin"
    local.write_bytes(payload[: 6 * MiB])
    store.upload_file(local, f"{s3_bucket}/big2.bin")

    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    # A multipart object's ETag ends in -<number of parts>.
    assert client.head_object(Bucket=bucket, Key="big.bin")["ETag"].strip('"').endswith("-3")
    assert client.head_object(Bucket=bucket, Key="big2.bin")["ETag"].strip('"').endswith("-2")
    store.write_bytes(f"{s3_bucket}/small.bin", b"x")
    assert "-" not in client.head_object(Bucket=bucket, Key="small.bin")["ETag"]
    assert store.read_bytes(f"{s3_bucket}/big.bin") == payload
    downloaded = store.download_file(f"{s3_bucket}/big2.bin", tmp_path / "dl.bin")
    assert downloaded.read_bytes() == payload[: 6 * MiB]


def test_s3_missing_object_and_bucket(s3_bucket: str) -> None:
    store = open_store(s3_bucket)
    with pytest.raises(StoreNotFound, match="not found"):
        store.read_bytes(f"{s3_bucket}/nothing.json")
    with pytest.raises(StoreError, match="bucket does not exist") as info:
        store.write_text("s3://no-such-bucket-xyz/a.txt", "x")
    assert not info.value.retryable


def test_module_level_read_uses_environment(s3_bucket: str) -> None:
    open_store(s3_bucket).write_text(f"{s3_bucket}/cfg.json", '{"a": 1}')
    assert store_mod.read_bytes(f"{s3_bucket}/cfg.json") == b'{"a": 1}'


def test_credentials_from_mounted_secret(s3_bucket: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no S3 credentials") as info:
        open_store(s3_bucket).write_text(f"{s3_bucket}/x.txt", "x")
    assert not info.value.retryable

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text("mounted-id\n")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text("mounted-secret\n")
    monkeypatch.setenv("CONSISTENCY_S3_CREDENTIALS_DIR", str(secret))
    store = open_store(s3_bucket)
    store.write_text(f"{s3_bucket}/x.txt", "x")
    assert store.read_text(f"{s3_bucket}/x.txt") == "x"
    assert "mounted-secret" not in repr(store)


@pytest.fixture
def own_server(s3_env: dict[str, str]) -> Iterator[S3Server]:
    """A server this test may stop; moto keeps state in-process, so a fresh server sees the same data."""
    server = S3Server()
    yield server
    server.stop()


def _down_store(server: S3Server, bucket: str) -> Store:
    return Store(root=f"s3://{bucket}", s3=S3Settings(
        endpoint=server.endpoint, max_attempts=2, connect_timeout=1, read_timeout=5,
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1,
    ))


def test_server_down_is_retryable_error_naming_uri_and_endpoint(
    own_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = make_bucket(own_server.endpoint)
    store = _down_store(own_server, bucket)
    store.write_text(f"s3://{bucket}/ok.txt", "fine")
    own_server.stop()
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.read_bytes(f"s3://{bucket}/ok.txt")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert info.value.retryable
    assert f"s3://{bucket}/ok.txt" in message
    assert own_server.endpoint in message
    assert "after 2 attempt(s)" in message
    assert elapsed < 10, f"bounded retries took {elapsed:.1f} s"
    secret = S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"]
    assert secret not in message and secret not in caplog.text


def test_server_dies_mid_multipart_upload_leaves_no_object(own_server: S3Server) -> None:
    bucket = make_bucket(own_server.endpoint)
    store = _down_store(own_server, bucket)
    parts_sent = []

    def stop_after_first_part(**_: object) -> None:
        parts_sent.append(1)
        if len(parts_sent) == 2:  # part 1 went through; the server dies before part 2
            own_server.stop()

    store.client().meta.events.register("before-send.s3.UploadPart", stop_after_first_part)
    with pytest.raises(StoreUnavailable, match=f"s3://{bucket}/big.bin"):
        store.write_bytes(f"s3://{bucket}/big.bin", os.urandom(16 * MiB))
    assert len(parts_sent) >= 2

    # Nothing half-written is visible once the store is back.
    revived = S3Server()
    try:
        assert _down_store(revived, bucket).list(f"s3://{bucket}") == []
    finally:
        revived.stop()


def test_server_dies_mid_download_leaves_no_local_file(own_server: S3Server, tmp_path: Path) -> None:
    bucket = make_bucket(own_server.endpoint)
    store = _down_store(own_server, bucket)
    store.write_bytes(f"s3://{bucket}/model.bin", os.urandom(12 * MiB))
    target = tmp_path / "dl" / "model.bin"
    target.parent.mkdir()
    target.write_bytes(b"previous")

    def stop(**_: object) -> None:
        own_server.stop()

    store.client().meta.events.register("before-send.s3.GetObject", stop)
    with pytest.raises(StoreUnavailable, match=f"s3://{bucket}/model.bin"):
        store.download_file(f"s3://{bucket}/model.bin", target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]
