"""GPU paths: QLoRA (bitsandbytes 4-bit NF4) training and vLLM generation. Skipped without CUDA (and the
GPU extra). `pytest -m gpu tests/worker/test_gpu.py` runs them on a GPU machine; bench/gpu_check.sh is the
timed device check with realistic shapes.

The tiny model here has head size 64 (hidden 256, 4 heads) because vLLM's attention kernels only support
common head sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
from consistency_core.spec import LoraConfig, ModelRef
from consistency_testkit.fixtures import PROBLEMS, run, stage_config, write_problems, write_train_data

torch = pytest.importorskip("torch")

HAS_CUDA = torch.cuda.is_available()
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAS_VLLM = importlib.util.find_spec("vllm") is not None

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
needs_bnb = pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (gpu extra)")
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (gpu extra)")


def figure(name: str, value: object) -> None:
    """Measured figures: printed (pytest -s) for bench/gpu_check.sh."""
    print(f"FIGURE {name} = {value}")


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from consistency_testkit.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gpu") / "model", seed=0, hidden_size=256, layers=2, heads=4,
                            kv_heads=2, intermediate_size=512)


# ------------------------------------------------------------------------------------------ QLoRA


@needs_bnb
def test_qlora_loads_nf4_layers(gpu_model: Path) -> None:
    import bitsandbytes as bnb
    from consistency_worker.engines.model_loading import load_model, resolve_model

    model = load_model(resolve_model(ModelRef(uri=str(gpu_model))), device="cuda", quantize_4bit=True)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # every linear layer of both blocks (lm_head stays full precision)
    assert all(m.weight.quant_state.quant_type == "nf4" for m in four_bit)
    assert four_bit[0].weight.quant_state.nested  # double quantisation
    assert four_bit[0].compute_dtype == torch.bfloat16
    figure("qlora_tiny_model_gpu_bytes", torch.cuda.memory_allocated())


@needs_bnb
def test_qlora_train_stage_loss_decreases(gpu_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    data = write_train_data(tmp_path / "train.jsonl", copies=4)  # 16 examples
    config = stage_config("train", str(store), str(gpu_model), {
        "dataUri": str(data), "epochs": 5, "learningRate": 5e-3, "batchSize": 4, "gradientAccumulation": 1,
        "maxSeqLen": 512, "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "method": "qlora",
    }, key="qlora")
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run(config, tmp_path / "s")
    seconds = time.perf_counter() - start
    assert result.metrics["quantization"] == "nf4" and result.metrics["steps"] == 20
    losses = [row["loss"] for row in json.loads((store / "qlora" / "loss.json").read_text())["steps"]]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    manifest = json.loads((store / "qlora" / "manifest.json").read_text())
    assert manifest["extra"]["method"].startswith("QLoRA")
    assert (store / "qlora" / "adapter" / "adapter_model.safetensors").is_file()
    figure("qlora_steps_per_s", round(20 / seconds, 2))
    figure("qlora_peak_gpu_mib", round(torch.cuda.max_memory_allocated() / 2**20, 1))
    figure("qlora_loss_first_last", (losses[0], losses[-1]))


# ------------------------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def lora_adapter(gpu_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with non-zero B matrices, so applying it visibly changes the outputs."""
    from consistency_worker.engines.model_loading import load_model, resolve_model
    from consistency_worker.engines.training import wrap_lora

    model = load_model(resolve_model(ModelRef(uri=str(gpu_model))), device="cpu")
    peft_model = wrap_lora(model, LoraConfig(r=8, alpha=16), init_adapter_dir=None)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def vllm_backend(gpu_model: Path, lora_adapter: Path):  # -> VLLMBackend
    from consistency_worker.engines.backends.vllm import VLLMBackend
    from consistency_worker.engines.model_loading import resolve_model

    os.environ.setdefault("CONSISTENCY_VLLM_GPU_MEMORY_UTILIZATION", "0.3")
    model = resolve_model(ModelRef(uri=str(gpu_model), max_model_len=1024))
    start = time.perf_counter()
    backend = VLLMBackend(model, adapter_dir=lora_adapter, seed=0)
    figure("vllm_engine_start_s", round(time.perf_counter() - start, 1))
    yield backend
    backend.close()


def _prompts(backend) -> list[str]:  # type: ignore[no-untyped-def]
    from consistency_worker.data.prompts import render_prompt

    return [render_prompt(backend.tokenizer, p) for p in PROBLEMS]


@needs_vllm
def test_vllm_n_samples_per_prompt_and_seeded_determinism(vllm_backend) -> None:  # type: ignore[no-untyped-def]
    prompts = _prompts(vllm_backend)
    seeds = [11, 12, 13, 14]
    first = vllm_backend.generate(prompts, n=5, temperature=1.0, max_new_tokens=16, seeds=seeds)
    again = vllm_backend.generate(prompts, n=5, temperature=1.0, max_new_tokens=16, seeds=seeds)
    other = vllm_backend.generate(prompts, n=5, temperature=1.0, max_new_tokens=16, seeds=[s + 100 for s in seeds])
    assert [len(x) for x in first] == [5] * len(prompts)
    assert first == again
    assert first != other
    assert all(len(set(samples)) > 1 for samples in first)
    greedy = vllm_backend.generate(prompts, n=3, temperature=0.0, max_new_tokens=16, seeds=seeds)
    assert all(len(g) == 3 and len(set(g)) == 1 for g in greedy)


@needs_vllm
def test_vllm_one_call_serves_greedy_and_samples_and_flags_the_budget(vllm_backend) -> None:  # type: ignore[no-untyped-def]
    from consistency_worker.engines.backends import GenerationRequest

    prompts = _prompts(vllm_backend)
    requests = [r for i, p in enumerate(prompts) for r in (GenerationRequest(p, 1, 0.0, 8, i),
                                                          GenerationRequest(p, 4, 0.9, 8, i))]
    mixed = vllm_backend.generate_requests(requests)
    greedy = vllm_backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=8, seeds=list(range(len(prompts))))
    sampled = vllm_backend.generate(prompts, n=4, temperature=0.9, max_new_tokens=8, seeds=list(range(len(prompts))))
    assert [[g.text for g in out] for out in mixed[0::2]] == greedy
    assert [[g.text for g in out] for out in mixed[1::2]] == sampled
    # A random model rarely ends within 8 tokens: most answers used the whole budget.
    flags = [g.hit_limit for out in mixed for g in out]
    assert sum(flags) > len(flags) / 2
    figure("vllm_budget_hit_share_8_tokens", round(sum(flags) / len(flags), 3))


@needs_vllm
def test_vllm_lora_request_is_applied(vllm_backend) -> None:  # type: ignore[no-untyped-def]
    prompts = _prompts(vllm_backend)
    args = {"n": 1, "temperature": 0.0, "max_new_tokens": 16, "seeds": [1] * len(prompts)}
    assert vllm_backend.lora_request is not None
    with_adapter = vllm_backend.generate(prompts, **args)
    saved, vllm_backend.lora_request = vllm_backend.lora_request, None
    try:
        without = vllm_backend.generate(prompts, **args)
    finally:
        vllm_backend.lora_request = saved
    assert with_adapter != without


@needs_vllm
def test_vllm_throughput(vllm_backend) -> None:  # type: ignore[no-untyped-def]
    prompts = _prompts(vllm_backend) * 64
    start = time.perf_counter()
    out = vllm_backend.generate(prompts, n=5, temperature=0.8, max_new_tokens=64, seeds=list(range(len(prompts))))
    seconds = time.perf_counter() - start
    assert len(out) == len(prompts)
    figure("vllm_problems_x_k_per_s", round(len(prompts) * 5 / seconds, 1))


@needs_vllm
def test_generate_stage_auto_picks_vllm(gpu_model: Path, tmp_path: Path, vllm_backend) -> None:  # type: ignore[no-untyped-def]
    # The module's engine stays up; the stage starts a second, small one next to it.
    problems = write_problems(tmp_path / "problems.jsonl")
    config = stage_config("generate", str(tmp_path / "store"), str(gpu_model), {
        "problemsUri": str(problems), "samples": 3, "temperature": 0.7, "maxNewTokens": 16,
    }, key="gen", backend="auto")
    config = config.model_copy(update={"model": config.model.model_copy(update={"max_model_len": 1024})})
    result = run(config, tmp_path / "s")
    assert result.metrics["backend"] == "vllm" and result.metrics["completions"] == len(PROBLEMS) * 4
