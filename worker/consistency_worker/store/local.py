"""The local backend: files under `file://` URIs and plain paths.

Atomicity: readers never see half a file. Every write goes to a temp file in the destination's
directory (named `.<name>.tmp-<random>`, hidden from `list`) and is renamed over it; a fresh directory
copy appears whole, by one rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from consistency_worker.store.errors import StoreNotFound
from consistency_worker.store.integrity import Expected, HashingWriter, MiB, mismatch, sha256_file
from consistency_worker.store.uris import child_uri, local_path

TMP_MARK = ".tmp-"  # temp files/dirs are named `.<name>.tmp-<random>` and hidden from list()


@contextlib.contextmanager
def atomic_local_file(dest: Path) -> Iterator[Path]:
    """Yield a temp path next to `dest`; rename it over `dest` on success, delete it on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}{TMP_MARK}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def local_files(root: Path) -> list[Path]:
    """Every file below `root` (sorted, temp files of unfinished writes left out)."""
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if TMP_MARK not in d)
        found.extend(Path(dirpath) / f for f in sorted(filenames) if TMP_MARK not in f)
    return found


class LocalBackend:
    """Files and directories on this machine; every method takes a `file://` or plain-path URI."""

    def manifest_uris(self, directory: str) -> list[str]:
        root = local_path(directory)
        return [child_uri(directory, p.name) for p in sorted(root.glob("manifest*.json")) if p.is_file()]

    def verify(self, uri: str, expected: Expected) -> str | None:
        path = local_path(uri)
        if not path.is_file():
            return "missing"
        size = path.stat().st_size
        # The size first: a truncated file is caught without reading it.
        if expected.size is not None and size != expected.size:
            return mismatch(expected, "", size)
        return mismatch(expected, sha256_file(path), size)

    def is_file(self, uri: str) -> bool:
        return local_path(uri).is_file()

    def has_files_below(self, uri: str) -> bool:
        return bool(local_files(local_path(uri)))

    def read_bytes(self, uri: str) -> bytes:
        path = local_path(uri)
        if not path.is_file():
            raise StoreNotFound(f"read: not found: {uri}", uri=uri)
        return path.read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with atomic_local_file(local_path(uri)) as tmp:
            tmp.write_bytes(data)

    def delete(self, uri: str, *, recursive: bool) -> None:
        path = local_path(uri)
        if path.is_dir() and recursive:
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        root = local_path(prefix)
        return [child_uri(prefix, p.relative_to(root).as_posix()) for p in local_files(root)]

    def sweep_temp(self, prefix: str, older_than_s: float) -> list[str]:
        """Temp files and directories of writes a SIGKILL interrupted (it skips their cleanup)."""
        cutoff = time.time() - older_than_s
        removed: list[str] = []
        root = local_path(prefix)
        if not root.is_dir():
            return removed
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*filenames, *dirnames]:
                path = Path(dirpath) / name
                if TMP_MARK not in name or path.lstat().st_mtime >= cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    dirnames.remove(name)
                else:
                    path.unlink(missing_ok=True)
                removed.append(str(path))
        return removed

    def upload_file(self, path: Path, uri: str) -> None:
        with atomic_local_file(local_path(uri)) as tmp:
            shutil.copyfile(path, tmp)

    def download_file(self, uri: str, path: Path, check: Callable[[str, int], None]) -> None:
        """Copy `uri` to `path`, hashed as it is written; `check(sha256, size)` runs before the rename."""
        src = local_path(uri)
        if not src.is_file():
            raise StoreNotFound(f"download: not found: {uri}", uri=uri)
        with atomic_local_file(path) as tmp:
            with src.open("rb") as fin, tmp.open("wb") as fout:
                writer = HashingWriter(fout)
                for block in iter(lambda: fin.read(MiB), b""):
                    writer.write(block)
            check(writer.digest.hexdigest(), writer.size)

    @staticmethod
    def copy_tree(src: Path, dst: Path) -> None:
        """A fresh destination appears whole (one rename); an existing one is merged file by file."""
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}{TMP_MARK}", dir=dst.parent))
            try:
                shutil.copytree(src, tmp, dirs_exist_ok=True,
                                ignore=lambda _d, names: [n for n in names if TMP_MARK in n])
                os.replace(tmp, dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        for path in local_files(src):
            with atomic_local_file(dst / path.relative_to(src)) as tmp:
                shutil.copyfile(path, tmp)
