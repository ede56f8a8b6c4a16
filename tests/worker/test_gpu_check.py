"""bench/gpu_check.sh in its CPU mode, end to end, so the device check cannot rot between device runs: every
step runs at small sizes, CUDA-only parts say "skipped: no CUDA", and the merged JSON holds every step."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def driver() -> ModuleType:
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_cpu_mode_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_TIMEOUT_SCALE": "4"}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert list(steps) == list(driver().STEPS)
    assert report["ok"] and all(s["status"] == "ok" for s in steps.values()), log[-6000:]
    assert all(not s["cuda"] for s in steps.values())
    # Every CUDA-only part is announced, not silently passed.
    assert "skipped: no CUDA (vLLM engine: greedy comparison and throughput)" in log
    assert "skipped: no CUDA (attention runs in bf16)" in log
    assert any("no CUDA" in s for s in steps["qlora"]["skipped"])

    model = steps["model"]["figures"]
    assert model["head_dim"] == 128 and len(set(model["eos_ids"])) == 2
    qlora = steps["qlora"]
    assert qlora["checks"]["same_final_loss"] and qlora["checks"]["resumed_from_last_checkpoint"]
    assert qlora["figures"]["reference_final_loss"] == qlora["figures"]["resumed_final_loss"]
    assert qlora["figures"]["attention_dtypes"] == ["float32"]
    vllm = steps["vllm"]["figures"]
    assert vllm["throughput_sequences"] == 8 * (1 + 5)
    stages = steps["stages"]["figures"]
    assert stages["generate_metrics"]["backend"] == "hf" and stages["evaluate_metrics"]["problems"] == 3
    assert steps["expansion"]["figures"]["expansion_metrics"]["steps"] == 2
    sandbox = steps["sandbox"]["figures"]
    assert sandbox["programs"] == 12 and sandbox["false_timeouts"] == 0


def test_report_marks_a_timed_out_step_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gc = driver()
    (tmp_path / "env.json").write_text(json.dumps({"step": "env", "status": "ok", "figures": {"python": "3"},
                                                   "seconds": 0.1}))
    (tmp_path / "vllm.json").write_text(json.dumps({"step": "vllm", "status": "skipped", "figures": {},
                                                    "skipped": ["vllm: no CUDA"], "seconds": 0.1}))
    assert gc.report(tmp_path, tmp_path / "out.json", {"qlora": "100"}) == 1
    merged = json.loads((tmp_path / "out.json").read_text())
    assert merged["ok"] is False
    assert merged["steps"]["qlora"] == {"step": "qlora", "status": "failed", "error": "timed out after 100 s",
                                        "figures": {}}
    assert merged["steps"]["model"]["error"] == "did not run or crashed"
    assert merged["steps"]["vllm"]["status"] == "skipped"
    assert "timed out after 100 s" in capsys.readouterr().out


def test_greedy_agreement_and_eos_cut() -> None:
    gc = driver()
    assert gc.cut_at_eos([5, 6, 2, 7], [2, 0]) == [5, 6]
    assert gc.cut_at_eos([5, 6], [2, 0]) == [5, 6]
    assert gc.agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6]]) == {
        "exact": 0.5, "first_token": 1.0, "mean_common_prefix": 2.0}
    assert gc.agreement([[]], [[1]])["first_token"] == 0.0
    assert gc.agreement([[]], [[]]) == {"exact": 1.0, "first_token": 1.0, "mean_common_prefix": 0.0}


def test_full_sizes_match_the_issue() -> None:
    full = driver().FULL
    assert full.hidden // full.heads == 128 and full.vocab == 32000 and full.lora_r == 64
    assert full.train_steps == 40 and full.checkpoint_steps == 10 and full.interrupt_at == 15
    assert (full.throughput_prompts, full.throughput_samples, full.throughput_tokens) == (1024, 5, 256)
    assert full.expansion_steps == 5 and full.sandbox_programs == 2000


def test_step_timeouts_cover_every_step_and_fit_eight_minutes() -> None:
    import re

    line = next(x for x in SCRIPT.read_text().splitlines() if x.startswith("declare -A LIMIT="))
    limits = {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", line)}
    assert set(limits) == set(driver().STEPS)
    assert sum(limits.values()) <= 8 * 60
