"""What the platform allows the sandbox: unshare (namespaces, directly or in a user namespace), a writable
cgroup (v1 pids+memory or a delegated v2 subtree), Landlock and seccomp (`_confine`), a fresh uid per run;
and the paths a confined program may read (the interpreter and the system's libraries)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from consistency_worker.sandbox import _confine
from consistency_worker.sandbox.types import Isolation, SandboxConfig, SandboxError

log = logging.getLogger(__name__)

CGROUP_PREFIX = "cw-sbx-"


_UNSHARE_FLAGS = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
# Without root, the same namespaces inside a new user namespace where the worker's uid maps to 0.
_USERNS_FLAGS = ["--user", "--map-root-user"]


@functools.cache
def unshare_flags() -> tuple[str, ...] | None:
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
def cgroup_bases() -> tuple[str, tuple[str, ...]] | None:
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
                remove_stale_cgroups(base)
            return kind, tuple(str(b) for b in bases)
    return None


def remove_stale_cgroups(base: Path) -> None:
    """Remove empty sandbox cgroups a crashed worker left; a live host's group is never empty."""
    with contextlib.suppress(OSError):
        for d in base.glob(f"{CGROUP_PREFIX}*"):
            with contextlib.suppress(OSError):
                d.rmdir()


def _cgroup_usable(bases: list[Path], needed: tuple[str, ...]) -> bool:
    probe = f"{CGROUP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
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
    namespaces = config.namespaces is not False and unshare_flags() is not None
    if config.namespaces and not namespaces:
        raise SandboxError("namespaces requested but `unshare --pid --net --mount` is not permitted here")
    cgroup = cgroup_bases() if config.cgroups is not False else None
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
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def read_only_roots(python: str) -> list[str]:
    prefix, stdlib = interpreter_paths(python)
    roots = [prefix, os.path.realpath(prefix), os.path.realpath(stdlib), *_SYSTEM_READ_ONLY]
    return list(dict.fromkeys(roots))


@functools.cache
def interpreter_paths(python: str) -> tuple[str, str]:
    """(base prefix, stdlib dir) of the interpreter that runs programs."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return sys.base_prefix, os.path.dirname(os.__file__)
    query = "import os,sys;print(sys.base_prefix);print(os.path.dirname(os.__file__))"
    out = subprocess.run([python, "-I", "-S", "-c", query], capture_output=True, text=True, check=True,
                         timeout=30).stdout.splitlines()
    return out[0], out[1]


def hidden_ancestor(path: str) -> str | None:
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


def usable_uid_range(wanted: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = wanted
    ceiling = _mapped_uid_ceiling()
    if hi - 1 <= ceiling:
        return lo, hi
    # Keep clear of the low uids a system uses; a few thousand fresh uids are plenty.
    lo, hi = max(1000, ceiling - 5000), ceiling + 1
    return (lo, hi) if hi - lo >= 64 else None


@functools.cache
def make_worker_non_dumpable() -> None:
    # Same-uid processes may read /proc/<pid>/environ of a dumpable process, i.e. the worker's
    # credentials; a non-dumpable process's /proc files belong to root. Only used without a fresh uid.
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_dumpable = 4
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())
