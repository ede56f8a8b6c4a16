"""transformers generation backend (CPU or GPU): batched, seeded per row, each prompt prefilled once.

Sampling uses the Gumbel-max trick (argmax of logits/T + Gumbel noise is an exact draw from
softmax(logits/T)), with one torch.Generator per row seeded from its prompt's seed. Why: transformers' own
sampling draws every row from one global RNG, so a row's text would depend on what else is in its batch;
here it depends only on its own seed, which keeps shards, batch sizes and resumed runs reproducible.
Temperature-only sampling (no top-p/top-k), the same distribution vLLM samples with its defaults.

Where the time went on CPU (SmolLM2-135M, bench/hf_generation.py, docs/local.md has the figures): the k
samples of a problem were k rows that each ran the whole prompt through the model, so the prompt forward
pass (compute-bound, ~100 tokens per row) cost more than all the decode steps; the noise (one
torch.rand(vocab) per row per step) was a few per cent. The decode loop below therefore runs each distinct
prompt once, without padding on CPU, copies its KV cache to its k rows, and drops rows from the batch as
they finish instead of decoding padding until the longest row ends. Models whose cache is not a plain
per-layer key/value cache (sliding-window or hybrid layers) keep transformers' generate() loop, which
samples the same way.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consistency_worker.data.prompts import stop_strings
from consistency_worker.engines.backends import (
    Generated,
    GenerationRequest,
    PromptGeneration,
    cut_at_stop,
    encode_prompt,
)
from consistency_worker.engines.model_loading import ResolvedModel, cuda_available, load_model, load_tokenizer
from consistency_worker.runtime.seeds import derive_seed

log = logging.getLogger(__name__)


class GumbelNoise:
    """Per-row Gumbel noise; row r's draws depend only on its seed and how many steps it has taken."""

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature

    def keep(self, rows: Sequence[int]) -> None:
        self.generators = [self.generators[r] for r in rows]

    def perturb(self, scores: Any) -> Any:
        """scores / T + Gumbel noise, in place; `scores` holds one row per live generator."""
        import torch

        uniform = torch.empty((len(self.generators), scores.shape[-1]), dtype=torch.float32)
        for row, generator in enumerate(self.generators):
            torch.rand(scores.shape[-1], generator=generator, out=uniform[row])
        # Clamp away from 0 and 1 so the double log stays finite.
        gumbel = uniform.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_().neg_()
        return scores.div_(self.temperature).add_(gumbel.to(device=scores.device, dtype=scores.dtype))


def _gumbel_processor(seeds: Sequence[int], temperature: float) -> Any:
    from transformers import LogitsProcessor

    noise = GumbelNoise(seeds, temperature)

    class GumbelSampler(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            return noise.perturb(scores.clone())

    return GumbelSampler()


@functools.cache
def _growing_layer_class() -> type:
    """A DynamicLayer whose keys/values are views into buffers sized for the whole generation, built on first use
    (transformers is imported lazily). Why: DynamicLayer appends with torch.cat, which re-copies the whole cache
    of every layer at every step (15% of CPU decode time on SmolLM2); here a step writes one column."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, keys: Any, values: Any, capacity: int) -> None:
            super().__init__()
            self.device = keys.device
            self.length = keys.shape[-2]
            self._keys = keys.new_zeros((*keys.shape[:2], capacity, keys.shape[-1]))
            self._values = values.new_zeros((*values.shape[:2], capacity, values.shape[-1]))
            self._keys[:, :, : self.length] = keys
            self._values[:, :, : self.length] = values
            self.is_initialized = True
            self._expose()

        def _expose(self) -> None:
            self.keys = self._keys[:, :, : self.length]
            self.values = self._values[:, :, : self.length]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            end = self.length + key_states.shape[-2]
            self._keys[:, :, self.length : end] = key_states
            self._values[:, :, self.length : end] = value_states
            self.length = end
            self._expose()
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            self._keys = self._keys.index_select(0, indices)
            self._values = self._values.index_select(0, indices)
            self._expose()

    return GrowingLayer


def _cache_kwarg(model: Any) -> str | None:
    """The forward() argument that takes a KV cache ("cache" in transformers 5, else "past_key_values"), or None
    when this transformers cannot run the shared-prefill loop (no per-layer cache objects, no logits_to_keep)."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: F401
    except ImportError:
        return None
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" not in params or not hasattr(DynamicCache(), "layers"):
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask), right-aligned: every row's next token lands in the same column."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


class HFBackend(PromptGeneration):
    name = "hf"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        adapter_dir: Path | None = None,
        device: str | None = None,
        max_batch_rows: int | None = None,
        hf_model: Any = None,
        tokenizer: Any = None,
    ):
        """`hf_model`/`tokenizer` let a caller that already holds them (train -> evaluate) reuse them."""
        self.device = device or ("cuda" if cuda_available() else "cpu")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
        self.max_batch_rows = max_batch_rows or (64 if self.device.startswith("cuda") else 16)
        loaded = hf_model if hf_model is not None else load_model(model, device=self.device)
        if adapter_dir is not None:
            from peft import PeftModel

            # Merging makes generation as fast as the bare model; the base weights are ours to change.
            loaded = PeftModel.from_pretrained(loaded, str(adapter_dir)).merge_and_unload()
            log.info("applied LoRA adapter %s", adapter_dir)
        loaded.eval()
        self.model = loaded
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        self.stop = stop_strings(self.tokenizer)
        # None: transformers' generate() for every batch (also what bench/hf_generation.py compares against).
        self.cache_kwarg = _cache_kwarg(loaded)

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def generate_requests(self, requests: Sequence[GenerationRequest]) -> list[list[Generated]]:
        """Requests that share temperature and budget decode together; greedy requests decode once."""
        encoded: dict[str, list[int]] = {}
        for r in requests:
            if r.prompt not in encoded:
                encoded[r.prompt] = encode_prompt(self.tokenizer, r.prompt)
        groups: dict[tuple[float, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((0.0 if r.greedy else r.temperature, r.max_new_tokens), []).append(i)
        done: dict[tuple[int, int], Generated] = {}
        for (temperature, max_new_tokens), members in groups.items():
            greedy = temperature <= 0.0
            rows = [(i, j) for i in members for j in range(1 if greedy else requests[i].n)]
            # Longest first: similar lengths share a batch (less padding) and an OOM shows up at once.
            rows.sort(key=lambda r: -len(encoded[requests[r[0]].prompt]))
            for start in range(0, len(rows), self.max_batch_rows):
                batch = rows[start : start + self.max_batch_rows]
                row_seeds = [derive_seed(requests[i].seed, j) for i, j in batch]
                outs = self._generate_rows([encoded[requests[i].prompt] for i, _ in batch],
                                           None if greedy else (row_seeds, temperature), max_new_tokens)
                done.update(zip(batch, outs, strict=True))
        return [[done[(i, 0 if r.greedy else j)] for j in range(r.n)] for i, r in enumerate(requests)]

    def _finished(self, text: str, ran_out: bool) -> Generated:
        """A decoded answer cut at the first stop string (as vLLM cuts it); one that stopped there or at EOS
        did not hit the budget."""
        text, stopped = cut_at_stop(text, self.stop)
        return Generated(text=text, hit_limit=ran_out and not stopped)

    def _generate_rows(
        self, rows: list[list[int]], sampling: tuple[list[int], float] | None, max_new_tokens: int
    ) -> list[Generated]:
        if self.cache_kwarg is not None:
            out = self._decode_shared_prefill(rows, sampling, max_new_tokens)
            if out is not None:
                return out
            self.cache_kwarg = None  # this model's cache layout is not a plain one: generate() from now on
        return self._generate_batch(rows, sampling, max_new_tokens)

    def _decode_shared_prefill(
        self, rows: list[list[int]], sampling: tuple[list[int], float] | None, max_new_tokens: int
    ) -> list[Generated] | None:
        """Rows that share a prompt share one prefill; finished rows leave the batch. None when the model's
        cache holds anything but plain key/value tensors per layer. Stop strings cut the text afterwards."""
        import torch
        import torch.nn.functional as F
        from transformers.cache_utils import DynamicCache, DynamicLayer

        model, device = self.model, self.model.device
        prompts: list[list[int]] = []
        row_prompt: list[int] = []
        for ids in rows:  # rows of one prompt are adjacent (see generate)
            if not prompts or prompts[-1] != ids:
                prompts.append(ids)
            row_prompt.append(len(prompts) - 1)
        width = max(len(p) for p in prompts)
        # CPU: one prompt per forward pass, so no compute goes to padding. GPU: one padded pass for all.
        group = len(prompts) if device.type == "cuda" else 1
        keys: list[list[Any]] = []
        values: list[list[Any]] = []
        masks, logits = [], []
        with torch.inference_mode():
            for start in range(0, len(prompts), group):
                input_ids, attention = left_pad(prompts[start : start + group], self.pad_id)
                cache = DynamicCache(config=model.config)
                # Positions count real tokens only, so a left-padded row sees the positions it would alone.
                position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
                out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                            position_ids=position_ids.to(device), use_cache=True, logits_to_keep=1,
                            **{self.cache_kwarg: cache})
                if any(type(layer) is not DynamicLayer for layer in cache.layers):
                    return None
                pad = width - input_ids.shape[1]
                for index, layer in enumerate(cache.layers):
                    if index == len(keys):
                        keys.append([])
                        values.append([])
                    keys[index].append(F.pad(layer.keys, (0, 0, pad, 0)))  # left-pad the sequence axis
                    values[index].append(F.pad(layer.values, (0, 0, pad, 0)))
                masks.append(F.pad(attention, (pad, 0)))
                logits.append(out.logits[:, -1, :].to(dtype=torch.float32))
            pick = torch.tensor(row_prompt, device=device)
            growing = _growing_layer_class()
            cache.layers = [
                growing(torch.cat(k).index_select(0, pick), torch.cat(v).index_select(0, pick), width + max_new_tokens)
                for k, v in zip(keys, values, strict=True)
            ]
            attention = torch.cat(masks).to(device).index_select(0, pick)
            scores = torch.cat(logits).index_select(0, pick)
            positions = torch.tensor([len(ids) for ids in rows], device=device)
            noise = GumbelNoise(*sampling) if sampling is not None else None
            eos = torch.tensor(self.eos_ids, device=device)
            live = list(range(len(rows)))
            tokens: list[list[int]] = [[] for _ in rows]
            for step in range(max_new_tokens):
                if noise is not None:
                    scores = noise.perturb(scores)
                chosen = scores.argmax(dim=-1)
                for row, token in zip(live, chosen.tolist(), strict=True):
                    tokens[row].append(token)
                if step == max_new_tokens - 1:
                    break
                going = ~torch.isin(chosen, eos)
                if not bool(going.all()):
                    keep = going.nonzero().squeeze(1)
                    if keep.numel() == 0:
                        break
                    live = [live[k] for k in keep.tolist()]
                    if noise is not None:
                        noise.keep(keep.tolist())
                    chosen, attention, positions = chosen[keep], attention[keep], positions[keep]
                    for layer in cache.layers:
                        layer.batch_select_indices(keep)
                attention = F.pad(attention, (0, 1), value=1)
                out = model(input_ids=chosen[:, None], attention_mask=attention, position_ids=positions[:, None],
                            use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache})
                positions = positions + 1
                scores = out.logits[:, -1, :].to(dtype=torch.float32)
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        eos_ids = set(self.eos_ids)
        return [self._finished(text, len(t) >= max_new_tokens and not (t and t[-1] in eos_ids))
                for text, t in zip(texts, tokens, strict=True)]

    def _generate_batch(
        self, batch: list[list[int]], sampling: tuple[list[int], float] | None, max_new_tokens: int
    ) -> list[Generated]:
        """transformers' generate() on the padded batch: every row prefills its own copy of its prompt."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        input_ids, attention = left_pad(batch, self.pad_id)
        width = input_ids.shape[1]
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,  # sampling happens in the Gumbel processor; the final pick is an argmax
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            stop_strings=list(self.stop) or None,
        )
        processors = LogitsProcessorList()
        if sampling is not None:
            processors.append(_gumbel_processor(*sampling))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                generation_config=config,
                logits_processor=processors,
                # transformers' stop-string criterion reads the tokenizer's vocabulary
                **({"tokenizer": self.tokenizer} if self.stop else {}),
            )
        new_tokens = out[:, width:].cpu()
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ended = torch.isin(new_tokens, torch.tensor(self.eos_ids, dtype=new_tokens.dtype)).any(dim=1).tolist()
        full = new_tokens.shape[1] >= max_new_tokens
        # The stop string stays in transformers' output; vLLM drops it: cut here so both agree.
        return [self._finished(text, full and not eos) for text, eos in zip(texts, ended, strict=True)]

    def close(self) -> None:
        self.model = None
        if cuda_available():
            import torch

            torch.cuda.empty_cache()
