"""Generation backends behind one interface: `vllm` (GPU, offline batch engine) and `hf` (transformers,
CPU or GPU). `auto` picks vLLM when CUDA and the vllm package are both available, else hf.

Prompts go in as rendered chat text and are tokenised here, once, with `encode_prompt`, so both engines
see exactly the same token ids (vLLM gets token ids, never text it would tokenise its own way).
Every prompt carries its own seed: a problem's samples depend only on (campaign seed, problem), not on
which shard, batch or resumed run it lands in (unless the engine-seed option trades that away on vLLM).

`generate_requests` is the one entry point of the generation loop: a list of requests, each with its own
n / temperature / budget / seed, answered in one engine call (greedy n=1 and sampled n=k side by side),
with each completion flagged when it stopped at the token budget rather than at EOS or a stop string.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from consistency_core.spec import Backend, Seeding

from consistency_worker.engines.model_loading import ModelError, ResolvedModel, cuda_available

# How sampled sequences are seeded (spec SamplingKnobs.seeding; vLLM honours it, hf always seeds per row).
SEEDING_PER_SEQUENCE = Seeding.per_sequence.value
SEEDING_ENGINE = Seeding.engine.value


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's share of an engine call: `n` completions (temperature 0: one greedy completion)."""

    prompt: str
    n: int
    temperature: float
    max_new_tokens: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Generated:
    """One completion; `hit_limit`: it ended because it used all max_new_tokens (a cut-off answer);
    `tokens`: how many tokens it took (filled in by answering.count_tokens, for the cost forecast)."""

    text: str
    hit_limit: bool = False
    tokens: int = 0


class PromptGeneration:
    """`generate` for a backend that answers `generate_requests`: one request per prompt, texts only."""

    def generate_requests(self, requests: Sequence[GenerationRequest]) -> list[list[Generated]]:
        raise NotImplementedError

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        temperature: float,
        max_new_tokens: int,
        seeds: Sequence[int],
    ) -> list[list[str]]:
        """`n` completions per prompt (temperature 0: greedy), decoded without special tokens."""
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        requests = [GenerationRequest(prompt, n, temperature, max_new_tokens, seed)
                    for prompt, seed in zip(prompts, seeds, strict=True)]
        return [[g.text for g in done] for done in self.generate_requests(requests)]


class GenerationBackend(Protocol):
    name: str
    tokenizer: Any

    def generate_requests(self, requests: Sequence[GenerationRequest]) -> list[list[Generated]]:
        """Per request, its completions in order: `n` of them (a greedy request gives its one completion
        `n` times). Stop strings for prompts without a chat template are the backend's business."""
        ...

    def close(self) -> None: ...


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered chat prompt. Chat templates that write the BOS token into the text must not
    get a second one; templates that do not (ChatML) get the tokenizer's usual special tokens."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    eos_id = getattr(tokenizer, "eos_token_id", None)
    # Some tokenizers append EOS as a "special token"; a prompt ending in EOS would stop generation at once.
    if add_special and eos_id is not None and len(ids) > 1 and ids[-1] == eos_id and not text.endswith(
        tokenizer.eos_token
    ):
        ids = ids[:-1]
    return list(ids)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded, as vLLM returns it) and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def select_backend(requested: Backend | str) -> str:
    """The concrete backend for a requested one; an explicit vllm without CUDA/vllm is a config error."""
    kind = Backend(requested)
    if kind == Backend.auto:
        return "vllm" if cuda_available() and vllm_importable() else "hf"
    if kind == Backend.vllm:
        if not vllm_importable():
            raise ModelError("backend vllm requested but the vllm package is not installed (GPU image only)")
        if not cuda_available():
            raise ModelError("backend vllm requested but no CUDA device is visible")
    return kind.value


def open_backend(
    kind: Backend | str,
    model: ResolvedModel,
    *,
    adapter_dir: Path | None = None,
    tensor_parallel_size: int = 1,
    seed: int = 0,
    max_batch_rows: int | None = None,
    seeding: str = SEEDING_PER_SEQUENCE,
) -> GenerationBackend:
    """Load the model (and adapter) into the selected engine."""
    name = select_backend(kind)
    if name == "vllm":
        from consistency_worker.engines.backends.vllm import VLLMBackend

        return VLLMBackend(model, adapter_dir=adapter_dir, tensor_parallel_size=tensor_parallel_size, seed=seed,
                           seeding=seeding)
    from consistency_worker.engines.backends.hf import HFBackend

    return HFBackend(model, adapter_dir=adapter_dir, max_batch_rows=max_batch_rows)
