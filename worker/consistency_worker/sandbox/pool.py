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
grader's recorded test calls (``grading/trusted_tests.py``); what they print or exit with decides nothing there.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from consistency_worker.runtime.pod_limits import PoolSize, read_pod_resources, sandbox_pool_size
from consistency_worker.sandbox.hosts import (
    HOST_GRACE_S,
    HOST_SCRIPT,
    Host,
    HostDied,
    remove_cgroup_dir,
    remove_stale_workroots,
)
from consistency_worker.sandbox.probe import (
    CGROUP_PREFIX,
    DEVICES,
    cgroup_bases,
    hidden_ancestor,
    interpreter_paths,
    make_worker_non_dumpable,
    probe_isolation,
    read_only_roots,
    unshare_flags,
    usable_uid_range,
)
from consistency_worker.sandbox.types import SandboxConfig, SandboxError, SandboxLimits, TestResult

log = logging.getLogger(__name__)


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
        self._cgroup = cgroup_bases() if self.isolation.cgroup else None
        self._expose = "-"
        self._uid_range = usable_uid_range(self.config.uid_range) if self.isolation.fresh_uid else None
        if self.isolation.fresh_uid and self._uid_range is None:
            log.warning("too few uids are mapped here for a fresh uid per run; programs run as the worker's uid")
            self.isolation = replace(self.isolation, fresh_uid=False)
        if self.isolation.fresh_uid:
            prefix, stdlib = interpreter_paths(self.config.python)
            hidden = hidden_ancestor(stdlib)
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
            make_worker_non_dumpable()
        self._tmp_root = self.config.tmp_root or tempfile.gettempdir()
        self._read_only = read_only_roots(self.config.python)
        remove_stale_workroots(self._tmp_root)
        log.info("sandbox layers: %s", ", ".join(self.isolation.layers()))
        self._idle: queue.SimpleQueue[Host] = queue.SimpleQueue()
        self._all: list[Host] = []
        self._uids: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    # hosts -------------------------------------------------------------------------------------------

    def _start_host(self) -> Host:
        name = f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        cgroup_dirs = [os.path.join(base, name) for base in self._cgroup[1]] if self._cgroup else []
        confine = {"landlock": bool(self.isolation.landlock), "seccomp": self.isolation.seccomp,
                   "read_only": self._read_only, "devices": list(DEVICES)}
        argv = [self.config.python, "-I", "-S", "-B", HOST_SCRIPT, self._expose, ":".join(cgroup_dirs) or "-",
                json.dumps(confine)]
        flags = unshare_flags()
        if self.isolation.namespaces and flags:
            argv = [*flags, *argv]
        workroot = tempfile.mkdtemp(prefix=f"{CGROUP_PREFIX}{os.getpid()}-", dir=self._tmp_root)
        os.chmod(workroot, 0o711)  # a fresh uid must reach its own run directory inside
        try:
            host = Host(argv, cgroup_dirs, workroot)
        except (OSError, HostDied) as exc:
            for d in cgroup_dirs:
                remove_cgroup_dir(d)
            shutil.rmtree(workroot, ignore_errors=True)
            raise SandboxError(f"cannot start a sandbox host: {exc}") from None
        self._check_layers(host)
        return host

    def _check_layers(self, host: Host) -> None:
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

    def _acquire(self) -> Host:
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

    def _discard(self, host: Host) -> None:
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
                reply = host.request(req, limits.timeout_s + HOST_GRACE_S)
            except HostDied as exc:
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
