"""What this pod may use, read from its cgroup and scheduler affinity, never from the node's totals.

``os.cpu_count()`` and torch's defaults see the whole node (~200 CPUs on a GPU host) while a pod may
be granted 4; sizing pools from them oversubscribes the CFS quota (threads spin, programs time out) and
lets parallel sandboxed programs together exceed the pod's memory limit (the OOM killer then takes the
worker). Every pool and thread count in the worker goes through :func:`usable_cpus` /
:func:`read_pod_resources`.

CPUs: the tightest of the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``,
on this process's cgroup and every ancestor visible) and ``os.sched_getaffinity`` (cpusets, ``taskset``).
Memory: the tightest ``memory.max`` (v2) / ``memory.limit_in_bytes`` (v1) on the same chain, and the
node's RAM; the working set in use is usage minus inactive page cache, as the kubelet counts it.

The cgroup mount and ``/proc/self/cgroup`` are parameters (defaulting to ``CGROUP_ROOT`` / ``SELF_CGROUP``,
read at call time), so tests point them at a fake tree.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 reports "no memory limit" as 2**63-1 rounded down to a page; anything this big is no limit.
_NO_LIMIT_BYTES = 1 << 60
# Environment knobs of the native thread pools the worker loads (OpenMP/BLAS in torch and numpy, rayon in
# Hugging Face tokenizers). Each library reads its variable once, when it starts its pool.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


@dataclass(frozen=True)
class PodResources:
    cpus: int  # CPUs this process can keep busy at once (>= 1)
    memory_bytes: int | None  # memory it may use in all (cgroup limit or node RAM); None when unknown
    memory_used_bytes: int  # working set already in use by this cgroup (0 when unknown)


def _own_cgroups(self_cgroup: Path) -> dict[str, str]:
    """Controller -> cgroup path of this process ("" is the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def _chain(base: Path, path: str | None) -> list[Path]:
    """This process's cgroup directory under ``base`` and its ancestors up to ``base``, innermost first.

    With a cgroup namespace (the default for containers on cgroup v2) the process's path is "/" and
    ``base`` is its own cgroup; without one the path may not exist in the container's view, and then
    only ``base`` (the container's cgroup, as the runtime mounts it) is read.
    """
    if not base.is_dir():
        return []
    rel = (path or "/").lstrip("/")
    # A path outside our cgroup namespace shows as "/../.."; it has no directory in this view.
    inner = base / rel
    if ".." in Path(rel).parts or not inner.is_dir():
        return [base]
    out = [inner]
    while out[-1] != base and base in out[-1].parents:
        out.append(out[-1].parent)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    # A malformed file must not stop the worker: it counts as no limit.
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _v2(root: Path) -> bool:
    return (root / "cgroup.controllers").is_file()


def _v1_dir(root: Path, controller: str) -> Path:
    # Distributions mount cpu either alone or co-mounted as "cpu,cpuacct" (with "cpu" as a symlink).
    for name in (controller, "cpu,cpuacct", "cpuacct,cpu") if controller == "cpu" else (controller,):
        if (root / name).is_dir():
            return root / name
    return root / controller


def cpu_limit(root: Path | None = None, self_cgroup: Path | None = None) -> float | None:
    """CPUs granted by the cgroup quota (fractional), None when no level sets one."""
    root, self_cgroup = root or CGROUP_ROOT, self_cgroup or SELF_CGROUP
    groups = _own_cgroups(self_cgroup)
    limits: list[float] = []
    if _v2(root):
        for d in _chain(root, groups.get("")):
            fields = (_read(d / "cpu.max") or "max").split()  # "<quota> <period>" or "max <period>"
            q, p = _int(fields[0]), _int(fields[1] if len(fields) > 1 else None)
            if q and p and q > 0:
                limits.append(q / p)
    else:
        for d in _chain(_v1_dir(root, "cpu"), groups.get("cpu")):
            q, p = _int(_read(d / "cpu.cfs_quota_us")), _int(_read(d / "cpu.cfs_period_us"))
            if q and p and q > 0:
                limits.append(q / p)
    return min(limits) if limits else None


def memory_limit(root: Path | None = None, self_cgroup: Path | None = None) -> int | None:
    """Bytes the cgroup may use (the tightest level), None when no level sets a limit."""
    root, self_cgroup = root or CGROUP_ROOT, self_cgroup or SELF_CGROUP
    limits = [v for v in (_memory_value(d, "limit") for d in _memory_chain(root, self_cgroup)) if v is not None]
    return min(limits) if limits else None


def memory_working_set(root: Path | None = None, self_cgroup: Path | None = None) -> int | None:
    """Bytes this cgroup uses now, less the inactive page cache the kernel would reclaim first."""
    root, self_cgroup = root or CGROUP_ROOT, self_cgroup or SELF_CGROUP
    chain = _memory_chain(root, self_cgroup)
    return _memory_value(chain[0], "usage") if chain else None


def _memory_chain(root: Path, self_cgroup: Path) -> list[Path]:
    groups = _own_cgroups(self_cgroup)
    return _chain(root, groups.get("")) if _v2(root) else _chain(_v1_dir(root, "memory"), groups.get("memory"))


def _memory_value(d: Path, what: str) -> int | None:
    v2 = (d / "memory.max").exists() or (d / "memory.current").exists()
    if what == "limit":
        limit = _int(_read(d / ("memory.max" if v2 else "memory.limit_in_bytes")))  # "max": None
        return limit if limit is not None and limit < _NO_LIMIT_BYTES else None
    usage = _int(_read(d / ("memory.current" if v2 else "memory.usage_in_bytes")))
    if usage is None:
        return None
    inactive = _stat(d / "memory.stat").get("inactive_file" if v2 else "total_inactive_file", 0)
    return max(0, usage - inactive)


def _stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def affinity_cpus() -> int:
    """CPUs the scheduler lets this process run on (cpuset, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def node_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def read_pod_resources(root: Path | None = None, self_cgroup: Path | None = None, *,
                       affinity: int | None = None, ram: int | None = None) -> PodResources:
    """CPUs and memory of this pod. ``affinity`` and ``ram`` default to this process's real ones."""
    cpus = affinity if affinity is not None else affinity_cpus()
    quota = cpu_limit(root, self_cgroup)
    if quota is not None:
        # Rounded down: a thread per started CPU would spin against the quota (1.5 CPUs -> 1 thread).
        cpus = min(cpus, max(1, math.floor(quota)))
    ram = ram if ram is not None else node_memory()
    limits = [v for v in (memory_limit(root, self_cgroup), ram) if v is not None]
    used = memory_working_set(root, self_cgroup)
    return PodResources(cpus=max(1, cpus), memory_bytes=min(limits) if limits else None,
                        memory_used_bytes=used or 0)


def usable_cpus(root: Path | None = None, self_cgroup: Path | None = None) -> int:
    """How many CPU-bound threads or processes this pod can run at once."""
    return read_pod_resources(root, self_cgroup).cpus


def limit_thread_pools(cpus: int | None = None) -> dict[str, str]:
    """Default every native thread pool's size to the pod's CPUs (explicit settings win). Call before
    torch, numpy or tokenizers start their pools; returns the variables it set."""
    n = str(cpus if cpus is not None else usable_cpus())
    set_here = {name: n for name in THREAD_ENV if not os.environ.get(name)}
    os.environ.update(set_here)
    if set_here:
        log.info("native thread pools sized to %s CPUs (%s)", n, ", ".join(sorted(set_here)))
    return set_here


# --- the sandbox pool (pure) ----------------------------------------------------------------------

# A forked interpreter plus a small program needs this much address space; below it nothing runs.
MIN_PROGRAM_MEMORY = 128 << 20
# Share of the free memory (limit minus the worker's working set) the sandboxed programs may fill
# together; the rest is room for the worker itself to grow (batches, results) while they run.
SANDBOX_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class PoolSize:
    workers: int  # sandbox hosts running programs at once
    memory_bytes: int  # memory cap of each program


def sandbox_pool_size(pod: PodResources, max_program_memory: int, workers: int | None = None) -> PoolSize:
    """Programs are CPU-bound: one per CPU plus one slot that covers the hosts' round trips. Together
    they may fill ``SANDBOX_MEMORY_SHARE`` of the memory the worker leaves free, so each gets an equal
    part, at most ``max_program_memory``; if a part would be under ``MIN_PROGRAM_MEMORY``, fewer run."""
    n = workers if workers is not None else pod.cpus + 1
    if pod.memory_bytes is None:
        return PoolSize(n, max_program_memory)
    budget = int(max(0, pod.memory_bytes - pod.memory_used_bytes) * SANDBOX_MEMORY_SHARE)
    if workers is None and budget // n < MIN_PROGRAM_MEMORY:
        n = max(1, budget // MIN_PROGRAM_MEMORY)
    per_program = min(max_program_memory, max(MIN_PROGRAM_MEMORY, budget // n))
    return PoolSize(n, per_program)
