"""Stored artifacts are verified against their manifest on every read (local and S3 over HTTP), and what
interrupted writes leave behind is swept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest
from consistency_worker.store.errors import ArtifactMismatch, StoreError
from consistency_worker.store.facade import Store, open_store
from consistency_worker.store.integrity import MiB
from consistency_worker.store.manifest import ManifestBuilder
from consistency_worker.store.s3 import S3Settings


def _stage_dir(store: Store, out: str, rows: int = 10) -> str:
    """A finished stage's output: a JSONL, an adapter directory, and the manifest that records them."""
    uri = f"{out}/generations.jsonl"
    data = store.write_jsonl(uri, [{"problemId": f"p{i}", "answer": i} for i in range(rows)])
    store.write_bytes(f"{out}/adapter/adapter_model.safetensors", b"\x00" * 4096)
    store.write_text(f"{out}/adapter/adapter_config.json", "{}")
    builder = ManifestBuilder()
    builder.add_output("generations", uri, data=data)
    builder.add_output("adapter", f"{out}/adapter")
    builder.write(store, f"{out}/manifest.json")
    return uri


def _truncate_on_a_line_boundary(store: Store, uri: str, keep: int) -> None:
    lines = store.read_bytes(uri, verify=False).splitlines(keepends=True)
    # Written straight to the medium, as a bad sync or a hand edit would (not through this Store).
    store_raw = Store(root=store.root, s3=store.s3)
    store_raw.write_bytes(uri, b"".join(lines[:keep]))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_truncated_jsonl_is_an_error_naming_the_file_not_fewer_rows(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    root = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_bucket")
    store = open_store(root)
    uri = _stage_dir(store, f"{root}/c/1b1-i1-generate")
    assert len(store.read_jsonl(uri)) == 10

    _truncate_on_a_line_boundary(store, uri, keep=6)
    reader = open_store(root)  # the next stage: a new process, a new Store
    with pytest.raises(ArtifactMismatch) as err:
        reader.read_jsonl(uri)
    assert err.value.retryable and err.value.uri == uri
    assert f"{uri} does not match its manifest" in str(err.value) and "records" in str(err.value)


def test_a_file_of_a_directory_output_is_checked_and_a_bad_download_leaves_nothing(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    store = open_store(root)
    _stage_dir(store, f"{root}/c/train")
    weights = tmp_path / "store" / "c" / "train" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(b"\x01" * 4096)  # same size, other bytes
    reader = open_store(root)
    with pytest.raises(ArtifactMismatch, match=r"adapter_model\.safetensors does not match its manifest: sha256"):
        reader.download_dir(f"{root}/c/train/adapter", tmp_path / "local-adapter")
    assert not (tmp_path / "local-adapter" / "adapter_model.safetensors").exists()
    assert not [p for p in (tmp_path / "local-adapter").rglob("*") if ".tmp-" in p.name]


def test_a_large_s3_download_is_hashed_in_the_same_pass(s3_env: dict[str, str], s3_bucket: str,
                                                        tmp_path: Path) -> None:
    settings = S3Settings(endpoint=s3_env["AWS_ENDPOINT_URL"], max_attempts=2,
                          multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = Store(root=s3_bucket, s3=settings)
    payload = os.urandom(11 * MiB)
    uri = f"{s3_bucket}/c/train/model.bin"
    store.write_bytes(uri, payload)
    builder = ManifestBuilder()
    builder.add_output("model", uri, data=payload)
    builder.write(store, f"{s3_bucket}/c/train/manifest.json")
    assert store.download_file(uri, tmp_path / "ok.bin").read_bytes() == payload  # multipart, in order
    store.write_bytes(uri, payload[:-1] + b"\x00")
    with pytest.raises(ArtifactMismatch, match=r"model\.bin does not match its manifest"):
        Store(root=s3_bucket, s3=settings).download_file(uri, tmp_path / "bad.bin")
    assert not (tmp_path / "bad.bin").exists()


def test_files_without_a_manifest_read_as_they_are(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.write_text(f"{tmp_path}/datasets/train.jsonl", '{"q": 1}\n')
    assert store.read_jsonl(f"{tmp_path}/datasets/train.jsonl") == [{"q": 1}]


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(StoreError, match="unsupported URI scheme 'gopher'"):
        open_store("gopher://example.org/runs")


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from consistency_worker.store import local as local_backend
    from consistency_worker.store.facade import open_store
    def die(*_):  # SIGKILL between the temp file's last byte and the rename
        os.kill(os.getpid(), signal.SIGKILL)
    local_backend.os.replace = die
    open_store(sys.argv[1]).write_bytes(sys.argv[2], b"n" * (8 * 1024 * 1024))
""")


def test_a_write_killed_before_its_rename_keeps_the_old_file_and_its_temp_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    out = root / "c" / "generate"
    target = out / "generations.jsonl"
    store = open_store(str(root))
    store.write_bytes(str(target), b"old\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(root), str(target)], env=env, check=False)
    assert proc.returncode == -9
    assert target.read_bytes() == b"old\n"
    [leftover] = [p for p in out.iterdir() if ".tmp-" in p.name]
    assert leftover.stat().st_size == 8 * 1024 * 1024

    young = out / ".other.tmp-young"
    young.write_bytes(b"a live writer's")
    assert store.sweep_temp(str(out), older_than_s=3600) == []  # both younger than the deadline
    hour_ago = time.time() - 3601
    os.utime(leftover, (hour_ago, hour_ago))
    assert store.sweep_temp(str(out), older_than_s=3600) == [str(leftover)]
    assert not leftover.exists() and young.exists() and target.read_bytes() == b"old\n"


def test_stale_multipart_uploads_are_aborted(s3_env: dict[str, str], s3_bucket: str) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_multipart_upload(Bucket=bucket, Key="c/generate/generations.jsonl")
    store = open_store(s3_bucket)
    # moto reports every upload as initiated in 2010, so only the stale side can be shown here.
    [removed] = store.sweep_temp(f"{s3_bucket}/c/generate", older_than_s=3600)
    assert "c/generate/generations.jsonl" in removed
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
