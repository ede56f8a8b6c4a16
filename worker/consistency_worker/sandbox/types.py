"""The sandbox's data types: what a program may use (`SandboxLimits`, `SandboxConfig`), how its run ended
(`TestResult`), which containment layers hold (`Isolation`) and the sandbox's own failure."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["passed", "failed", "timeout", "error"]


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
    quota, CPU affinity and memory limit (``pod_limits.sandbox_pool_size``), read under ``cgroup_root``
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
    cgroup_root: str | None = None  # None: pod_limits.CGROUP_ROOT
    self_cgroup: str | None = None  # None: pod_limits.SELF_CGROUP
