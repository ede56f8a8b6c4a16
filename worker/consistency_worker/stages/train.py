"""train stage: LoRA (CPU) or QLoRA (CUDA) on the distilled chat data; writes `adapter/` and `loss.json`.

Resumes from the latest checkpoint under `<output>/checkpoints/` (a preempted pod loses at most
`checkpointSteps` optimizer steps). Continues from `initAdapterUri` when given (1B.2 from 1B.1).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from consistency_core.stages import TRAIN_ADAPTER, StageConfig, StageResult, TrainParams

from consistency_worker.models import cuda_available, fetch_adapter, load_model, load_tokenizer, resolve_model
from consistency_worker.stages import PermanentStageError
from consistency_worker.stages.context import StageContext
from consistency_worker.store import JsonlError, parse_jsonl_objects
from consistency_worker.training import (
    CHECKPOINTS,
    CheckpointStore,
    TrainingDataError,
    build_examples,
    total_steps,
    train_lora,
    wrap_lora,
)

LOSS_FILE = "loss.json"

# Test seam: called with the step number after every optimizer step (to simulate a preemption).
on_step_hook: Callable[[int], None] | None = None


def choose_quantization(requested: str) -> str:
    """`auto`: NF4 (QLoRA) with CUDA, none (plain LoRA) without; nf4 without CUDA is a config error."""
    has_cuda = cuda_available()
    if requested == "auto":
        return "nf4" if has_cuda else "none"
    if requested == "nf4" and not has_cuda:
        raise PermanentStageError("params.quantization=nf4 needs a CUDA device (bitsandbytes 4-bit); none found")
    return requested


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, TrainParams):
        raise PermanentStageError(f"train stage got params of kind {params.kind!r}")
    knobs = params.training
    quantization = choose_quantization(params.quantization)
    device = "cuda" if cuda_available() else "cpu"
    if quantization == "nf4":
        method = "QLoRA (4-bit NF4 base, bf16 compute)"
    else:
        method = f"LoRA (full-precision base, {device})"
    ctx.logger.info("training method: %s", method)
    if quantization == "none" and not cuda_available():
        ctx.logger.warning("no CUDA device: plain LoRA on CPU instead of QLoRA (expect it to be slow)")

    data = ctx.store.read_bytes(params.data_uri)
    ctx.manifest.add_input("data", params.data_uri, data=data)
    model_ref = resolve_model(config.model, ctx.store, ctx.cache_dir)
    with ctx.manifest.timed("load"):
        tokenizer = load_tokenizer(model_ref)
        try:
            # Parse the bytes already read for the manifest: one download of the data, not two.
            rows = parse_jsonl_objects(data.decode("utf-8"), params.data_uri)
            examples, dropped = build_examples(tokenizer, rows, knobs.max_seq_len, source=params.data_uri)
        except (JsonlError, TrainingDataError) as exc:
            raise PermanentStageError(str(exc)) from None
        if not examples:
            raise PermanentStageError(f"{params.data_uri}: no usable training examples ({len(rows)} rows)")
        init_adapter = None
        if params.init_adapter_uri:
            ctx.manifest.add_input("initAdapter", params.init_adapter_uri)
            init_adapter = fetch_adapter(params.init_adapter_uri, ctx.store, ctx.cache_dir)
        import torch

        torch.manual_seed(config.seed)
        base = load_model(model_ref, device=device, quantize_4bit=quantization == "nf4")
        if quantization == "nf4":
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
        model = wrap_lora(base, knobs.lora, init_adapter_dir=init_adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ctx.logger.info("%d examples (%d dropped: prompt longer than maxSeqLen), %d trainable parameters",
                    len(examples), dropped, trainable)

    checkpoints = CheckpointStore(ctx.store, ctx.output(CHECKPOINTS), Path(ctx.scratch_dir) / "checkpoints")
    steps = total_steps(len(examples), knobs)
    with ctx.manifest.timed("train"), ctx.progress(steps, "train steps") as progress:
        outcome = train_lora(model, examples, knobs, seed=config.seed, pad_id=tokenizer.pad_token_id,
                             checkpoints=checkpoints,
                             quantized=quantization == "nf4", on_step=on_step_hook, progress=progress)

    adapter_local = Path(ctx.scratch_dir) / TRAIN_ADAPTER
    model.save_pretrained(str(adapter_local))
    adapter_uri = ctx.output(TRAIN_ADAPTER)
    with ctx.manifest.timed("upload"):
        ctx.store.upload_dir(adapter_local, adapter_uri)
    ctx.manifest.add_output("adapter", adapter_uri, path=adapter_local)
    loss_uri = ctx.output(LOSS_FILE)
    ctx.store.write_json(loss_uri, {"steps": outcome.losses, **outcome.extra})
    ctx.manifest.add_output("loss", loss_uri)
    ctx.manifest.extra.update(method=method, quantization=quantization, device=device,
                              trainableParameters=trainable, resumedFromStep=outcome.resumed_from_step,
                              tokens=outcome.tokens, trainSeconds=outcome.seconds)
    metrics = {
        "steps": outcome.steps,
        "finalLoss": outcome.final_loss,
        "quantization": quantization,
        "examples": outcome.examples,
        "dropped": dropped,
        "tokens": outcome.tokens,
    }
    if outcome.resumed_from_step is not None:
        metrics["resumedFromStep"] = outcome.resumed_from_step
    first = outcome.losses[0]["loss"] if outcome.losses else None
    return StageResult(
        key=config.key,
        ok=True,
        message=f"{method}: {outcome.steps} steps, loss {first} -> {outcome.final_loss}",
        metrics=metrics,
        outputs={"adapter": adapter_uri, "loss": loss_uri},
    )
