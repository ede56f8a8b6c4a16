"""train stage: QLoRA, LoRA or full fine-tuning on the distilled chat data; writes `adapter/` (for full
fine-tuning: a whole model there, with its tokenizer) and `loss.json`.

QLoRA (4-bit NF4 base + LoRA) runs wherever bitsandbytes supports the device, CPU included; plain LoRA only
where it does not, and the result says which ran. Resumes from the latest checkpoint under
`<output>/checkpoints/` (a preempted pod loses at most `checkpointSteps` optimizer steps). Continues from
`initAdapterUri` when given (1B.2 from 1B.1). Under torchrun (params.processes > 1, see engines/distributed.py)
each rank trains on its share of every step and rank 0 alone writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from consistency_core.spec import LoraConfig
from consistency_core.stage_wire import TRAIN_ADAPTER, StageConfig, StageResult, TrainParams

from consistency_worker.engines.checkpoints import CHECKPOINTS, CheckpointStore
from consistency_worker.engines.distributed import (
    World,
    current_world,
    destroy_process_group,
    init_process_group,
    rank_zero_first,
)
from consistency_worker.engines.model_loading import (
    ModelError,
    ResolvedModel,
    bnb_4bit_unsupported,
    cuda_available,
    fetch_adapter,
    is_full_model,
    load_model,
    load_tokenizer,
    resolve_model,
    with_trained,
)
from consistency_worker.engines.training import TrainingDataError, build_examples, total_steps, train_lora, wrap_lora
from consistency_worker.job.context import StageContext
from consistency_worker.stages import PermanentStageError
from consistency_worker.store.jsonl import JsonlError, parse_jsonl_objects

LOSS_FILE = "loss.json"
METHOD_LABELS = {
    "qlora": "QLoRA (4-bit NF4 base with double quantisation, bf16 compute)",
    "lora": "LoRA (full-precision base)",
    "full": "full fine-tuning (every weight)",
}

# Test seam: called with the step number after every optimizer step (to simulate a preemption).
on_step_hook: Callable[[int], None] | None = None


def choose_method(requested: str, device: str) -> tuple[str, str | None]:
    """(method that runs, why it is not the requested one). qlora means "4-bit where supported": it falls
    back to plain LoRA only when bitsandbytes cannot run NF4 layers on this device."""
    if requested != "qlora":
        return requested, None
    why = bnb_4bit_unsupported(device)
    return ("qlora", None) if why is None else ("lora", why)


def _device(world: World) -> str:
    if not cuda_available():
        return "cpu"
    import torch

    torch.cuda.set_device(world.local_rank)  # one GPU per torchrun process
    return f"cuda:{world.local_rank}"


def _non_reentrant_checkpointing(model: Any) -> None:
    # Non-reentrant checkpointing needs no inputs that require grad and works with frozen embeddings.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def build_model(model_ref: ResolvedModel, method: str, device: str, init_dir: Path | None, lora: LoraConfig
                ) -> Any:
    """The model to train, its trainable parameters set: LoRA on a 4-bit or full-precision base (fresh,
    or continuing `init_dir`), or every weight of the (possibly earlier fine-tuned) model."""
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        base = load_model(model_ref, device=device, quantize_4bit=True)
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
        return wrap_lora(base, lora, init_adapter_dir=init_dir)
    if method == "lora":
        base = load_model(model_ref, device=device)
        if device.startswith("cuda"):
            _non_reentrant_checkpointing(base)
        return wrap_lora(base, lora, init_adapter_dir=init_dir)
    # Full fine-tuning keeps fp32 master weights (bf16 AdamW updates would round away small steps); the
    # forward still runs in bf16 under autocast on CUDA.
    model = load_model(model_ref, device=device, dtype="float32")
    if init_dir is not None:  # 1B.1 trained an adapter: fold it in, then train every weight
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(init_dir)).merge_and_unload()
    model.requires_grad_(True)
    if device.startswith("cuda"):
        _non_reentrant_checkpointing(model)
    return model


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, TrainParams):
        raise PermanentStageError(f"train stage got params of kind {params.kind!r}")
    knobs = params.training
    world = current_world()
    device = _device(world)
    init_process_group(world, device.split(":")[0])
    if params.processes != world.size:
        ctx.logger.warning("params.processes=%d but this run has %d process(es) (not started by torchrun?)",
                           params.processes, world.size)
    method, fallback = choose_method(knobs.method, device)
    if fallback:
        ctx.logger.warning("method qlora: %s; training plain LoRA on the full-precision base instead", fallback)
    ctx.logger.info("training method: %s on %s (%d process(es))", METHOD_LABELS[method], device, world.size)

    data = ctx.store.read_bytes(params.data_uri)
    ctx.manifest.add_input("data", params.data_uri, data=data)
    with ctx.manifest.timed("load"):
        init_dir = None
        with rank_zero_first(world):  # one download into a model cache the ranks may share
            model_ref = resolve_model(config.model, ctx.store, ctx.cache_dir)
            if params.init_adapter_uri:
                ctx.manifest.add_input("initAdapter", params.init_adapter_uri)
                try:
                    init_dir = fetch_adapter(params.init_adapter_uri, ctx.store, ctx.cache_dir)
                except ModelError as exc:
                    raise PermanentStageError(str(exc)) from None
        if init_dir is not None and is_full_model(init_dir):
            if method != "full":
                raise PermanentStageError(
                    f"params.initAdapterUri {params.init_adapter_uri} is a fully fine-tuned model: continue "
                    "it with method full (an adapter on it would be served on the original base)")
            model_ref, init_dir = with_trained(model_ref, init_dir)
        tokenizer = load_tokenizer(model_ref)
        try:
            # Parse the bytes already read for the manifest: one download of the data, not two.
            rows = parse_jsonl_objects(data.decode("utf-8"), params.data_uri)
            if knobs.objective == "preference":
                from consistency_worker.engines.preference import build_pairs

                examples, dropped = build_pairs(tokenizer, rows, knobs.max_seq_len, source=params.data_uri)
            else:
                examples, dropped = build_examples(tokenizer, rows, knobs.max_seq_len, source=params.data_uri)
        except (JsonlError, TrainingDataError) as exc:
            raise PermanentStageError(str(exc)) from None
        if not examples:
            what = "preference pairs" if knobs.objective == "preference" else "training examples"
            raise PermanentStageError(f"{params.data_uri}: no usable {what} ({len(rows)} rows)")
        import torch

        torch.manual_seed(config.seed)
        model = build_model(model_ref, method, device, init_dir, knobs.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Evidence of what actually runs, not what was asked: the base's linear layers held in 4 bits.
    layers_4bit = sum(type(m).__module__.startswith("bitsandbytes") and type(m).__name__ == "Linear4bit"
                      for m in model.modules())
    ctx.logger.info("%d examples (%d dropped: prompt longer than maxSeqLen), %d trainable parameters",
                    len(examples), dropped, trainable)

    checkpoints = CheckpointStore(ctx.store, ctx.output(CHECKPOINTS), Path(ctx.scratch_dir) / "checkpoints")
    steps = total_steps(len(examples), knobs, world.size)
    with ctx.manifest.timed("train"), ctx.progress(steps, "train steps") as progress:
        outcome = train_lora(model, examples, knobs, seed=config.seed, pad_id=tokenizer.pad_token_id,
                             checkpoints=checkpoints,
                             quantized=method == "qlora", on_step=on_step_hook,
                             progress=progress if world.is_writer else None, world=world)
    destroy_process_group()  # the ranks' last collective was the final step's all-reduce

    quantization = "nf4" if method == "qlora" else "none"
    metrics: dict[str, Any] = {
        "steps": outcome.steps,
        "finalLoss": outcome.final_loss,
        "method": method,
        "quantization": quantization,
        "device": device.split(":")[0],
        "processes": world.size,
        "layers4bit": layers_4bit,
        "examples": outcome.examples,
        "objective": knobs.objective,
        "dropped": dropped,
        "tokens": outcome.tokens,
    }
    if fallback:
        metrics["methodFallback"] = fallback[:300]
    if outcome.resumed_from_step is not None:
        metrics["resumedFromStep"] = outcome.resumed_from_step
    first = outcome.losses[0]["loss"] if outcome.losses else None
    objective = " (consistency preference: DPO + NLL)" if knobs.objective == "preference" else ""
    message = f"{METHOD_LABELS[method]}{objective}: {outcome.steps} steps, loss {first} -> {outcome.final_loss}"
    if not world.is_writer:  # rank 0 writes the outputs and reports; run_stage skips the rest here
        return StageResult(key=config.key, ok=True, message=message, metrics=metrics)

    adapter_local = Path(ctx.scratch_dir) / TRAIN_ADAPTER
    model.save_pretrained(str(adapter_local))
    if method == "full":  # a whole model: the tokenizer goes with it so it loads on its own
        tokenizer.save_pretrained(str(adapter_local))
    adapter_uri = ctx.output(TRAIN_ADAPTER)
    with ctx.manifest.timed("upload"):
        ctx.store.upload_dir(adapter_local, adapter_uri)
    ctx.manifest.add_output("adapter", adapter_uri, path=adapter_local)
    loss_uri = ctx.output(LOSS_FILE)
    ctx.store.write_json(loss_uri, {"steps": outcome.losses, **outcome.extra})
    ctx.manifest.add_output("loss", loss_uri)
    ctx.manifest.extra.update(method=METHOD_LABELS[method], methodRequested=knobs.method, quantization=quantization,
                              device=device, processes=world.size, trainableParameters=trainable,
                              resumedFromStep=outcome.resumed_from_step, tokens=outcome.tokens,
                              trainSeconds=outcome.seconds)
    return StageResult(
        key=config.key,
        ok=True,
        message=message,
        metrics=metrics,
        outputs={"adapter": adapter_uri, "loss": loss_uri},
    )
