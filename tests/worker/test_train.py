"""The train stage on a tiny real model: QLoRA (4-bit NF4 base, on CPU too) and LoRA on every linear layer,
full fine-tuning, prompt masking, loss curve, checkpoints that survive an interruption, continuing from an
earlier adapter, length-grouped batching."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_testkit.fixtures import (
    PROBLEMS,
    TARGETS,
    run,
    single_torch_thread,
    stage_config,
    tiny_model_dir,
    write_train_data,
)
from consistency_worker.data.prompts import build_messages
from consistency_worker.engines.training import IGNORE_INDEX, encode_example
from consistency_worker.stages import PermanentStageError

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.torch")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


def train_config(store: str, data: str, key: str = "train", **params: object):
    base = {
        "dataUri": data, "epochs": 2, "learningRate": 5e-3, "batchSize": 2, "gradientAccumulation": 1,
        "maxSeqLen": 512, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}, "checkpointSteps": 3,
    }
    return stage_config("train", store, str(tiny_model_dir()), {**base, **params}, key=key)


def adapter_weights(store: Path, key: str) -> dict[str, torch.Tensor]:
    return safetensors.load_file(str(store / key / "adapter" / "adapter_model.safetensors"))


class Preempted(Exception):
    pass


def test_masks_the_prompt_and_trains_the_assistant_turn() -> None:
    from consistency_testkit.tinymodel import build_tokenizer

    tok = build_tokenizer()
    messages = [*build_messages(PROBLEMS[0]), {"role": "assistant", "content": TARGETS["m1"]}]
    example = encode_example(tok, messages, max_seq_len=2048)
    assert example is not None
    target = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(target) == TARGETS["m1"] + "<|im_end|>\n"
    n_prompt = example.labels.index(target[0])
    assert all(t == IGNORE_INDEX for t in example.labels[:n_prompt])
    assert tok.decode(example.input_ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    # Truncation keeps the prompt's start; a prompt that fills the window leaves nothing to learn.
    assert encode_example(tok, messages, max_seq_len=n_prompt) is None
    assert len(encode_example(tok, messages, max_seq_len=n_prompt + 3).input_ids) == n_prompt + 3  # type: ignore[union-attr]

    # A base model without a chat template: the plain layout generation uses, answer after "Answer:".
    tok.chat_template = None
    plain = encode_example(tok, messages, max_seq_len=2048)
    assert plain is not None
    target = [t for t in plain.labels if t != IGNORE_INDEX]
    assert tok.decode(target) == " " + TARGETS["m1"] + "<|im_end|>"
    assert tok.decode(plain.input_ids[: plain.labels.index(target[0])]).endswith("Answer:")


def needs_4bit() -> None:
    from consistency_worker.engines.model_loading import bnb_4bit_unsupported

    why = bnb_4bit_unsupported("cpu")
    if why is not None:
        pytest.skip(why)


@pytest.mark.learning
@pytest.mark.parametrize(("method", "quantization", "layers_4bit"), [("qlora", "nf4", 14), ("lora", "none", 0)])
def test_trains_lora_on_all_linear_layers_and_writes_adapter_and_loss(
        tmp_path: Path, method: str, quantization: str, layers_4bit: int) -> None:
    if method == "qlora":
        needs_4bit()
    store = tmp_path / "store"
    data = write_train_data(tmp_path / "train.jsonl", copies=2)  # 8 examples -> 4 steps/epoch
    result = run(train_config(str(store), str(data), epochs=3, learningRate=1e-2, method=method), tmp_path / "s")
    assert result.ok
    assert result.metrics["steps"] == 12 and result.metrics["method"] == method
    # QLoRA on CPU: the base's 14 linear layers (2 layers x q, k, v, o, gate, up, down) really are 4-bit.
    assert result.metrics["quantization"] == quantization and result.metrics["layers4bit"] == layers_4bit
    assert result.metrics["examples"] == 8 and result.metrics["dropped"] == 0
    losses = json.loads((store / "train" / "loss.json").read_text())["steps"]
    assert [row["step"] for row in losses] == list(range(1, 13))
    assert losses[-1]["loss"] < losses[0]["loss"]
    assert result.metrics["finalLoss"] == losses[-1]["loss"]

    config = json.loads((store / "train" / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    adapted = {name.split(".")[-3] for name in adapter_weights(store, "train") if "lora_A" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    manifest = json.loads((store / "train" / "manifest.json").read_text())
    assert manifest["extra"]["method"].startswith("QLoRA" if method == "qlora" else "LoRA")
    assert manifest["extra"]["quantization"] == quantization and manifest["extra"]["methodRequested"] == method
    assert "adapter" in manifest["outputs"] and manifest["outputs"]["adapter"]["files"]


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A QLoRA run (the default method) on CPU, interrupted and resumed."""
    from consistency_worker.stages import train as train_stage

    needs_4bit()
    store = tmp_path / "store"
    data = str(write_train_data(tmp_path / "train.jsonl", copies=2))  # 4 steps/epoch, 8 in all
    whole = run(train_config(str(store), data, key="whole"), tmp_path / "s1")
    assert whole.metrics["steps"] == 8 and "resumedFromStep" not in whole.metrics
    assert whole.metrics["method"] == "qlora" and whole.metrics["layers4bit"] == 14

    def preempt(step: int) -> None:
        if step == 7:  # checkpoints so far: 3, 4 (end of epoch 1), 6
            raise Preempted(f"node drained after step {step}")

    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(train_config(str(store), data, key="cut"), tmp_path / "s2")
    latest = json.loads((store / "cut" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 6
    assert not (store / "cut" / "result.json").exists()
    # Older checkpoints are pruned: at most two are kept.
    assert sorted(p.name for p in (store / "cut" / "checkpoints").glob("step-*")) == ["step-000004", "step-000006"]

    monkeypatch.setattr(train_stage, "on_step_hook", None)
    resumed = run(train_config(str(store), data, key="cut"), tmp_path / "s3")
    assert resumed.metrics["steps"] == 8 and resumed.metrics["resumedFromStep"] == 6
    # Same data order, optimizer, schedule and dropout RNG: the same adapter as the uninterrupted run.
    first, second = adapter_weights(store, "whole"), adapter_weights(store, "cut")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)
    curve = json.loads((store / "cut" / "loss.json").read_text())["steps"]
    assert [row["step"] for row in curve] == list(range(1, 9))


def test_checkpoint_of_a_different_configuration_is_not_resumed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from consistency_worker.stages import train as train_stage

    store = tmp_path / "store"
    data = str(write_train_data(tmp_path / "train.jsonl", copies=2))

    def preempt(step: int) -> None:
        if step == 5:
            raise Preempted("after step 5")

    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(train_config(str(store), data, key="changed"), tmp_path / "s1")
    monkeypatch.setattr(train_stage, "on_step_hook", None)
    # Same output directory, but the schedule changed (3 epochs instead of 2): starting over is the only
    # way to get what the new configuration describes.
    result = run(train_config(str(store), data, key="changed", epochs=3), tmp_path / "s2")
    assert result.metrics["steps"] == 12 and "resumedFromStep" not in result.metrics


def test_continues_from_an_earlier_adapter(tmp_path: Path) -> None:
    """1B.2 continuing a QLoRA adapter (both phases on the 4-bit base, on CPU)."""
    needs_4bit()
    store = tmp_path / "store"
    data = str(write_train_data(tmp_path / "train.jsonl", copies=2))
    first = run(train_config(str(store), data, key="first", epochs=4, learningRate=1e-2), tmp_path / "s1")
    fresh = run(train_config(str(store), data, key="fresh", epochs=1), tmp_path / "s2")
    cont = run(train_config(str(store), data, key="cont", epochs=1, initAdapterUri=f"{store}/first/adapter"),
               tmp_path / "s3")
    assert first.ok and fresh.ok and cont.ok
    assert {r.metrics["method"] for r in (first, fresh, cont)} == {"qlora"}

    def first_loss(key: str) -> float:
        return json.loads((store / key / "loss.json").read_text())["steps"][0]["loss"]

    # The continued run starts where the first one ended, far below a fresh adapter's first loss.
    assert first_loss("cont") < first_loss("fresh")
    assert first_loss("cont") < first_loss("first")
    manifest = json.loads((store / "cont" / "manifest.json").read_text())
    assert manifest["inputs"]["initAdapter"]["uri"] == f"{store}/first/adapter"


def test_bad_training_rows_are_permanent_errors_naming_the_row(tmp_path: Path) -> None:
    data = write_train_data(tmp_path / "train.jsonl")
    rows = data.read_text().splitlines()
    bad = json.loads(rows[1])
    bad["messages"] = bad["messages"][:-1]  # no assistant turn to learn
    data.write_text("\n".join([rows[0], json.dumps(bad), *rows[2:]]) + "\n")
    with pytest.raises(PermanentStageError, match=r"train\.jsonl:2: the last message must be the assistant"):
        run(train_config(str(tmp_path / "store"), str(data)), tmp_path / "s")
    data.write_text("not json\n")
    with pytest.raises(PermanentStageError, match=r"train\.jsonl:1: not valid JSON"):
        run(train_config(str(tmp_path / "store"), str(data)), tmp_path / "s2")


def test_qlora_falls_back_to_lora_where_bitsandbytes_cannot_run_4bit(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from consistency_worker.engines import model_loading as models

    # What the probe reports on a device (or build) without 4-bit kernels.
    monkeypatch.setattr(models, "_BNB_4BIT", {"cpu": "bitsandbytes cannot run 4-bit NF4 on cpu (test)",
                                              "cuda": "bitsandbytes cannot run 4-bit NF4 on cuda (test)"})
    data = write_train_data(tmp_path / "train.jsonl")
    result = run(train_config(str(tmp_path / "store"), str(data), epochs=1), tmp_path / "s")
    assert result.metrics["method"] == "lora" and result.metrics["quantization"] == "none"
    assert result.metrics["layers4bit"] == 0
    assert "cannot run 4-bit NF4" in result.metrics["methodFallback"]
    assert result.message.startswith("LoRA (full-precision base)")


def test_bitsandbytes_probe_runs_nf4_on_cpu() -> None:
    from consistency_worker.engines.model_loading import _probe_bnb_4bit

    pytest.importorskip("bitsandbytes")
    assert _probe_bnb_4bit("cpu") is None


@pytest.mark.learning
def test_full_fine_tuning_writes_a_whole_model_that_later_stages_load(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from consistency_testkit.fixtures import write_problems
    from consistency_worker.stages import train as train_stage
    from consistency_worker.store.facade import open_store
    from consistency_worker.store.generations import read_generations

    store = tmp_path / "store"
    data = str(write_train_data(tmp_path / "train.jsonl", copies=2))  # 4 steps/epoch
    params = {"method": "full", "epochs": 3, "learningRate": 1e-2}
    whole = run(train_config(str(store), data, key="full", **params), tmp_path / "s1")
    assert whole.metrics["method"] == "full" and whole.metrics["steps"] == 12
    out = store / "full" / "adapter"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() and not (out / "adapter_config.json").exists()
    losses = json.loads((store / "full" / "loss.json").read_text())["steps"]
    assert losses[-1]["loss"] < losses[0]["loss"] - 1.5
    manifest = json.loads((store / "full" / "manifest.json").read_text())
    tiny = safetensors.load_file(str(tiny_model_dir() / "model.safetensors"))
    assert manifest["extra"]["trainableParameters"] == sum(t.numel() for t in tiny.values())

    # Preempted after step 10 (last checkpoint: 9), resumed: the same weights as the uninterrupted run.
    def preempt(step: int) -> None:
        if step == 10:
            raise Preempted("after step 10")

    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(train_config(str(store), data, key="cut", **params), tmp_path / "s2")
    monkeypatch.setattr(train_stage, "on_step_hook", None)
    resumed = run(train_config(str(store), data, key="cut", **params), tmp_path / "s3")
    assert resumed.metrics["resumedFromStep"] == 9
    first = safetensors.load_file(str(out / "model.safetensors"))
    second = safetensors.load_file(str(store / "cut" / "adapter" / "model.safetensors"))
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)

    # generate with the full model as the "adapter": it replaces the base and answers as trained.
    problems = str(write_problems(tmp_path / "problems.jsonl"))
    gen = {"problemsUri": problems, "samples": 1, "temperature": 0.7, "maxNewTokens": 24}
    base = run(stage_config("generate", str(store), str(tiny_model_dir()), gen, key="gen-base"), tmp_path / "g1")
    tuned = run(stage_config("generate", str(store), str(tiny_model_dir()), {**gen, "adapterUri": str(out)},
                             key="gen-full"), tmp_path / "g2")
    assert base.ok and tuned.ok
    before = {r.problem_id: r.greedy.text for r in read_generations(open_store(str(store)), f"{store}/gen-base")}
    after = {r.problem_id: r.greedy.text for r in read_generations(open_store(str(store)), f"{store}/gen-full")}
    assert before != after

    # 1B.2 continues a full model with full fine-tuning; an adapter on it would be served on the wrong base.
    cont = run(train_config(str(store), data, key="cont", method="full", epochs=1, initAdapterUri=str(out)),
               tmp_path / "s4")
    assert cont.ok and json.loads((store / "cont" / "loss.json").read_text())["steps"][0]["loss"] < losses[0]["loss"]
    with pytest.raises(PermanentStageError, match="fully fine-tuned model: continue it with method full"):
        run(train_config(str(store), data, key="bad", method="lora", initAdapterUri=str(out)), tmp_path / "s5")


def test_length_grouped_steps_are_seeded_and_cut_padding() -> None:
    import random

    from consistency_worker.engines.training import epoch_steps, padding_share

    rng = random.Random(3)
    lengths = [rng.randint(20, 600) for _ in range(203)]
    steps = epoch_steps(lengths, batch_size=4, micro_batches_per_step=2, seed=7, epoch=0)
    assert steps == epoch_steps(lengths, batch_size=4, micro_batches_per_step=2, seed=7, epoch=0)
    assert steps != epoch_steps(lengths, batch_size=4, micro_batches_per_step=2, seed=7, epoch=1)
    assert steps != epoch_steps(lengths, batch_size=4, micro_batches_per_step=2, seed=8, epoch=0)
    # Every example exactly once per epoch; ceil(ceil(203 / 4) / 2) = 26 steps, as without grouping.
    flat = sorted(i for step in steps for batch in step for i in batch)
    assert flat == list(range(203)) and len(steps) == 26
    assert all(len(batch) <= 4 for step in steps for batch in step)
    # Against plain shuffled micro-batches of the same epoch order: padding falls several-fold.
    order = torch.randperm(203, generator=torch.Generator().manual_seed(7)).tolist()
    plain = [order[i : i + 4] for i in range(0, 203, 4)]
    grouped = [batch for step in steps for batch in step]
    assert padding_share(lengths, grouped) < padding_share(lengths, plain) / 4
    # Micro-batches are shuffled after grouping: the steps do not run longest-first through a mega-batch.
    widths = [max(lengths[i] for i in step[0]) for step in steps[:8]]
    assert widths != sorted(widths, reverse=True)


@pytest.mark.slow
def test_sigterm_mid_training_exits_retryable_and_the_rerun_resumes(tmp_path: Path) -> None:
    """The real preemption path: `consistency-worker train` as a process, SIGTERM after a checkpoint
    landed, exit code 75 (retryable), then a new process finishes from that checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from consistency_core.stage_wire import EXIT_OK, EXIT_RETRYABLE

    store = tmp_path / "store"
    data = str(write_train_data(tmp_path / "train.jsonl", copies=2))  # 4 steps/epoch
    config = train_config(str(store), data, key="proc", epochs=15, checkpointSteps=5)  # 60 steps
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "consistency_worker.cli", "train", "--config", str(config_file),
               "--result-file", str(tmp_path / "result.txt")]
    latest = store / "proc" / "checkpoints" / "latest.json"

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (latest.is_file() and json.loads(latest.read_text())["step"] >= 5):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_RETRYABLE, output[-3000:]
    stopped_at = json.loads(latest.read_text())["step"]
    assert 5 <= stopped_at < 60
    assert json.loads((tmp_path / "result.txt").read_text())["retryable"] is True

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
    result = json.loads((tmp_path / "result.txt").read_text())
    assert result["metrics"]["steps"] == 60
    assert result["metrics"]["resumedFromStep"] == stopped_at


def test_redistilled_data_or_another_max_seq_len_does_not_resume(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run of distill writes a new train.jsonl with the same number of rows: its checkpoint from the
    old file must not be resumed (the fingerprint holds the data's sha256), nor one made with another
    maxSeqLen."""
    from consistency_worker.stages import train as train_stage

    store = tmp_path / "store"
    data = write_train_data(tmp_path / "train.jsonl", copies=2)

    def preempt(step: int) -> None:
        if step == 5:
            raise Preempted("after step 5")

    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(train_config(str(store), str(data), key="t"), tmp_path / "s1")
    # re-distilled: other sampled targets for the same problems (same count, same prompts)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows:
        row["messages"][-1]["content"] = row["messages"][-1]["content"].replace("####", "So the answer is\n####")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(train_stage, "on_step_hook", None)
    fresh = run(train_config(str(store), str(data), key="t"), tmp_path / "s2")
    assert "resumedFromStep" not in fresh.metrics and fresh.metrics["steps"] == 8  # started over
    latest = json.loads((store / "t" / "checkpoints" / "latest.json").read_text())
    assert len(latest["fingerprint"]["dataSha256"]) == 64 and latest["fingerprint"]["maxSeqLen"] == 512

    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(train_config(str(store), str(data), key="u"), tmp_path / "s3")
    monkeypatch.setattr(train_stage, "on_step_hook", None)
    other_len = run(train_config(str(store), str(data), key="u", maxSeqLen=384), tmp_path / "s4")
    assert "resumedFromStep" not in other_len.metrics
    # and the same data and knobs still resume
    monkeypatch.setattr(train_stage, "on_step_hook", preempt)
    with pytest.raises(Preempted):
        run(train_config(str(store), str(data), key="v"), tmp_path / "s5")
    monkeypatch.setattr(train_stage, "on_step_hook", None)
    assert run(train_config(str(store), str(data), key="v"), tmp_path / "s6").metrics["resumedFromStep"] == 4


def test_warmup_ratio_shapes_the_learning_rate(tmp_path: Path) -> None:
    data = str(write_train_data(tmp_path / "train.jsonl", copies=2))  # 8 steps
    result = run(train_config(str(tmp_path / "store"), data, key="w", warmupRatio=0.5), tmp_path / "s")
    assert result.ok
    lrs = [row["lr"] for row in json.loads((tmp_path / "store" / "w" / "loss.json").read_text())["steps"]]
    peak = lrs.index(max(lrs))
    assert peak == 4 and lrs[:5] == sorted(lrs[:5]) and lrs[4:] == sorted(lrs[4:], reverse=True)
    assert max(lrs) == pytest.approx(5e-3)
