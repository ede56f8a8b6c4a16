"""The demo pins its CPU kernels (ATen, MKL, oneDNN, thread pools) so its figures do not depend on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from consistency_local.demo_model import DemoModelConfig
from consistency_local.kernels import ENV_SWITCH, PINNED, describe, kernel_mode, pin_kernels


def test_pinned_by_default_and_native_on_request() -> None:
    env: dict[str, str] = {"OMP_NUM_THREADS": "16"}
    assert pin_kernels(env) == PINNED and env["ATEN_CPU_CAPABILITY"] == "avx2" and env["OMP_NUM_THREADS"] == "2"
    assert "pinned" in describe(env)
    native = {ENV_SWITCH: "native", "OMP_NUM_THREADS": "16"}
    assert pin_kernels(native) == {} and native == {ENV_SWITCH: "native", "OMP_NUM_THREADS": "16"}
    assert "depend on the CPU" in describe(native)


def test_the_demo_model_cache_tells_pinned_and_native_builds_apart() -> None:
    pinned = DemoModelConfig(kernels=kernel_mode({}))
    native = DemoModelConfig(kernels=kernel_mode({ENV_SWITCH: "native"}))
    assert pinned.kernels == "pinned-avx2-2t" and native.kernels == "native"
    assert pinned.key("d") != native.key("d")


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else True,
                    reason="needs an x86 CPU with AVX2")
def test_a_process_started_with_the_pinned_variables_runs_avx2_kernels_and_two_threads() -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH}
    pin_kernels(env)
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AVX2", "2"]
