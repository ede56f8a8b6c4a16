"""transformers generation backend (CPU or GPU): batched, left-padded, seeded per row.

Sampling uses the Gumbel-max trick inside a logits processor (argmax of logits/T + Gumbel noise is an
exact draw from softmax(logits/T)), with one torch.Generator per row seeded from its prompt's seed. Why:
transformers' own sampling draws every row from one global RNG, so a row's text would depend on what else
is in its batch; here it depends only on its own seed, which keeps shards, batch sizes and resumed runs
reproducible. Temperature-only sampling (no top-p/top-k), the same distribution vLLM samples with its
defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consistency_worker.backends import encode_prompt
from consistency_worker.models import ResolvedModel, cuda_available, load_model, load_tokenizer
from consistency_worker.seeds import derive_seed

log = logging.getLogger(__name__)


def _gumbel_processor(seeds: Sequence[int], temperature: float) -> Any:
    import torch
    from transformers import LogitsProcessor

    class GumbelSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            vocab = scores.shape[-1]
            uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
            # Clamp away from 0 and 1 so the double log stays finite.
            uniform = uniform.clamp_(1e-10, 1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(uniform))
            return scores / temperature + gumbel.to(device=scores.device, dtype=scores.dtype)

    return GumbelSampler()


class HFBackend:
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
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        greedy = temperature <= 0.0
        # Greedy decoding is deterministic: one row per prompt, copied n times.
        rows = [(i, j) for i in range(len(prompts)) for j in range(1 if greedy else n)]
        # Longest first: similar lengths share a batch (less padding) and an OOM shows up at once.
        rows.sort(key=lambda r: -len(encoded[r[0]]))
        texts: dict[tuple[int, int], str] = {}
        for start in range(0, len(rows), self.max_batch_rows):
            batch = rows[start : start + self.max_batch_rows]
            row_seeds = [derive_seed(seeds[i], j) for i, j in batch]
            outs = self._generate_batch(
                [encoded[i] for i, _ in batch], None if greedy else (row_seeds, temperature), max_new_tokens
            )
            texts.update(zip(batch, outs, strict=True))
        return [[texts[(i, 0 if greedy else j)] for j in range(n)] for i in range(len(prompts))]

    def _generate_batch(
        self, batch: list[list[int]], sampling: tuple[list[int], float] | None, max_new_tokens: int
    ) -> list[str]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,  # sampling happens in the Gumbel processor; the final pick is an argmax
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
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
            )
        new_tokens = out[:, width:].cpu()
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self.model = None
        if cuda_available():
            import torch

            torch.cuda.empty_cache()
