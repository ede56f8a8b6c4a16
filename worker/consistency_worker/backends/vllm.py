"""vLLM generation backend (GPU): offline batch generation with prefix caching and LoRA.

One `LLM.generate` call per chunk of problems: each prompt gets its own `SamplingParams(n=k, seed=...)`,
so a problem's k samples depend on its seed only (vLLM keeps a per-request generator when a seed is set).
Prompts go in as token ids (`{"prompt_token_ids": ...}`) encoded by the shared `encode_prompt`, so vLLM
and the hf backend see identical inputs. The greedy answer and the k samples share the prompt prefix,
which prefix caching computes once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consistency_worker.backends import encode_prompt
from consistency_worker.models import ResolvedModel, adapter_rank, load_tokenizer

log = logging.getLogger(__name__)

# Share of GPU memory vLLM may claim (weights + KV cache); lower it when something else shares the GPU.
ENV_GPU_MEMORY = "CONSISTENCY_VLLM_GPU_MEMORY_UTILIZATION"

# LoRA ranks vLLM accepts for max_lora_rank.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_limit(rank: int) -> int:
    """Smallest max_lora_rank vLLM accepts that fits an adapter of `rank`."""
    for allowed in _VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds what vLLM supports ({_VLLM_LORA_RANKS[-1]})")


def context_length(model: ResolvedModel) -> int:
    """ModelRef.maxModelLen, capped at what the checkpoint supports: vLLM refuses a longer context, and the
    4096 default should not fail a model trained for 2048."""
    config_path = Path(model.location) / "config.json"
    if model.is_local and config_path.is_file():
        native = json.loads(config_path.read_text()).get("max_position_embeddings")
        if isinstance(native, int) and 0 < native < model.max_model_len:
            log.info("maxModelLen %d exceeds the model's %d positions; using %d", model.max_model_len, native, native)
            return native
    return model.max_model_len


def engine_kwargs(
    model: ResolvedModel, *, adapter_dir: Path | None, tensor_parallel_size: int, seed: int
) -> dict[str, Any]:
    """Arguments for `vllm.LLM` (pure, so tests can check them without a GPU)."""
    kwargs: dict[str, Any] = {
        "model": model.gguf_path or model.location,
        "tensor_parallel_size": tensor_parallel_size,
        "dtype": model.dtype,
        "seed": seed,
        "max_model_len": context_length(model),
        "enable_prefix_caching": True,
        "gpu_memory_utilization": float(os.environ.get(ENV_GPU_MEMORY) or 0.9),
        # Sample from the plain temperature distribution, as the hf backend does, instead of the defaults
        # (top-p/top-k) a checkpoint's generation_config.json may carry.
        "generation_config": "vllm",
    }
    if model.gguf_file:
        # A GGUF file holds its tokenizer, but vLLM reads tokenizer files more reliably from a directory.
        tokenizer_dir = Path(model.location)
        has_tokenizer = model.is_local and (tokenizer_dir / "tokenizer_config.json").is_file()
        kwargs["tokenizer"] = str(tokenizer_dir) if has_tokenizer else kwargs["model"]
    if model.revision:
        kwargs["revision"] = model.revision
    if adapter_dir is not None:
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank_limit(adapter_rank(adapter_dir)))
    return kwargs


def _supported(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop engine arguments this vLLM version does not know (e.g. generation_config before 0.7)."""
    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    dropped = sorted(set(kwargs) - known)
    if dropped:
        log.warning("this vLLM version lacks engine argument(s) %s; ignoring them", dropped)
    return {k: v for k, v in kwargs.items() if k in known}


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        adapter_dir: Path | None = None,
        tensor_parallel_size: int = 1,
        seed: int = 0,
    ):
        from vllm import LLM

        self.tokenizer = load_tokenizer(model)
        kwargs = engine_kwargs(model, adapter_dir=adapter_dir, tensor_parallel_size=tensor_parallel_size, seed=seed)
        log.info("starting vLLM: %s", {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = LLM(**_supported(kwargs))
        self.lora_request = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, str(adapter_dir))

    def sampling_params(self, *, n: int, temperature: float, max_new_tokens: int, seed: int) -> Any:
        from vllm import SamplingParams

        greedy = temperature <= 0.0
        return SamplingParams(
            n=1 if greedy else n,
            temperature=0.0 if greedy else temperature,
            top_p=1.0,
            seed=None if greedy else seed,
            max_tokens=max_new_tokens,
            skip_special_tokens=True,
        )

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        temperature: float,
        max_new_tokens: int,
        seeds: Sequence[int],
    ) -> list[list[str]]:
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        inputs = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts]
        params = [
            self.sampling_params(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=s) for s in seeds
        ]
        outputs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=False)
        texts: list[list[str]] = []
        for out in outputs:
            completions = [c.text for c in sorted(out.outputs, key=lambda c: c.index)]
            # Greedy decoding ran once; every "sample" of it is the same text.
            texts.append(completions * n if len(completions) == 1 and n > 1 else completions)
        return texts

    def close(self) -> None:
        llm, self.llm = self.llm, None
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            with contextlib.suppress(Exception):
                core.shutdown()
        del llm
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()
