"""The worker's handle on one sandbox host process (``_host.py``): starting it, the length-prefixed JSON
requests and answers on its pipes, and removing what it leaves (its cgroup and its run directories)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from consistency_worker.sandbox.probe import CGROUP_PREFIX
from consistency_worker.sandbox.types import SandboxError

log = logging.getLogger(__name__)

HOST_SCRIPT = str(Path(__file__).with_name("_host.py"))
_HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# Extra seconds the worker waits for a host beyond a run's own timeout (killing a big fork bomb).
HOST_GRACE_S = 30.0


def _readable(fd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(max(1, int(timeout_s * 1000))))


class HostDied(Exception):
    pass


class Host:
    """One sandbox host process and its request/response pipes."""

    def __init__(self, argv: list[str], cgroup_dirs: list[str], workroot: str) -> None:
        self.cgroup_dirs = cgroup_dirs
        # The host's run directories live here; the worker removes it with the host, so a host its
        # program killed (no fresh uid, no namespaces) leaves nothing behind.
        self.workroot = workroot
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the host; closed in close()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=_HOST_ENV,
            cwd="/", start_new_session=True, close_fds=True, bufsize=0,
        )  # fmt: skip
        hello = self._receive(30.0)
        if not hello.get("ready"):
            raise SandboxError(f"sandbox host did not start: {hello}")
        self.landlock, self.seccomp = int(hello.get("landlock", 0)), bool(hello.get("seccomp"))

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        need = 4
        size = None
        deadline = time.monotonic() + timeout_s
        while True:
            while len(buf) < need:
                left = deadline - time.monotonic()
                # poll, not select: the worker's descriptors can pass select's FD_SETSIZE (1024).
                if left <= 0 or not _readable(fd, left):
                    raise HostDied(f"sandbox host gave no answer within {timeout_s:g}s")
                chunk = os.read(fd, need - len(buf))
                if not chunk:
                    raise HostDied(f"sandbox host exited: {self._last_words()}")
                buf += chunk
            if size is None:
                (size,) = struct.unpack(">I", buf)
                buf, need = b"", size
                continue
            return json.loads(buf)

    def _last_words(self) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read()[-600:].decode("utf-8", "replace").strip()
        return tail or f"exit status {self.proc.poll()}"

    def request(self, req: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        data = json.dumps(req).encode()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        except (BrokenPipeError, OSError) as exc:
            raise HostDied(f"sandbox host unreachable: {exc}") from None
        return self._receive(timeout_s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()
        for d in self.cgroup_dirs:
            remove_cgroup_dir(d)
        shutil.rmtree(self.workroot, ignore_errors=True)


def remove_cgroup_dir(path: str) -> None:
    # Empty once the host and its children are dead; the kernel may need a moment to notice.
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    log.warning("sandbox cgroup %s is still busy; left behind", path)


def remove_stale_workroots(tmp_root: str) -> None:
    """Remove host directories (``cw-sbx-<worker pid>-*``) that a worker killed outright left behind."""
    for d in Path(tmp_root).glob(f"{CGROUP_PREFIX}*-*"):
        pid = d.name[len(CGROUP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not d.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass  # alive (another user's process)
