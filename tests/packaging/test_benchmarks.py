"""Every benchmark in bench/ runs in its quick mode (small sizes, seconds), so a benchmark that no longer
runs fails the suite instead of rotting until someone wants its figures. The full runs (`make bench`)
stay out of the suite; the quick runs judge no speed target, only that the script runs and prints figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The import packages' source folders: a benchmark run as a script imports them from here.
PACKAGE_DIRS = ("core", "report", "worker", "operator", "local")
# gpu_check has its own CPU-mode test (tests/worker/test_gpu_check.py), through its shell driver.
OWN_TEST = {"gpu_check.py"}
BENCHMARKS = sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name not in OWN_TEST)
# What each prints when it got to its figures (checked so that an early, silent exit 0 cannot pass).
FIGURE_LINE = {
    "demo_kernels.py": "pinned / native:",
    "generation_overlap.py": "same records from both loops: True",
    "hf_generation.py": "identical samples in all modes: True",
    "operator_latency.py": "quick mode: ran cleanly",
    "sandbox_throughput.py": "ratio:",
    "train_throughput.py": '"tokensPerSecond"',
}


def test_every_benchmark_has_a_quick_run_checked_here() -> None:
    assert set(BENCHMARKS) == set(FIGURE_LINE), "a new bench/ script needs a --quick mode and a FIGURE_LINE entry"


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_quick_mode_runs(script: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / d) for d in PACKAGE_DIRS] + [os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert FIGURE_LINE[script] in proc.stdout, out[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_train_benchmark_peer_trl_quick_mode_compares_like_with_like() -> None:
    """`--peer trl` in quick mode: TRL's SFTTrainer sees the same tokens and, after the same single step
    from the same base, reports the same loss as the train stage's loop (skipped cleanly without trl)."""
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / d) for d in PACKAGE_DIRS] + [os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--quick", "--peer", "trl"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    peer = figures["peer"]
    if isinstance(peer, str):
        assert peer == "trl not installed: skipped"
        return
    assert peer["steps"] == figures["steps"] and peer["realTokens"] == figures["realTokens"]
    assert peer["finalLoss"] == pytest.approx(figures["finalLoss"], rel=1e-3)
    assert figures["ratioOursToTrl"] == pytest.approx(figures["tokensPerSecond"] / peer["tokensPerSecond"], rel=1e-2)
