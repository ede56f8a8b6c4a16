"""Run untrusted, model-written Python in separate, confined processes.

Programs run in children forked by sandbox host processes (``_host.py``, a ``python -I -S -B``
started with an empty environment and no package imports); one host per parallel slot, one program at
a time per host. Forking a warm, small interpreter is what makes this several times faster than
starting one per program. Containment is layered; every layer the platform allows is used and
``probe_isolation()`` / ``Sandbox.isolation`` say which hold:

* always: empty environment (PATH, LANG, HOME, TMPDIR = its own directory), a throwaway working
  directory inside a directory of its host's that the worker removes with the host (also when the
  program killed it), stdin /dev/null, every inherited descriptor closed, rlimits set in the child
  before the program's first line (CPU seconds, address space, file size, open files, core 0),
  no_new_privs (no gain through setuid binaries or file capabilities), its own session, a wall-clock
  timeout, output captured in memfds and read back capped, and afterwards every process the run left
  killed: the host is a child subreaper (or its PID namespace's init), so setsid and double-forked
  orphans stay its descendants and are found.
* where the kernel has them (probed at start; neither needs a privilege, so they hold in a default
  non-root pod too; ``_confine.py``): a seccomp filter (no sockets but AF_UNIX socketpairs, no
  ptrace / process_vm_* / pidfd_getfd / mount / unshare / setns / namespace clones / keyctl / bpf /
  perf_event_open / io_uring) and a Landlock ruleset (read-only: the Python installation and the
  system's binaries and libraries; read-write: its own directory; nothing else, so not /tmp, /proc,
  /etc, the store or the worker's files; ABI >= 4: no TCP connect or bind; ABI >= 6: no signals to
  processes outside the run and no abstract unix sockets).
* root: a fresh uid per run, so RLIMIT_NPROC is enforced (it is not for root), the program cannot
  signal the worker or the host (``os.kill(os.getppid())``, ``killpg``, ``kill(-1)``), read their
  /proc/<pid>/environ or raise its own limits.
* ``unshare`` permitted (root; or, for a non-root worker, unprivileged user namespaces, where the
  worker's uid maps to 0 and the child then sheds every capability and its bounding set): hosts start
  in new PID, network and mount namespaces with their own /proc (programs see no worker process, so
  cannot signal it, and have no network: only a down loopback), and each run gets a private mount
  namespace with size-capped tmpfs over /tmp, /var/tmp, /dev/shm, /run/lock (a disk fill hits the cap,
  not the node's disk). An interpreter under a directory other uids cannot enter (pyenv in /root) is
  bound back, read-only, over an empty tmpfs.
* a writable cgroup (v1 pids+memory, or a delegated v2 subtree): a group per run with pids.max and a
  memory limit over all of the run's processes together (fork bombs, many-process memory bombs).
* no fresh uid (non-root): RLIMIT_NPROC counted on top of the uid's current processes (so it bounds a
  fork bomb but shares the budget with the worker), and the worker is made non-dumpable so a same-uid
  program cannot read /proc/<worker>/environ.
* neither root nor user namespaces (a non-root pod under the container runtime's default seccomp
  profile, which refuses unshare; macOS has none of this): seccomp and Landlock still keep programs off
  the network and out of every file but their own; what does NOT hold there is a cap on the disk a
  program can fill with many files each under the size limit (its own directory is on the node's
  disk), and, on kernels without Landlock ABI 6, protection of the worker and the host from a program
  that deliberately signals same-uid processes (``kill(-1, SIGKILL)``). In such pods set an
  ``ephemeral-storage`` limit, keep the NetworkPolicy, and prefer ``hostUsers: false``.

``Sandbox.layers`` (``Isolation.layers``) names the layers in force; the generate and evaluate stages
report them as ``sandboxLayers``. Programs write data on descriptor 3 (``TestResult.data``): the
grader's recorded test calls (``trusted_tests.py``); what they print or exit with decides nothing there.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import queue
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from consistency_worker.runtime.pod_limits import PoolSize, read_pod_resources, sandbox_pool_size
from consistency_worker.sandbox import _confine

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error"]
_HOST = str(Path(__file__).with_name("_host.py"))
_CGROUP_PREFIX = "cw-sbx-"
_HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# Extra seconds the worker waits for a host beyond a run's own timeout (killing a big fork bomb).
_HOST_GRACE_S = 30.0


def _readable(fd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(max(1, int(timeout_s * 1000))))


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (infrastructure fault, not the program's)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program resource limits. ``cpu_s`` defaults to the wall timeout rounded up. ``memory_bytes``
    is a ceiling: a sandbox lowers it to its pool's share of the pod's memory (``Sandbox.pool``)."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    nproc: int = 32
    nofile: int = 256
    disk_bytes: int = 64 << 20
    output_bytes: int = 64 << 10

    def effective_cpu_s(self) -> int:
        return self.cpu_s if self.cpu_s is not None else max(1, int(self.timeout_s + 0.999))


@dataclass(frozen=True)
class TestResult:
    """Outcome of one program. ``status``: passed / failed (an assertion failed) / timeout / error."""

    __test__ = False  # not a pytest test class despite the name

    passed: bool
    status: Status
    reason: str
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    data: str = ""  # what the program wrote on its data descriptor (recorded test calls), uninterpreted


@dataclass(frozen=True)
class Isolation:
    """Which containment layers a sandbox uses (see the module docstring)."""

    root: bool
    namespaces: bool
    cgroup: str | None  # "v1", "v2" or None
    fresh_uid: bool
    landlock: int = 0  # the Landlock ABI in force, 0: none
    seccomp: bool = False

    def layers(self) -> list[str]:
        """The layers in force, as the stage result's ``sandboxLayers`` lists them."""
        names = ["rlimits", "no_new_privs"]
        if self.seccomp:
            names.append("seccomp")
        if self.landlock:
            names.append(f"landlock-v{self.landlock}")
        if self.namespaces:
            names.append("namespaces")
        if self.cgroup:
            names.append(f"cgroup-{self.cgroup}")
        if self.fresh_uid:
            names.append("fresh-uid")
        return names

    def describe(self) -> str:
        return ", ".join([
            "fresh uid per run" if self.fresh_uid else "same uid as the worker",
            "pid+net+mount namespaces" if self.namespaces else "no namespaces",
            f"cgroup {self.cgroup} pids+memory" if self.cgroup else "no cgroup",
            "seccomp filter" if self.seccomp else "no seccomp filter",
            f"Landlock ABI {self.landlock}" if self.landlock else "no Landlock",
        ])


@dataclass(frozen=True)
class SandboxConfig:
    """Knobs for tests and unusual platforms; ``None`` means "use it when available".

    ``workers`` (programs at once) and each program's memory cap are sized from the pod's cgroup CPU
    quota, CPU affinity and memory limit (``resources.sandbox_pool_size``), read under ``cgroup_root``
    for this process's cgroup as ``self_cgroup`` names it; ``workers`` set here overrides the CPU part.
    """

    python: str = sys.executable
    namespaces: bool | None = None
    cgroups: bool | None = None
    fresh_uid: bool | None = None
    landlock: bool | None = None
    seccomp: bool | None = None
    uid_range: tuple[int, int] = (200_000, 260_000)
    tmp_root: str | None = None
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    workers: int | None = None
    cgroup_root: str | None = None  # None: resources.CGROUP_ROOT
    self_cgroup: str | None = None  # None: resources.SELF_CGROUP


# ---------------------------------------------------------------------------------------------------
# platform probing


_UNSHARE_FLAGS = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
# Without root, the same namespaces inside a new user namespace where the worker's uid maps to 0.
_USERNS_FLAGS = ["--user", "--map-root-user"]


@functools.cache
def _unshare_flags() -> tuple[str, ...] | None:
    """The ``unshare`` options that work here (root: plain; otherwise through a user namespace), or None."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return None
    flags = _UNSHARE_FLAGS if os.geteuid() == 0 else [*_USERNS_FLAGS, *_UNSHARE_FLAGS]
    try:
        done = subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (exe, *flags) if done.returncode == 0 else None


@functools.cache
def _cgroup_bases() -> tuple[str, tuple[str, ...]] | None:
    """(kind, directories under which a per-run cgroup can be made), if this process may make them."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1: dict[str, str] = {}
    v2_path = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2_path = path
        for c in controllers.split(","):
            v1[c] = path
    root = Path("/sys/fs/cgroup")
    candidates: list[tuple[str, list[Path], tuple[str, ...]]] = []
    if "pids" in v1 and "memory" in v1 and (root / "pids").is_dir() and (root / "memory").is_dir():
        candidates.append(("v1", [root / "pids" / v1["pids"].lstrip("/"), root / "memory" / v1["memory"].lstrip("/")],
                           ("pids.max", "memory.limit_in_bytes")))
    if v2_path is not None and (root / "cgroup.controllers").exists():
        candidates.append(("v2", [root / v2_path.lstrip("/")], ("pids.max", "memory.max")))
    for kind, bases, needed in candidates:
        if _cgroup_usable(bases, needed):
            for base in bases:
                _remove_stale_cgroups(base)
            return kind, tuple(str(b) for b in bases)
    return None


def _remove_stale_cgroups(base: Path) -> None:
    """Remove empty sandbox cgroups a crashed worker left; a live host's group is never empty."""
    with contextlib.suppress(OSError):
        for d in base.glob(f"{_CGROUP_PREFIX}*"):
            with contextlib.suppress(OSError):
                d.rmdir()


def _cgroup_usable(bases: list[Path], needed: tuple[str, ...]) -> bool:
    probe = f"{_CGROUP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
    made: list[Path] = []
    try:
        for base in bases:
            d = base / probe
            d.mkdir()
            made.append(d)
        return all(any((d / n).exists() for d in made) for n in needed)
    except OSError:
        return False
    finally:
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()


def probe_isolation(config: SandboxConfig | None = None) -> Isolation:
    """Which layers a sandbox with ``config`` would use here; raises if a required one is missing."""
    config = config or SandboxConfig()
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    namespaces = config.namespaces is not False and _unshare_flags() is not None
    if config.namespaces and not namespaces:
        raise SandboxError("namespaces requested but `unshare --pid --net --mount` is not permitted here")
    cgroup = _cgroup_bases() if config.cgroups is not False else None
    if config.cgroups and cgroup is None:
        raise SandboxError("cgroups requested but no writable pids+memory cgroup is available")
    fresh_uid = root and config.fresh_uid is not False
    if config.fresh_uid and not root:
        raise SandboxError("a fresh uid per run needs the worker to run as root")
    landlock = _confine.landlock_abi() if config.landlock is not False and sys.platform.startswith("linux") else 0
    if config.landlock and not landlock:
        raise SandboxError("Landlock requested but this kernel does not offer it")
    seccomp = config.seccomp is not False and sys.platform.startswith("linux") and _confine.seccomp_available()
    if config.seccomp and not seccomp:
        raise SandboxError("a seccomp filter requested but not available here")
    return Isolation(root=root, namespaces=namespaces, cgroup=cgroup[0] if cgroup else None, fresh_uid=fresh_uid,
                     landlock=landlock, seccomp=seccomp)


# Landlock: what a program may read (and execute) besides its own directory. The Python installation
# and the system's binaries and libraries; not /etc, /proc, /tmp, the worker's files or the store.
_SYSTEM_READ_ONLY = ("/usr", "/bin", "/lib", "/lib64", "/etc/localtime")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def _read_only_roots(python: str) -> list[str]:
    prefix, stdlib = _interpreter_paths(python)
    roots = [prefix, os.path.realpath(prefix), os.path.realpath(stdlib), *_SYSTEM_READ_ONLY]
    return list(dict.fromkeys(roots))


@functools.cache
def _interpreter_paths(python: str) -> tuple[str, str]:
    """(base prefix, stdlib dir) of the interpreter that runs programs."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return sys.base_prefix, os.path.dirname(os.__file__)
    query = "import os,sys;print(sys.base_prefix);print(os.path.dirname(os.__file__))"
    out = subprocess.run([python, "-I", "-S", "-c", query], capture_output=True, text=True, check=True,
                         timeout=30).stdout.splitlines()
    return out[0], out[1]


def _hidden_ancestor(path: str) -> str | None:
    """The topmost directory on ``path`` that other uids cannot enter, if any."""
    resolved = Path(path).resolve()
    for candidate in [*reversed(resolved.parents), resolved]:
        if candidate != Path("/") and not candidate.stat().st_mode & 0o001:
            return str(candidate)
    return None


def _mapped_uid_ceiling() -> int:
    """The highest uid usable here: in a user namespace (e.g. a pod with ``hostUsers: false``) only
    the mapped range exists."""
    try:
        lines = Path("/proc/self/uid_map").read_text().split("\n")
    except OSError:
        return 2**31 - 2
    tops = [int(inside) + int(count) - 1 for inside, _, count in (line.split() for line in lines if line.strip())]
    return min(max(tops, default=0), 2**31 - 2)


def _usable_uid_range(wanted: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = wanted
    ceiling = _mapped_uid_ceiling()
    if hi - 1 <= ceiling:
        return lo, hi
    # Keep clear of the low uids a system uses; a few thousand fresh uids are plenty.
    lo, hi = max(1000, ceiling - 5000), ceiling + 1
    return (lo, hi) if hi - lo >= 64 else None


@functools.cache
def _make_worker_non_dumpable() -> None:
    # Same-uid processes may read /proc/<pid>/environ of a dumpable process, i.e. the worker's
    # credentials; a non-dumpable process's /proc files belong to root. Only used without a fresh uid.
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_dumpable = 4
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())


# ---------------------------------------------------------------------------------------------------
# host processes


class _HostDied(Exception):
    pass


class _Host:
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
                    raise _HostDied(f"sandbox host gave no answer within {timeout_s:g}s")
                chunk = os.read(fd, need - len(buf))
                if not chunk:
                    raise _HostDied(f"sandbox host exited: {self._last_words()}")
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
            raise _HostDied(f"sandbox host unreachable: {exc}") from None
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
            _remove_cgroup_dir(d)
        shutil.rmtree(self.workroot, ignore_errors=True)


def _remove_cgroup_dir(path: str) -> None:
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


def _remove_stale_workroots(tmp_root: str) -> None:
    """Remove host directories (``cw-sbx-<worker pid>-*``) that a worker killed outright left behind."""
    for d in Path(tmp_root).glob(f"{_CGROUP_PREFIX}*-*"):
        pid = d.name[len(_CGROUP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not d.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass  # alive (another user's process)


# ---------------------------------------------------------------------------------------------------
# the sandbox


class Sandbox:
    """Runs programs, each in its own confined process. Thread-safe: ``run_many`` and callers' own
    threads share its pool of hosts (one per concurrent run, at most ``pool.workers`` at once, so the
    programs' memory caps together fit the pod). ``close()`` stops the hosts."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        # Measured once, when the worker has loaded what it needs (grading starts after the model).
        root, own = self.config.cgroup_root, self.config.self_cgroup
        pod = read_pod_resources(Path(root) if root else None, Path(own) if own else None)
        self.pool: PoolSize = sandbox_pool_size(pod, self.config.limits.memory_bytes, self.config.workers)
        log.info("sandbox pool: %d programs at once, %d MiB each (pod: %d CPUs, memory limit %s, %d MiB in use)",
                 self.pool.workers, self.pool.memory_bytes >> 20, pod.cpus,
                 f"{pod.memory_bytes >> 20} MiB" if pod.memory_bytes else "unknown", pod.memory_used_bytes >> 20)
        self._slots = threading.BoundedSemaphore(self.pool.workers)
        self.isolation = probe_isolation(self.config)
        self._cgroup = _cgroup_bases() if self.isolation.cgroup else None
        self._expose = "-"
        self._uid_range = _usable_uid_range(self.config.uid_range) if self.isolation.fresh_uid else None
        if self.isolation.fresh_uid and self._uid_range is None:
            log.warning("too few uids are mapped here for a fresh uid per run; programs run as the worker's uid")
            self.isolation = replace(self.isolation, fresh_uid=False)
        if self.isolation.fresh_uid:
            prefix, stdlib = _interpreter_paths(self.config.python)
            hidden = _hidden_ancestor(stdlib)
            if hidden is not None:
                if self.isolation.namespaces and prefix.startswith(hidden):
                    self._expose = f"{prefix}:{hidden}"
                elif self.config.fresh_uid:
                    raise SandboxError(f"the interpreter's stdlib {stdlib} is not readable by other uids")
                else:
                    log.warning("stdlib %s is unreadable by other uids and there is no mount namespace: "
                                "programs run as the worker's uid", stdlib)
                    self.isolation = replace(self.isolation, fresh_uid=False)
        if not self.isolation.fresh_uid:
            _make_worker_non_dumpable()
        self._tmp_root = self.config.tmp_root or tempfile.gettempdir()
        self._read_only = _read_only_roots(self.config.python)
        _remove_stale_workroots(self._tmp_root)
        log.info("sandbox layers: %s", ", ".join(self.isolation.layers()))
        self._idle: queue.SimpleQueue[_Host] = queue.SimpleQueue()
        self._all: list[_Host] = []
        self._uids: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    # hosts -------------------------------------------------------------------------------------------

    def _start_host(self) -> _Host:
        name = f"{_CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        cgroup_dirs = [os.path.join(base, name) for base in self._cgroup[1]] if self._cgroup else []
        confine = {"landlock": bool(self.isolation.landlock), "seccomp": self.isolation.seccomp,
                   "read_only": self._read_only, "devices": list(_DEVICES)}
        argv = [self.config.python, "-I", "-S", "-B", _HOST, self._expose, ":".join(cgroup_dirs) or "-",
                json.dumps(confine)]
        flags = _unshare_flags()
        if self.isolation.namespaces and flags:
            argv = [*flags, *argv]
        workroot = tempfile.mkdtemp(prefix=f"{_CGROUP_PREFIX}{os.getpid()}-", dir=self._tmp_root)
        os.chmod(workroot, 0o711)  # a fresh uid must reach its own run directory inside
        try:
            host = _Host(argv, cgroup_dirs, workroot)
        except (OSError, _HostDied) as exc:
            for d in cgroup_dirs:
                _remove_cgroup_dir(d)
            shutil.rmtree(workroot, ignore_errors=True)
            raise SandboxError(f"cannot start a sandbox host: {exc}") from None
        self._check_layers(host)
        return host

    def _check_layers(self, host: _Host) -> None:
        """The kernel may refuse at run time what it advertised (a stricter seccomp profile around the
        pod): keep to what the host's own probe found, and fail if the config required it."""
        iso = self.isolation
        missing = []
        if iso.landlock and host.landlock != iso.landlock:
            missing.append(("landlock", self.config.landlock))
        if iso.seccomp and not host.seccomp:
            missing.append(("seccomp", self.config.seccomp))
        for layer, required in missing:
            if required:
                host.close()
                raise SandboxError(f"the sandbox host could not apply {layer}")
            log.warning("sandbox: %s is advertised by the kernel but could not be applied; running without it", layer)
        if missing:
            self.isolation = replace(iso, landlock=host.landlock if iso.landlock else 0,
                                     seccomp=iso.seccomp and host.seccomp)

    @property
    def layers(self) -> list[str]:
        """The containment layers in force (``Isolation.layers``), for stage results and logs."""
        return self.isolation.layers()

    def _acquire(self) -> _Host:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        host = self._start_host()
        with self._lock:
            if self._closed:
                host.close()
                raise SandboxError("sandbox is closed")
            self._all.append(host)
        return host

    def _discard(self, host: _Host) -> None:
        host.close()
        with self._lock:
            if host in self._all:
                self._all.remove(host)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            hosts, self._all = self._all, []
        for host in hosts:
            host.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # runs --------------------------------------------------------------------------------------------

    def _take_uid(self) -> int:
        assert self._uid_range is not None
        lo, hi = self._uid_range
        with self._lock:
            while True:
                uid = lo + secrets.randbelow(hi - lo)
                if uid not in self._uids:
                    self._uids.add(uid)
                    return uid

    def run(self, source: str, *, timeout_s: float | None = None,
            limits: SandboxLimits | None = None) -> TestResult:
        """Run ``source`` to completion or timeout. Raises ``SandboxError`` only for sandbox faults."""
        limits = limits or self.config.limits
        if timeout_s is not None:
            limits = replace(limits, timeout_s=timeout_s)
        limits = replace(limits, memory_bytes=min(limits.memory_bytes, self.pool.memory_bytes))
        with self._slots:
            return self._run(source, limits)

    def _run(self, source: str, limits: SandboxLimits) -> TestResult:
        uid = self._take_uid() if self.isolation.fresh_uid else -1
        req = {
            "source": source, "timeout_s": limits.timeout_s, "uid": uid, "cpu_s": limits.effective_cpu_s(),
            "memory": limits.memory_bytes, "file_bytes": limits.file_bytes, "nproc": limits.nproc,
            "nofile": limits.nofile, "disk_bytes": limits.disk_bytes, "output_bytes": limits.output_bytes,
            "mount": self.isolation.namespaces,
        }  # fmt: skip
        try:
            host = self._acquire()
            req["tmp_root"] = host.workroot
            try:
                reply = host.request(req, limits.timeout_s + _HOST_GRACE_S)
            except _HostDied as exc:
                self._discard(host)
                # Without a fresh uid the program can kill its host; that is the program's failure.
                if self.isolation.fresh_uid:
                    raise SandboxError(str(exc)) from None
                return TestResult(passed=False, status="error", reason=f"sandbox host died: {exc}")
            if reply.get("fatal"):
                self._discard(host)
                raise SandboxError(reply.get("reason", "sandbox host error"))
            self._idle.put(host)
        finally:
            if uid >= 0:
                with self._lock:
                    self._uids.discard(uid)
        status = reply["status"]
        return TestResult(passed=status == "passed", status=status, reason=reply.get("reason", ""),
                          returncode=reply.get("returncode"), stdout=reply.get("stdout", ""),
                          stderr=reply.get("stderr", ""), wall_s=reply.get("wall_s", 0.0),
                          data=reply.get("data", ""))

    def run_many(self, sources: Iterable[str], *, workers: int | None = None,
                 timeout_s: float | None = None, limits: SandboxLimits | None = None) -> list[TestResult]:
        """Run programs in parallel (``workers`` threads, default the pool's size); results in input order."""
        items = list(sources)
        workers = max(1, min(workers or self.pool.workers, len(items) or 1))
        if workers == 1:
            return [self.run(s, timeout_s=timeout_s, limits=limits) for s in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(lambda s: self.run(s, timeout_s=timeout_s, limits=limits), items))


def default_workers() -> int:
    """Programs at once in a default sandbox here (from the pod's CPUs and memory, never the node's)."""
    return sandbox_pool_size(read_pod_resources(), SandboxLimits().memory_bytes).workers


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
        return _default


def run_program(source: str, *, timeout_s: float = 10.0, limits: SandboxLimits | None = None) -> TestResult:
    """Run one program in the default sandbox."""
    return default_sandbox().run(source, timeout_s=timeout_s, limits=limits)


def run_many(items: Iterable[str | tuple[str, str]], *, workers: int | None = None, timeout_s: float = 10.0,
             limits: SandboxLimits | None = None) -> list[TestResult]:
    """Run many programs (a source, or ``(program, tests)`` run as one script) in parallel."""
    sources = [item if isinstance(item, str) else join_program(*item) for item in items]
    return default_sandbox().run_many(sources, workers=workers, timeout_s=timeout_s, limits=limits)


def join_program(program: str, tests: str) -> str:
    """The script that runs ``tests`` against ``program``: both in one module namespace."""
    return f"{program.rstrip()}\n\n\n{tests.strip()}\n"
