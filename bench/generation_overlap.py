"""Benchmark of the answering loop on CPU: grading chunk i on a thread while chunk i+1 generates (the stage's
loop, `answering.generate_records`) against generating and grading each chunk in turn (the loop before), on
the same problems, backend and seeds, in one run. Code problems, so grading runs every answer in the sandbox.

    python bench/generation_overlap.py [--problems 32] [--chunk 4] [--samples 5] [--max-new-tokens 32]

Figures: seconds of each loop, their ratio, the share of answers that hit maxNewTokens, and a check that
both loops produced the same records.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("core", "worker"):
    sys.path.insert(0, str(REPO / _sub))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, seconds: what make test runs so that a benchmark that no longer runs fails")
    args = parser.parse_args()
    if args.quick:
        args.problems, args.chunk, args.samples, args.max_new_tokens = 4, 2, 2, 8

    import os

    os.environ["CONSISTENCY_GENERATE_CHUNK"] = str(args.chunk)
    from consistency_core.spec import ModelRef, SamplingKnobs
    from consistency_core.stage_wire import StageConfig
    from consistency_testkit.tinymodel import build_tiny_model
    from consistency_worker.data.problems import Problem
    from consistency_worker.engines import answering
    from consistency_worker.engines.backends.hf import HFBackend
    from consistency_worker.engines.model_loading import resolve_model
    from consistency_worker.job.context import StageContext
    from consistency_worker.store.facade import open_store

    tmp = Path(tempfile.mkdtemp(prefix="overlap-"))
    model_dir = build_tiny_model(tmp / "model", seed=0)
    backend = HFBackend(resolve_model(ModelRef(uri=str(model_dir))))
    problems = [Problem(id=f"c{i}", domain="code", prompt=f"Write a function f(x) returning x + {i}.",
                        tests=f"assert f(1) == {1 + i}", entry_point="f") for i in range(args.problems)]
    sampling = SamplingKnobs(samples=args.samples, temperature=0.8, max_new_tokens=args.max_new_tokens)
    settings = answering.SamplingSettings(sampling, seed=1)
    answering.answer_problems(backend, problems[:1], settings)  # warm up: sandbox hosts, first forward pass

    start = time.perf_counter()
    before = []
    for at in range(0, len(problems), args.chunk):
        before += answering.answer_problems(backend, problems[at : at + args.chunk], settings)
    sequential_s = time.perf_counter() - start

    config = StageConfig.model_validate({
        "campaign": "bench", "key": "overlap", "stage": "generate", "phase": "1B.1", "iteration": 1, "seed": 1,
        "store": {"uri": str(tmp / "store")}, "outputUri": str(tmp / "store" / "overlap"),
        "model": {"uri": str(model_dir)}, "backend": "hf",
        "params": {"kind": "generate", "problemsUri": str(tmp / "p.jsonl"), "sampling": sampling.to_wire(),
                   "shards": 1, "tensorParallelSize": 1},
    })
    ctx = StageContext.create(config, store=open_store(config.store), shard=None, scratch_dir=tmp / "scratch")
    start = time.perf_counter()
    after, _ = answering.generate_records(ctx, backend, problems, settings)
    pipelined_s = time.perf_counter() - start

    answers = len(problems) * (1 + args.samples)
    print(f"{len(problems)} code problems x (1 + {args.samples}) answers, chunks of {args.chunk}, "
          f"{args.max_new_tokens} new tokens, {os.cpu_count()} CPUs")
    print(f"generate then grade, chunk by chunk: {sequential_s:.2f}s ({answers / sequential_s:.1f} answers/s)")
    print(f"grading overlapped with generation:  {pipelined_s:.2f}s ({answers / pipelined_s:.1f} answers/s)")
    print(f"ratio: {sequential_s / pipelined_s:.2f}x")
    print(f"share of answers at maxNewTokens: {answering.truncated_share(after):.3f}")
    same = [r.model_dump() for r in before] == [r.model_dump() for r in after]
    print(f"same records from both loops: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
