"""Build (once, cached) the demo's tiny from-scratch Llama model on the demo's pretrain split.

The demo must show the loop doing its job on a laptop CPU in minutes, with no hub download.
So the model is trained here, briefly, on generated GSM8K-format problems: long enough to be
right sometimes, short enough to stay inconsistent under sampling, which is what the campaign
then fixes. The result is a plain `save_pretrained` directory the campaign names as a local path.

Cache key = hash of the build config and of the pretrain file's bytes: the same inputs reuse
the same model, anything changed builds a new one beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from consistency_testkit.chatml import IM_END

from consistency_local.demo_data import read_jsonl
from consistency_local.demo_tokenizer import build_tokenizer

# Bumped when the build procedure changes in a way the config fields do not capture.
BUILD_VERSION = 1
DEFAULT_CACHE = Path(os.environ.get("CONSISTENCY_DEMO_CACHE", ".cache")) / "demo-model"



@dataclass(frozen=True)
class DemoModelConfig:
    seed: int = 0
    # Sized on the pretrain/train splits for ~3 minutes on 2 cores: long enough to be right
    # sometimes (mostly on 1-2 step problems), short enough to stay inconsistent under sampling.
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 1024
    steps: int = 1200
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    threads: int = 0  # 0: all cores
    # Which CPU kernels built it (kernels.kernel_mode): a model built with the CPU's own kernels is another
    # model than the pinned build, so the two are cached apart.
    kernels: str = "native"

    def key(self, data_digest: str) -> str:
        blob = json.dumps({"config": asdict(self), "data": data_digest, "v": BUILD_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def demo_messages(question: str) -> list[dict[str, str]]:
    """The product's own math prompt (system instruction asking for `#### <number>`), so the model
    learns exactly the prompts the campaign's stages will send it."""
    from consistency_worker.data.problems import Problem
    from consistency_worker.data.prompts import build_messages

    return build_messages(Problem(id="demo", domain="math", prompt=question, answer="0"))


def strip_annotations(answer: str) -> str:
    """Drop GSM8K `<<a+b=c>>` calculator annotations: they only repeat the arithmetic."""
    return re.sub(r"<<[^>]*>>", "", answer)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_demo_model(
    pretrain_path: Path,
    config: DemoModelConfig = DemoModelConfig(),
    cache_root: Path = DEFAULT_CACHE,
    log: Callable[[str], None] = print,
) -> Path:
    """Return the cached model directory for these inputs, building it first if absent."""
    out = cache_root / config.key(file_digest(pretrain_path))
    if (out / "build-info.json").is_file():
        log(f"demo model: cached at {out}")
        return out
    log(f"demo model: building from scratch into {out} (one time)")
    build_demo_model(pretrain_path, out, config, log)
    return out


def build_demo_model(
    pretrain_path: Path,
    out: Path,
    config: DemoModelConfig = DemoModelConfig(),
    log: Callable[[str], None] = print,
) -> dict:
    """Train and save model + tokenizer to `out` atomically (a killed build leaves no cache hit)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    rows = read_jsonl(pretrain_path)
    if not rows:
        raise ValueError(f"{pretrain_path}: pretrain split is empty")
    prompts_and_targets = [(demo_messages(r["question"]), strip_annotations(r["answer"])) for r in rows]

    # The tokenizer must know every piece of the rendered chat prompt, so build it from
    # those renderings (via the template string itself) plus the targets.
    from consistency_testkit.chatml import CHAT_TEMPLATE
    from jinja2 import Template

    render = Template(CHAT_TEMPLATE).render
    texts = [render(messages=m, add_generation_prompt=True) + t + IM_END for m, t in prompts_and_targets]
    tokenizer = build_tokenizer(texts)

    examples = [_encode(tokenizer, m, t) for m, t in prompts_and_targets]
    examples = [e for e in examples if len(e[0]) <= config.max_positions]
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"demo model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
        f"{len(examples)} examples, {config.steps} steps")

    losses = _train(model, examples, tokenizer.pad_token_id, config, log)

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=256
    )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "config": asdict(config),
        "pretrain": str(pretrain_path),
        "pretrain_sha256": file_digest(pretrain_path),
        "parameters": n_params,
        "examples": len(examples),
        "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (tmp / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    log(f"demo model: built in {info['build_seconds']}s, final loss {info['final_loss']}")
    return info


def _encode(tokenizer, messages: list[dict[str, str]], target: str) -> tuple[list[int], list[int]]:
    """Token ids and labels; the prompt is masked (-100) so only the answer is learned."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target + IM_END, add_special_tokens=False)["input_ids"]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def _batches(
    examples: Sequence[tuple[list[int], list[int]]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of similar length: padding is wasted compute on two cores."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start:start + chunk], key=lambda i: len(examples[i][0]))
        batches.extend(block[i:i + batch_size] for i in range(0, len(block), batch_size))
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size] or batches


def _train(model, examples, pad_id: int, config: DemoModelConfig, log: Callable[[str], None]) -> list[float]:
    import torch

    rng = random.Random(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
    model.train()
    losses: list[float] = []
    queue: list[list[int]] = []
    started = time.monotonic()
    for step in range(config.steps):
        if not queue:
            queue = _batches(examples, config.batch_size, rng)
        batch = [examples[i] for i in queue.pop()]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == config.steps:
            recent = losses[-25:]
            log(f"demo model: step {step + 1}/{config.steps} loss {sum(recent) / len(recent):.3f} "
                f"({time.monotonic() - started:.0f}s)")
    model.eval()
    return losses
