"""vLLM generation backend (GPU): offline batch generation with prefix caching and LoRA.

One `LLM.generate` call per chunk of problems with one `SamplingParams` per request: a problem's greedy
answer (n=1, temperature 0) and its k samples (n=k) go into the same call, so the engine schedules them
together and prefix caching computes the shared prompt once. Prompts go in as token ids
(`{"prompt_token_ids": ...}`) encoded by the shared `encode_prompt`, so vLLM and the hf backend see
identical inputs.

Seeding (`seeding`): "perSequence" gives every sampled request `seed=<problem seed>`; vLLM fans n=k out into
k child requests seeded seed+index, each with its own torch.Generator, so a problem's random draws depend on
its seed only (any shard, chunk or batch). The logits themselves can still differ in the last bits with the
batch a sequence shares (vLLM is not batch-invariant unless VLLM_BATCH_INVARIANT=1), so a rare sample may
diverge. The price: vLLM's sampler draws the noise of seeded rows in a Python loop over those generators at
every decode step (`random_sample` in vllm/v1/sample/ops/topk_topp_sampler.py) and FlashInfer's sampler is
bypassed. "engine" leaves request seeds unset: the engine's generator, seeded once by `LLM(seed=...)`, draws
for the whole batch in one kernel. Then a problem's samples depend on the scheduling of everything in its
batch (shard count, chunk size, a resumed run); vLLM's reproducibility notes promise equal reruns only with
deterministic scheduling (VLLM_ENABLE_V1_MULTIPROCESSING=0) on the same hardware and vLLM version.

API relied on (vllm 0.33.0 as pinned in images/worker/constraints.txt; fields read from vllm's
sampling_params.py, entrypoints/llm.py, outputs.py, lora/request.py and config/lora.py; vLLM cannot be
installed on the CPU test machines, so this is checked by bench/gpu_check.sh on a GPU): SamplingParams(n,
temperature, top_p, seed, stop, stop_token_ids, max_tokens, skip_special_tokens); LLM.generate(prompts,
[SamplingParams, ...], lora_request=LoRARequest(name, int_id, path)); CompletionOutput.index/.text/
.finish_reason ("length" when max_tokens ran out); LoRAConfig.max_lora_rank in {1, 8, 16, 32, 64, 128, 256,
320, 512}; a seeded n=k request fans out into k children seeded seed+index (v1/engine/parallel_sampling.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from consistency_worker.data.prompts import stop_strings
from consistency_worker.engines.backends import (
    SEEDING_ENGINE,
    SEEDING_PER_SEQUENCE,
    Generated,
    GenerationRequest,
    PromptGeneration,
    encode_prompt,
)
from consistency_worker.engines.model_loading import ResolvedModel, adapter_rank, load_tokenizer

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


def eos_token_ids(model: ResolvedModel, tokenizer: Any) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the eos_token_id (an int or a list) of the
    checkpoint's generation_config.json and config.json. Chat models often have two (end of turn, end of
    text); they go to vLLM explicitly as stop_token_ids because `generation_config="vllm"` (set to avoid a
    checkpoint's sampling defaults) must not also drop the checkpoint's extra EOS ids."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    if model.is_local:
        for name in ("generation_config.json", "config.json"):
            path = Path(model.location) / name
            if path.is_file():
                value = json.loads(path.read_text()).get("eos_token_id")
                ids.update([value] if isinstance(value, int) else [int(v) for v in value or []])
    return sorted(ids)


def sampling_fields(request: GenerationRequest, *, stop: Sequence[str], seeding: str,
                    stop_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """`SamplingParams` keyword arguments of one request (pure: tested without vLLM)."""
    if seeding not in (SEEDING_PER_SEQUENCE, SEEDING_ENGINE):
        raise ValueError(f"seeding must be {SEEDING_PER_SEQUENCE!r} or {SEEDING_ENGINE!r}, got {seeding!r}")
    if request.n < 1 or request.max_new_tokens < 1:
        raise ValueError(f"request needs n >= 1 and max_new_tokens >= 1, got {request.n}, {request.max_new_tokens}")
    fields: dict[str, Any] = {
        # Greedy decoding is deterministic: decode once, however many copies the caller wants.
        "n": 1 if request.greedy else request.n,
        "temperature": 0.0 if request.greedy else request.temperature,
        "top_p": 1.0,
        "max_tokens": request.max_new_tokens,
        "skip_special_tokens": True,
    }
    if stop:
        fields["stop"] = list(stop)
    if stop_token_ids:
        fields["stop_token_ids"] = list(stop_token_ids)
    if not request.greedy and seeding == SEEDING_PER_SEQUENCE:
        fields["seed"] = request.seed
    return fields


def build_batch(
    requests: Sequence[GenerationRequest],
    encode: Callable[[str], list[int]],
    *,
    stop: Sequence[str],
    seeding: str,
    stop_token_ids: Sequence[int] = (),
) -> tuple[list[dict[str, list[int]]], list[dict[str, Any]]]:
    """The prompts (token ids) and per-request SamplingParams fields of one `LLM.generate` call."""
    ids: dict[str, list[int]] = {}  # greedy and sampled requests of a problem share one prompt: encode once
    inputs = []
    for request in requests:
        if request.prompt not in ids:
            ids[request.prompt] = encode(request.prompt)
        inputs.append({"prompt_token_ids": ids[request.prompt]})
    return inputs, [sampling_fields(r, stop=stop, seeding=seeding, stop_token_ids=stop_token_ids) for r in requests]


def collect(
    requests: Sequence[GenerationRequest], outputs: Sequence[Sequence[tuple[int, str, str | None]]]
) -> list[list[Generated]]:
    """Completions per request from (index, text, finish_reason) triples, in index order; a greedy request's
    one completion is repeated up to its n."""
    if len(outputs) != len(requests):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
    result = []
    for request, triples in zip(requests, outputs, strict=True):
        done = [Generated(text=text, hit_limit=reason == "length") for _, text, reason in sorted(triples)]
        expected = 1 if request.greedy else request.n
        if len(done) != expected:
            raise RuntimeError(f"vLLM returned {len(done)} completions for a request of n={expected}")
        result.append(done * request.n if request.greedy else done)
    return result


def _supported(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop engine arguments this vLLM version does not know (e.g. generation_config before 0.7)."""
    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    dropped = sorted(set(kwargs) - known)
    if dropped:
        log.warning("this vLLM version lacks engine argument(s) %s; ignoring them", dropped)
    return {k: v for k, v in kwargs.items() if k in known}


class VLLMBackend(PromptGeneration):
    name = "vllm"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        adapter_dir: Path | None = None,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        seeding: str = SEEDING_PER_SEQUENCE,
    ):
        from vllm import LLM

        if seeding not in (SEEDING_PER_SEQUENCE, SEEDING_ENGINE):
            raise ValueError(f"seeding must be {SEEDING_PER_SEQUENCE!r} or {SEEDING_ENGINE!r}, got {seeding!r}")
        self.seeding = seeding
        self.tokenizer = load_tokenizer(model)
        self.stop = stop_strings(self.tokenizer)
        self.eos_ids = eos_token_ids(model, self.tokenizer)
        kwargs = engine_kwargs(model, adapter_dir=adapter_dir, tensor_parallel_size=tensor_parallel_size, seed=seed)
        log.info("starting vLLM (seeding %s): %s", seeding, {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = LLM(**_supported(kwargs))
        self.lora_request = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, str(adapter_dir))

    def generate_requests(self, requests: Sequence[GenerationRequest]) -> list[list[Generated]]:
        if not requests:
            return []
        from vllm import SamplingParams

        inputs, fields = build_batch(requests, lambda text: encode_prompt(self.tokenizer, text), stop=self.stop,
                                     seeding=self.seeding, stop_token_ids=self.eos_ids)
        params = [SamplingParams(**f) for f in fields]
        outputs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=False)
        triples = [[(c.index, c.text, c.finish_reason) for c in out.outputs] for out in outputs]
        return collect(requests, triples)

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
