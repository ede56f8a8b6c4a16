"""What precision the training forward runs in: bf16 attention on CUDA under autocast (QLoRA's
prepare_model_for_kbit_training leaves norms, embeddings and lm_head in fp32, which would keep the residual
stream and attention in fp32 without it); fp32 on CPU, where autocast would only slow things down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_core.spec import LoraConfig, ModelRef, TrainingKnobs
from consistency_testkit.fixtures import single_torch_thread, tiny_model_dir, write_train_data

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


def attention_dtypes(tmp_path: Path, device: str, monkeypatch: pytest.MonkeyPatch) -> set:
    """Train two QLoRA steps on `device` and return the dtypes of every query that reached SDPA."""
    import json

    from consistency_worker.engines.model_loading import bnb_4bit_unsupported, load_model, load_tokenizer, resolve_model
    from consistency_worker.engines.training import build_examples, train_lora, wrap_lora
    from peft import prepare_model_for_kbit_training

    why = bnb_4bit_unsupported(device)
    if why is not None:
        pytest.skip(why)
    seen: set = set()
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.add(query.dtype)
        return sdpa(query, *args, **kwargs)

    ref = resolve_model(ModelRef(uri=str(tiny_model_dir())))
    tokenizer = load_tokenizer(ref)
    rows = [json.loads(line) for line in write_train_data(tmp_path / "train.jsonl").read_text().splitlines()]
    examples, _ = build_examples(tokenizer, rows, 512)
    base = load_model(ref, device=device, quantize_4bit=True)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
    model = wrap_lora(base, LoraConfig(r=8, alpha=16, dropout=0.0), init_adapter_dir=None)
    knobs = TrainingKnobs(epochs=1, learning_rate=1e-3, batch_size=2, gradient_accumulation=1, max_seq_len=512,
                          lora=LoraConfig(r=8, alpha=16, dropout=0.0))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    outcome = train_lora(model, examples, knobs, seed=0, pad_id=tokenizer.pad_token_id, checkpoints=None,
                         quantized=True)
    assert outcome.steps == 2
    return seen


def test_attention_runs_in_fp32_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Also proves the recording sees the attention calls, so the GPU assertion below cannot pass vacuously.
    assert attention_dtypes(tmp_path, "cpu", monkeypatch) == {torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attention_runs_in_bf16_on_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert attention_dtypes(tmp_path, "cuda", monkeypatch) == {torch.bfloat16}
    assert torch.backends.cuda.matmul.allow_tf32
