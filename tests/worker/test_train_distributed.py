"""Data-parallel training: `consistency-worker train` with params.processes = 2 starts torchrun itself, two
ranks on the gloo backend (CPU) split every step's micro-batches and sum their gradients, and the adapter
equals a one-process run with the same global batch. Rank 0 alone writes; exit codes survive torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_core.stage_wire import EXIT_OK, EXIT_PERMANENT
from consistency_testkit.fixtures import (
    PROBLEMS,
    run,
    single_torch_thread,
    stage_config,
    tiny_model_dir,
    write_train_data,
)

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.torch")
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


def config(store: Path, data: str, key: str, **params: object):
    base = {"dataUri": data, "epochs": 2, "learningRate": 1e-2, "batchSize": 2, "gradientAccumulation": 1,
            "maxSeqLen": 512, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "checkpointSteps": 2}
    return stage_config("train", str(store), str(tiny_model_dir()), {**base, **params}, key=key)


def run_cli(cfg, tmp: Path) -> tuple[int, dict, str]:
    config_file = tmp / f"{cfg.key}.json"
    config_file.write_text(cfg.to_json())
    result_file = tmp / f"{cfg.key}-result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "consistency_worker.cli", "train", "--config", str(config_file),
                           "--result-file", str(result_file)], env=env, capture_output=True, text=True,
                          timeout=240, check=False)
    return proc.returncode, json.loads(result_file.read_text()), proc.stdout + proc.stderr


def test_two_gloo_ranks_give_the_adapter_of_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # 9 examples of uneven lengths: 5 micro-batches of <= 2 per epoch, so each epoch's last step has one
    # micro-batch and rank 1 sits it out (contributing zero gradients to the sum).
    data = str(write_train_data(tmp_path / "train.jsonl", problems=PROBLEMS[:3], copies=3))
    # One process: 2 micro-batches of 2 per step. Two ranks: one micro-batch of 2 each. Global batch 4.
    single = run(config(store, data, "one", gradientAccumulation=2), tmp_path / "s1")
    assert single.metrics["steps"] == 6 and single.metrics["processes"] == 1

    code, result, output = run_cli(config(store, data, "two", processes=2), tmp_path)
    assert code == EXIT_OK, output[-3000:]
    assert result["ok"] and result["metrics"]["processes"] == 2 and result["metrics"]["steps"] == 6
    assert result["metrics"]["method"] == single.metrics["method"]
    # Both ranks' tokens are counted: the same data went through the model as in the single process.
    assert result["metrics"]["tokens"] == single.metrics["tokens"]
    one, two = (safetensors.load_file(str(store / key / "adapter" / "adapter_model.safetensors"))
                for key in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5)
    curve_one = [r["loss"] for r in json.loads((store / "one" / "loss.json").read_text())["steps"]]
    curve_two = [r["loss"] for r in json.loads((store / "two" / "loss.json").read_text())["steps"]]
    assert curve_two == pytest.approx(curve_one, rel=1e-4)
    # Rank 0 alone wrote: one result, one manifest, checkpoints from one writer.
    assert json.loads((store / "two" / "result.json").read_text())["metrics"]["processes"] == 2
    latest_file = store / "two" / "checkpoints" / "latest.json"
    latest = json.loads(latest_file.read_text())
    assert latest["step"] == 6 and latest["processes"] == 2

    # Resume: both ranks restart from rank 0's checkpoint of step 4 (as if preempted after step 5) and end
    # with the same adapter.
    assert sorted(p.name for p in latest_file.parent.glob("step-*")) == ["step-000004", "step-000006"]
    latest_file.write_text(json.dumps({**latest, "step": 4, "uri": latest["uri"].replace("000006", "000004")}))
    (store / "two" / "result.json").unlink()
    code, resumed, output = run_cli(config(store, data, "two", processes=2), tmp_path)
    assert code == EXIT_OK and resumed["metrics"]["resumedFromStep"] == 4, output[-3000:]
    again = safetensors.load_file(str(store / "two" / "adapter" / "adapter_model.safetensors"))
    for name in one:
        torch.testing.assert_close(again[name], one[name], rtol=1e-4, atol=1e-5)


def test_a_permanent_error_keeps_its_exit_code_through_torchrun(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    code, result, output = run_cli(config(tmp_path / "store", str(data), "bad", processes=2), tmp_path)
    assert code == EXIT_PERMANENT, output[-3000:]
    assert result["ok"] is False and result["retryable"] is False
    assert "train.jsonl:1" in result["message"]


def test_preference_pairs_train_data_parallel_as_in_one_process(tmp_path: Path) -> None:
    from tests.worker.test_preference import pair_rows, write_pairs

    store = tmp_path / "store"
    data = write_pairs(tmp_path / "pairs.jsonl", pair_rows(copies=2))  # 8 pairs of uneven lengths
    pref = {"method": "lora", "objective": "preference", "preference": {"beta": 0.5, "nllWeight": 1.0}}
    single = run(config(store, data, "one", gradientAccumulation=2, **pref), tmp_path / "s1")
    code, result, output = run_cli(config(store, data, "two", processes=2, **pref), tmp_path)
    assert code == EXIT_OK, output[-3000:]
    assert result["metrics"]["objective"] == "preference" and result["metrics"]["steps"] == single.metrics["steps"]
    assert result["metrics"]["tokens"] == single.metrics["tokens"]
    one, two = (safetensors.load_file(str(store / key / "adapter" / "adapter_model.safetensors"))
                for key in ("one", "two"))
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5)
