"""Pinned CPU kernels for the demo and efficacy runs, so that their figures are the same on any x86 CPU.

torch picks its vectorised kernels (ATen: scalar, AVX2 or AVX-512), MKL its GEMM code path, and oneDNN its
ISA from the CPU it runs on; each rounds differently, and a campaign of a few thousand training steps and
sampled answers amplifies the last bits into different models and different headline figures. Pinning all
three to AVX2 (what nearly every x86 server of the last decade runs natively, and what an AVX-512 CPU can
run) and the thread pools to a fixed size makes the run compute the same numbers on an AVX2 laptop and an
AVX-512 server. The cost is measured in docs/local.md. `CONSISTENCY_KERNELS=native` turns it off.
"""

from __future__ import annotations

import os

ENV_SWITCH = "CONSISTENCY_KERNELS"
PINNED_THREADS = 2
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",
    # MKL's conditional numerical reproducibility: the AVX2 code path on any CPU that has it.
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # Reductions split across threads add in another order with another thread count.
    "OMP_NUM_THREADS": str(PINNED_THREADS),
    "MKL_NUM_THREADS": str(PINNED_THREADS),
    "OPENBLAS_NUM_THREADS": str(PINNED_THREADS),
}


def _native(environ: dict[str, str] | os._Environ[str]) -> bool:
    return environ.get(ENV_SWITCH, "pinned") == "native"


def pin_kernels(environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """Set the pinned kernel variables (before torch is imported; stage processes inherit them).
    Returns what was set; nothing when CONSISTENCY_KERNELS=native."""
    if _native(environ):
        return {}
    environ.update(PINNED)
    return dict(PINNED)


def kernel_mode(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """A short name for the kernels this process runs with (part of cache keys of what they compute)."""
    if _native(environ):
        return "native"
    return f"pinned-avx2-{PINNED_THREADS}t"


def describe(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    if _native(environ):
        return "native CPU kernels (figures depend on the CPU)"
    return f"pinned CPU kernels (AVX2, {PINNED_THREADS} threads; {ENV_SWITCH}=native for the CPU's own)"
