"""Pod-aware sizing: CPUs from the cgroup quota and affinity, memory from the cgroup limit, read from fake
cgroup trees laid out as the kernel does (v2 unified, v1 per controller) so a big node with a small pod
can be set up on any machine; the real affinity is checked in child processes pinned with taskset's call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from consistency_worker.runtime.pod_limits import (
    MIN_PROGRAM_MEMORY,
    PodResources,
    PoolSize,
    cpu_limit,
    limit_thread_pools,
    memory_limit,
    read_pod_resources,
    sandbox_pool_size,
)

GiB = 1 << 30
MiB = 1 << 20
BIG_NODE = 192  # CPUs the node (and so os.cpu_count()) has
NODE_RAM = 2048 * GiB
needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux sched_setaffinity")


def write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text + "\n")


def v2_tree(tmp_path: Path, container: dict[str, str], pod: dict[str, str] | None = None,
            own: str = "/kubepods/pod1/ctr") -> tuple[Path, Path]:
    """A unified hierarchy as a pod without a cgroup namespace sees it; returns (root, /proc/self/cgroup)."""
    root = tmp_path / "cgroup"
    write(root, {"cgroup.controllers": "cpuset cpu io memory pids", "cpu.max": "max 100000", "memory.max": "max"})
    write(root / "kubepods" / "pod1", pod or {"cpu.max": "max 100000", "memory.max": "max"})
    write(root / "kubepods" / "pod1" / "ctr", container)
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(f"0::{own}\n")
    return root, self_cgroup


def v1_tree(tmp_path: Path, quota: int, period: int, limit: int, usage: int, inactive: int) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct", {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    write(root / "cpu,cpuacct" / "kubepods" / "ctr", {"cpu.cfs_quota_us": str(quota), "cpu.cfs_period_us": str(period)})
    write(root / "memory", {"memory.limit_in_bytes": "9223372036854771712"})
    write(root / "memory" / "kubepods" / "ctr", {
        "memory.limit_in_bytes": str(limit), "memory.usage_in_bytes": str(usage),
        "memory.stat": f"cache 1\ntotal_inactive_file {inactive}\ntotal_rss 5"})
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("12:memory:/kubepods/ctr\n4:cpu,cpuacct:/kubepods/ctr\n1:name=systemd:/x\n0::/\n")
    return root, self_cgroup


def test_quota_of_4_cpus_on_a_big_node_sizes_the_pool_and_the_memory_cap(tmp_path: Path) -> None:
    root, self_cgroup = v2_tree(tmp_path, {
        "cpu.max": "400000 100000", "memory.max": str(8 * GiB), "memory.current": str(int(2.5 * GiB)),
        "memory.stat": f"anon {2 * GiB}\nfile {GiB}\ninactive_file {GiB // 2}\nactive_file {GiB // 2}"})
    pod = read_pod_resources(root, self_cgroup, affinity=BIG_NODE, ram=NODE_RAM)
    assert pod == PodResources(cpus=4, memory_bytes=8 * GiB, memory_used_bytes=2 * GiB)
    # 5 programs at once (4 CPUs + 1 slot); half of the 6 GiB the worker leaves free, split five ways.
    assert sandbox_pool_size(pod, max_program_memory=GiB) == PoolSize(workers=5, memory_bytes=3 * GiB // 5)
    # A generous pod: the per-program ceiling holds.
    roomy = PodResources(cpus=4, memory_bytes=64 * GiB, memory_used_bytes=4 * GiB)
    assert sandbox_pool_size(roomy, max_program_memory=GiB) == PoolSize(workers=5, memory_bytes=GiB)


def test_the_tightest_level_of_the_hierarchy_wins(tmp_path: Path) -> None:
    root, self_cgroup = v2_tree(tmp_path, {"cpu.max": "800000 100000", "memory.max": str(16 * GiB)},
                                pod={"cpu.max": "250000 100000", "memory.max": str(6 * GiB)})
    assert cpu_limit(root, self_cgroup) == 2.5
    assert memory_limit(root, self_cgroup) == 6 * GiB
    # 2.5 CPUs -> 2 threads: a third would spin against the quota.
    assert read_pod_resources(root, self_cgroup, affinity=BIG_NODE, ram=NODE_RAM).cpus == 2


def test_cgroup_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    root, self_cgroup = v2_tree(tmp_path, {"cpu.max": "max 100000"}, own="/")
    (root / "cpu.max").write_text("300000 100000\n")
    (root / "memory.max").write_text(f"{3 * GiB}\n")
    pod = read_pod_resources(root, self_cgroup, affinity=BIG_NODE, ram=NODE_RAM)
    assert (pod.cpus, pod.memory_bytes) == (3, 3 * GiB)


def test_path_missing_from_the_containers_view_falls_back_to_the_mount_root(tmp_path: Path) -> None:
    root, self_cgroup = v2_tree(tmp_path, {"cpu.max": "max 100000"}, own="/system.slice/elsewhere.scope")
    (root / "cpu.max").write_text("100000 100000\n")
    assert read_pod_resources(root, self_cgroup, affinity=BIG_NODE, ram=NODE_RAM).cpus == 1


def test_cgroup_v1_quota_and_memory(tmp_path: Path) -> None:
    root, self_cgroup = v1_tree(tmp_path, quota=400000, period=100000, limit=4 * GiB, usage=GiB + 300 * MiB,
                                inactive=300 * MiB)
    pod = read_pod_resources(root, self_cgroup, affinity=BIG_NODE, ram=NODE_RAM)
    assert pod == PodResources(cpus=4, memory_bytes=4 * GiB, memory_used_bytes=GiB)
    assert sandbox_pool_size(pod, GiB) == PoolSize(workers=5, memory_bytes=int(3 * GiB * 0.5) // 5)


def test_no_limits_means_affinity_and_node_ram(tmp_path: Path) -> None:
    root, self_cgroup = v1_tree(tmp_path, quota=-1, period=100000, limit=9223372036854771712, usage=0, inactive=0)
    pod = read_pod_resources(root, self_cgroup, affinity=BIG_NODE, ram=NODE_RAM)
    assert (pod.cpus, pod.memory_bytes) == (BIG_NODE, NODE_RAM)
    root, self_cgroup = v2_tree(tmp_path / "v2", {"cpu.max": "max 100000", "memory.max": "max"})
    assert read_pod_resources(root, self_cgroup, affinity=8, ram=NODE_RAM) == PodResources(8, NODE_RAM, 0)
    assert sandbox_pool_size(PodResources(8, None, 0), GiB) == PoolSize(9, GiB)


def test_affinity_narrower_than_the_quota_wins(tmp_path: Path) -> None:
    root, self_cgroup = v2_tree(tmp_path, {"cpu.max": "400000 100000"})
    assert read_pod_resources(root, self_cgroup, affinity=2, ram=NODE_RAM).cpus == 2


def test_a_tight_memory_limit_runs_fewer_programs_not_starved_ones() -> None:
    small = PodResources(cpus=4, memory_bytes=900 * MiB, memory_used_bytes=500 * MiB)
    # 200 MiB for programs: one at a time with all of it rather than five with 40 MiB each.
    assert sandbox_pool_size(small, GiB) == PoolSize(workers=1, memory_bytes=200 * MiB)
    exhausted = PodResources(cpus=4, memory_bytes=GiB, memory_used_bytes=GiB)
    assert sandbox_pool_size(exhausted, GiB) == PoolSize(workers=1, memory_bytes=MIN_PROGRAM_MEMORY)
    # An explicit worker count is kept; the memory is divided by it.
    assert sandbox_pool_size(small, GiB, workers=2) == PoolSize(workers=2, memory_bytes=MIN_PROGRAM_MEMORY)


def test_unreadable_cgroup_files_mean_no_limit(tmp_path: Path) -> None:
    assert cpu_limit(tmp_path / "absent", tmp_path / "absent_self") is None
    root, self_cgroup = v2_tree(tmp_path, {"cpu.max": "garbage", "memory.max": "12x"}, own="/../../outside")
    assert (cpu_limit(root, self_cgroup), memory_limit(root, self_cgroup)) == (None, None)
    pod = read_pod_resources(tmp_path / "absent", tmp_path / "absent_self", affinity=3, ram=NODE_RAM)
    assert pod == PodResources(3, NODE_RAM, 0)


def test_explicit_thread_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert limit_thread_pools(3) == {"MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "RAYON_NUM_THREADS": "3"}
    assert os.environ["OMP_NUM_THREADS"] == "7" and os.environ["RAYON_NUM_THREADS"] == "3"


# --- the real process: every pool goes through the helper --------------------------------------------

_CHILD = r"""
import json, os, sys
from pathlib import Path
for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.pop(name, None)
import consistency_worker.runtime.pod_limits as resources
if sys.argv[1] == "pin":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
else:  # the pod's cgroup is the fake tree
    resources.CGROUP_ROOT, resources.SELF_CGROUP = Path(sys.argv[1]), Path(sys.argv[2])
import torch
from consistency_worker.engines.model_loading import configure_cpu_threads
from consistency_worker.sandbox.pool import Sandbox, default_workers
from consistency_worker.sandbox.types import SandboxConfig
before = torch.get_num_threads()
with Sandbox(SandboxConfig(namespaces=False, cgroups=False, fresh_uid=False)) as sandbox:
    pool = [sandbox.pool.workers, sandbox.pool.memory_bytes]
print(json.dumps({"cpus": resources.usable_cpus(), "node": os.cpu_count(), "default_workers": default_workers(),
                  "pool": pool, "torch_before": before, "torch": configure_cpu_threads(),
                  "env": resources.limit_thread_pools()}))
"""


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_one_cpu_quota_sizes_torch_threads_native_pools_and_the_sandbox(tmp_path: Path) -> None:
    """The worker's real helpers in a process whose cgroup (the fake tree) grants 1 CPU and 1 GiB."""
    pytest.importorskip("torch")
    root, self_cgroup = v2_tree(tmp_path, {"cpu.max": "100000 100000", "memory.max": str(GiB),
                                           "memory.current": "0"})
    got = child(str(root), str(self_cgroup))
    assert got["cpus"] == 1 and got["torch"] == 1, got
    if got["node"] > 1:  # torch alone would have used the node's CPUs
        assert got["torch_before"] > 1, got
    # Grading pool: 1 CPU + the round-trip slot; half the free GiB split between the two.
    assert got["default_workers"] == 2 and got["pool"] == [2, GiB // 4], got
    assert got["env"] == dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                        "RAYON_NUM_THREADS"), "1"), got


@needs_affinity
def test_a_pinned_process_sizes_from_its_affinity() -> None:
    pytest.importorskip("torch")
    got = child("pin")
    assert got["cpus"] == 1 and got["torch"] == 1 and got["default_workers"] == 2, got


@needs_affinity
def test_worker_cli_sizes_native_thread_pools_before_loading_libraries(tmp_path: Path) -> None:
    script = ("import os, sys\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
              "from consistency_worker.cli import main\n"
              f"sys.exit(main(['prepare', '--config', {str(tmp_path / 'missing.json')!r}, "
              f"'--result-file', {str(tmp_path / 'result.json')!r}]))")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0  # no such config: the stage fails, after the pools were sized
    assert ("native thread pools sized to 1 CPUs (MKL_NUM_THREADS, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, "
            "RAYON_NUM_THREADS)") in out.stderr, out.stderr[-2000:]
