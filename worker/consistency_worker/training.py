"""LoRA / QLoRA fine-tuning: a plain torch loop, resumable from checkpoints in the artifact store.

- Examples are chat transcripts; the loss covers only the final assistant turn (prompt tokens get label
  -100), tokenised exactly as generation tokenises prompts (`encode_prompt`), so training and inference
  agree on the prompt/answer boundary.
- QLoRA wherever bitsandbytes runs 4-bit layers (CUDA, and CPU with bitsandbytes >= 0.48): the base model
  in 4-bit NF4 with double quantisation and bf16 compute, `prepare_model_for_kbit_training`; on CUDA paged
  AdamW (32-bit: LoRA's few parameters make 8-bit states a negligible saving for a precision cost), plain
  AdamW elsewhere. Also plain LoRA on full-precision weights, and full fine-tuning (small models).
- On CUDA the forward runs under bf16 autocast (prepare_model_for_kbit_training leaves embeddings, norms and
  lm_head in fp32, which would otherwise keep the residual stream and attention in fp32) with TF32 matmuls.
- No padding waste: micro-batches hold examples of similar length, grouped inside seeded mega-batches
  (`epoch_steps`), and each optimizer step's loss is the per-token mean over all its micro-batches.
- Data parallel (torchrun, one process per GPU): each rank runs its share of a step's micro-batches and the
  trainable gradients are summed across ranks before the optimizer step; only rank 0 writes checkpoints.
- A checkpoint (adapter + optimizer + scheduler + RNG + step) goes to the store every `checkpoint_steps`
  optimizer steps and at the end of each epoch; a rerun restores the latest one and continues with the
  same data order, so an interrupted run ends at the same step count (and, on CPU, the same weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consistency_core.spec import LoraConfig, TrainingKnobs
from consistency_core.stage_wire import join_uri

from consistency_worker.backends import encode_prompt
from consistency_worker.distributed import World, all_reduce_gradients, broadcast_parameters
from consistency_worker.prompts import plain_prompt
from consistency_worker.seeds import derive_seed
from consistency_worker.store import Store

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
STATE_FILE = "trainer_state.pt"
FULL_WEIGHTS = "model.safetensors"
ROLES = ("system", "user", "assistant")
# Length grouping sorts examples within windows of this many optimizer steps: wide enough that most
# micro-batches find similar lengths, narrow enough that the data order stays random across the epoch.
MEGA_BATCH_STEPS = 8


class TrainingDataError(ValueError):
    """A training row is malformed (permanent: the same data fails the same way)."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainOutcome:
    steps: int
    losses: list[dict[str, float]]
    resumed_from_step: int | None
    quantization: str
    examples: int
    tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1]["loss"] if self.losses else None


# ------------------------------------------------------------------------------------------ data


def validate_messages(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise TrainingDataError(f"{where}: `messages` must be a list of at least two turns")
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise TrainingDataError(f"{where}: messages[{j}].role must be one of {ROLES}")
        if not isinstance(message.get("content"), str):
            raise TrainingDataError(f"{where}: messages[{j}].content must be a string")
    if messages[-1]["role"] != "assistant":
        raise TrainingDataError(f"{where}: the last message must be the assistant's (the training target)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_example(tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int) -> Example | None:
    """Prompt ids (masked) + assistant-turn ids (trained); None when truncation leaves no target token."""
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    else:
        # A base model: the same plain layout generation prompts it with (prompts.render_prompt).
        prompt_text = plain_prompt(messages[:-1])
        full_text = prompt_text + " " + messages[-1]["content"] + (tokenizer.eos_token or "")
    if full_text.startswith(prompt_text):
        # The template's own end-of-turn marker is part of the target: the model must learn to stop.
        completion = full_text[len(prompt_text) :]
    else:
        completion = messages[-1]["content"] + (tokenizer.eos_token or "")
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + completion_ids)[:max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return Example(ids, labels)


def build_examples(
    tokenizer: Any, rows: Sequence[dict[str, Any]], max_seq_len: int, source: str = "train.jsonl"
) -> tuple[list[Example], int]:
    """Encode chat rows; returns (examples, rows dropped because the prompt alone fills max_seq_len)."""
    examples, dropped = [], 0
    for i, row in enumerate(rows, start=1):
        example = encode_example(tokenizer, validate_messages(row, f"{source}:{i}"), max_seq_len)
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    return examples, dropped


def collate(batch: list[Example], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def epoch_steps(lengths: Sequence[int], batch_size: int, micro_batches_per_step: int, seed: int,
                epoch: int) -> list[list[list[int]]]:
    """One epoch's optimizer steps, each a list of micro-batches of example indices.

    The epoch's shuffled order is cut into mega-batches of MEGA_BATCH_STEPS steps; inside one, examples are
    sorted by length and cut into micro-batches (so little padding), whose order is then shuffled. A pure
    function of (lengths, sizes, seed, epoch): a resumed run, and every rank of a data-parallel one, sees
    the same steps. Step count: ceil(ceil(n / batch_size) / micro_batches_per_step), as without grouping."""
    import torch

    generator = torch.Generator().manual_seed(derive_seed("epoch", seed, epoch))
    order = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * micro_batches_per_step * MEGA_BATCH_STEPS
    steps: list[list[list[int]]] = []
    for start in range(0, len(order), mega):
        window = sorted(order[start : start + mega], key=lambda i: -lengths[i])  # stable: ties stay shuffled
        micro = [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        micro = [micro[i] for i in torch.randperm(len(micro), generator=generator).tolist()]
        steps += [micro[i : i + micro_batches_per_step] for i in range(0, len(micro), micro_batches_per_step)]
    return steps


def padding_share(lengths: Sequence[int], micro_batches: Sequence[Sequence[int]]) -> float:
    """Padded positions / all positions the model computes for these micro-batches (right-padded)."""
    real = sum(lengths[i] for batch in micro_batches for i in batch)
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in micro_batches if batch)
    return 1.0 - real / computed if computed else 0.0


# ----------------------------------------------------------------------------------------- model


def peft_target_modules(lora: LoraConfig) -> str | list[str]:
    return "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)


def wrap_lora(model: Any, lora: LoraConfig, *, init_adapter_dir: Path | None) -> Any:
    """Attach a trainable LoRA adapter: a fresh one, or the given earlier adapter (1B.2 continues 1B.1)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if init_adapter_dir is not None:
        wrapped = PeftModel.from_pretrained(model, str(init_adapter_dir), is_trainable=True)
        loaded = wrapped.peft_config["default"]
        if loaded.r != lora.r or loaded.lora_alpha != lora.alpha:
            log.warning("continuing adapter has r=%s alpha=%s; the configured r=%s alpha=%s are ignored",
                        loaded.r, loaded.lora_alpha, lora.r, lora.alpha)
        return wrapped
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=peft_target_modules(lora),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def make_optimizer(params: list[Any], lr: float, paged: bool) -> Any:
    import torch

    if paged:  # CUDA only: paging moves optimizer states through CUDA unified memory
        import bitsandbytes as bnb

        # Paged optimizer states move to CPU under memory pressure instead of failing with OOM.
        return bnb.optim.PagedAdamW32bit(params, lr=lr, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def make_scheduler(optimizer: Any, steps: int, warmup_ratio: float) -> Any:
    """Linear warmup then linear decay to zero."""
    import torch

    warmup = max(1, int(steps * warmup_ratio)) if steps > 1 else 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LinearSchedule(warmup, steps))


class _LinearSchedule:
    """A class (not a lambda) so the scheduler's state can be saved with the checkpoint."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        remaining = self.total - step
        return max(0.0, remaining / max(1, self.total - self.warmup))


# ------------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class CheckpointStore:
    """Checkpoints under `<output>/checkpoints/step-NNNNNN/`, with `latest.json` written last as the
    commit marker: a checkpoint is used only once it is complete."""

    store: Store
    root: str
    scratch: Path
    keep: int = 2

    def latest(self) -> dict[str, Any] | None:
        uri = join_uri(self.root, LATEST)
        return self.store.read_json(uri) if self.store.is_file(uri) else None

    def save(self, model: Any, state: dict[str, Any], fingerprint: dict[str, Any], processes: int = 1) -> str:
        import torch

        step = state["step"]
        local = self.scratch / f"ckpt-{step:06d}"
        shutil.rmtree(local, ignore_errors=True)
        if hasattr(model, "peft_config"):
            model.save_pretrained(str(local))
        else:  # full fine-tuning: every weight (safetensors' save_model copes with tied embeddings)
            from safetensors.torch import save_model

            local.mkdir(parents=True, exist_ok=True)
            save_model(model, str(local / FULL_WEIGHTS))
        torch.save(state, local / STATE_FILE)
        uri = join_uri(self.root, f"step-{step:06d}")
        self.store.upload_dir(local, uri)
        self.store.write_json(join_uri(self.root, LATEST),
                              {"step": step, "uri": uri, "fingerprint": fingerprint, "processes": processes})
        shutil.rmtree(local, ignore_errors=True)
        self._prune(keep_uri=uri)
        return uri

    def _prune(self, keep_uri: str) -> None:
        dirs = sorted({c[len(self.root.rstrip("/")) + 1 :].split("/", 1)[0] for c in self.store.list(self.root)})
        steps = [d for d in dirs if d.startswith("step-")]
        for old in steps[: max(0, len(steps) - self.keep)]:
            uri = join_uri(self.root, old)
            if uri != keep_uri:
                self.store.delete(uri, recursive=True)

    def load(self, model: Any, pointer: dict[str, Any]) -> dict[str, Any]:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        local = self.scratch / f"resume-{pointer['step']:06d}"
        self.store.download_dir(pointer["uri"], local)
        if (local / FULL_WEIGHTS).is_file():
            from safetensors.torch import load_model

            missing, unexpected = load_model(model, str(local / FULL_WEIGHTS), strict=False)
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {pointer['uri']} does not match the model: "
                                   f"{(missing + unexpected)[:3]}")
        else:
            weights = load_file(str(local / "adapter_model.safetensors"))
            result = set_peft_model_state_dict(model, weights)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise RuntimeError(f"checkpoint {pointer['uri']} does not match the model: {unexpected[:3]}")
        return torch.load(local / STATE_FILE, weights_only=False, map_location="cpu")


# ------------------------------------------------------------------------------------------ loop


def total_steps(n_examples: int, knobs: TrainingKnobs, world_size: int = 1) -> int:
    """Optimizer steps of a whole run: a partial last batch and a partial accumulation group still count.
    With data parallelism a step takes batch_size x gradient_accumulation examples on each of world_size
    ranks (batch_size is per device)."""
    batches_per_epoch = math.ceil(n_examples / knobs.batch_size)
    return math.ceil(batches_per_epoch / (knobs.gradient_accumulation * world_size)) * knobs.epochs


def forward_precision(device: Any) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast around the forward on CUDA (bf16-capable GPUs); full precision elsewhere: CPU
    autocast to bf16 is slower than fp32 on most CPUs, and the 4-bit layers already compute in bf16."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_tf32() -> None:
    """TF32 tensor-core matmuls for whatever still runs in fp32 on CUDA (optimizer-side, fp32 layers)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _data_row(ex: Any) -> list[Any]:
    if isinstance(ex, Example):
        return [ex.input_ids, ex.labels]
    # A preference pair (preference.PairExample): both sequences and the weight.
    return [ex.chosen.input_ids, ex.chosen.labels, ex.rejected.input_ids, ex.rejected.labels, ex.weight]


def resume_fingerprint(examples: Sequence[Any], knobs: TrainingKnobs, seed: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the training data itself (sha256 of the tokenised
    examples or pairs, so a re-distilled file of the same size never resumes a stale checkpoint), maxSeqLen
    and the schedule- and loss-defining knobs."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(_data_row(ex), separators=(",", ":")).encode())
        digest.update(b"\n")
    objective: dict[str, Any] = {}
    if knobs.objective != "sft":  # absent for sft: checkpoints written before the knob existed still resume
        objective = {"objective": knobs.objective, "beta": knobs.preference.beta,
                     "nllWeight": knobs.preference.nll_weight}
    return {**objective,
        "examples": len(examples), "dataSha256": digest.hexdigest(), "maxSeqLen": knobs.max_seq_len,
        "epochs": knobs.epochs, "batchSize": knobs.batch_size, "gradientAccumulation": knobs.gradient_accumulation,
        "learningRate": knobs.learning_rate, "warmupRatio": knobs.warmup_ratio, "seed": seed, "r": knobs.lora.r,
        "method": knobs.method,
    }


def _micro_batch_loss(model: Any, batch: list[Any], knobs: TrainingKnobs, pad_id: int, device: Any
                      ) -> tuple[Any, int]:
    """(loss of one micro-batch, positions computed)."""
    if knobs.objective == "preference":
        from consistency_worker.preference import pair_loss

        return pair_loss(model, batch, pad_id, knobs.preference, device)
    inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
    return model(**inputs).loss, int(inputs["attention_mask"].sum())


def train_lora(
    model: Any,
    examples: Sequence[Any],
    knobs: TrainingKnobs,
    *,
    seed: int,
    pad_id: int,
    checkpoints: CheckpointStore | None,
    quantized: bool,
    on_step: Callable[[int], None] | None = None,
    progress: Any = None,
    world: World | None = None,
) -> TrainOutcome:
    """Train the model's trainable parameters in place (a LoRA adapter, or every weight for full
    fine-tuning); resumes from `checkpoints` when one exists. `examples` are `Example`s (next-token loss on
    the answer) or, for objective preference, `preference.PairExample`s (DPO + NLL, see preference.py).

    `on_step(step)` runs after each optimizer step (and its checkpoint): a seam for tests to simulate a
    preemption at a known step. `world`: this process's rank in a data-parallel run."""
    import torch

    world = world or World()
    if not examples:
        raise TrainingDataError("no training examples (all rows empty or truncated away)")
    device = next(p for p in model.parameters()).device
    if device.type == "cuda":
        enable_tf32()
    all_steps = total_steps(len(examples), knobs, world.size)
    steps_per_epoch = all_steps // knobs.epochs
    micro_per_step = knobs.gradient_accumulation * world.size
    pairs = knobs.objective == "preference"
    if pairs and not hasattr(model, "disable_adapter"):
        raise TrainingDataError("objective preference needs a LoRA adapter (its reference is the base model)")
    lengths = [e.length if pairs else len(e.input_ids) for e in examples]
    trainable = [p for p in model.parameters() if p.requires_grad]
    broadcast_parameters(trainable, world)
    optimizer = make_optimizer(trainable, knobs.learning_rate, paged=quantized and device.type == "cuda")
    scheduler = make_scheduler(optimizer, all_steps, knobs.warmup_ratio)

    fingerprint = resume_fingerprint(examples, knobs, seed)
    step, losses, resumed_from = 0, [], None
    pointer = checkpoints.latest() if checkpoints else None
    if pointer is not None and pointer.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: made for %s, this run is %s", pointer.get("uri"),
                    pointer.get("fingerprint"), fingerprint)
        pointer = None
    if pointer is not None and pointer.get("processes", 1) != world.size:
        # A step takes batch_size x accumulation examples per process: another process count is another schedule.
        log.warning("ignoring checkpoint %s: made by %s process(es), this run has %d", pointer.get("uri"),
                    pointer.get("processes", 1), world.size)
        pointer = None
    if pointer is not None and checkpoints is not None:
        state = checkpoints.load(model, pointer)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        step, losses, resumed_from = state["step"], state["losses"], state["step"]
        if world.rank:  # the checkpoint holds rank 0's RNG; other ranks draw their own dropout masks
            torch.manual_seed(derive_seed("rank", seed, world.rank, step))
        log.info("resumed from checkpoint %s at step %d of %d", pointer["uri"], step, all_steps)
    else:
        torch.manual_seed(derive_seed("rank", seed, world.rank, 0) if world.rank else seed)

    def checkpoint() -> None:
        if checkpoints is not None and world.is_writer:
            checkpoints.save(model, {
                "step": step, "losses": losses, "rng": _rng_state(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            }, fingerprint, world.size)

    model.train()
    tokens, started = 0, time.monotonic()
    if progress is not None:
        progress.update(step)
    for epoch in range(step // steps_per_epoch, knobs.epochs):
        steps = epoch_steps(lengths, knobs.batch_size, micro_per_step, seed, epoch)
        first_step = step - epoch * steps_per_epoch  # > 0 only in the epoch a resume lands in
        for step_in_epoch in range(first_step, steps_per_epoch):
            group = steps[step_in_epoch]
            # Weight micro-batches by their target tokens (pairs: by their pairs) so the step's loss is a mean
            # over the whole (global) batch, whichever rank computes which micro-batch.
            if pairs:
                counts = [len(b) for b in group]
            else:
                counts = [sum(lab != IGNORE_INDEX for i in b for lab in examples[i].labels) for b in group]
            total_targets = sum(counts)
            step_loss, step_tokens = 0.0, 0
            for batch, count in list(zip(group, counts, strict=True))[world.rank :: world.size]:
                with forward_precision(device):
                    loss, computed = _micro_batch_loss(model, [examples[i] for i in batch], knobs, pad_id, device)
                (loss * (count / total_targets)).backward()
                step_loss += loss.item() * count / total_targets
                step_tokens += computed
            step_loss, step_tokens = all_reduce_gradients(trainable, [step_loss, float(step_tokens)], world)
            tokens += int(step_tokens)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append({"step": step, "epoch": epoch + 1, "loss": round(step_loss, 6), "lr": lr})
            if progress is not None:
                progress.update(1)
            end_of_epoch = step_in_epoch == steps_per_epoch - 1
            if end_of_epoch or step % knobs.checkpoint_steps == 0:
                checkpoint()
            if on_step is not None:
                on_step(step)
    return TrainOutcome(
        steps=step,
        losses=losses,
        resumed_from_step=resumed_from,
        quantization="nf4" if quantized else "none",
        examples=len(examples),
        tokens=tokens,
        seconds=round(time.monotonic() - started, 3),
        extra={"totalSteps": all_steps, "stepsPerEpoch": steps_per_epoch},
    )
