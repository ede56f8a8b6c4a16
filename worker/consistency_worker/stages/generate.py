"""generate stage: per problem one greedy answer (temperature 0) and k seeded samples, each graded.

Sharding: shard i of n takes problems i, i+n, i+2n, ... of the problems file (a deterministic slice that
spreads strata evenly). Resume: finished problems are written in chunk files under `parts/`; a rerun reads
them and answers only the rest, then writes the shard file `generations-{i}-of-{n}.jsonl` in one piece.
How a problem is answered and graded lives in engines/answering.py (the evaluate stage answers through it too).
"""

from __future__ import annotations

from collections.abc import Sequence

from consistency_core.stage_wire import GenerateParams, StageConfig, StageResult

from consistency_worker.data.problems import Problem
from consistency_worker.engines.answering import SamplingSettings, completion_metrics, generate_records, load_backend
from consistency_worker.grading.code import code_grading_metrics
from consistency_worker.job.context import StageContext
from consistency_worker.stages import PermanentStageError


def shard_slice(problems: Sequence[Problem], index: int, count: int) -> list[Problem]:
    return list(problems[index::count])


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, GenerateParams):
        raise PermanentStageError(f"generate stage got params of kind {params.kind!r}")
    problems = ctx.read_problems(params.problems_uri)
    mine = shard_slice(problems, ctx.shard_index, ctx.shard_count)
    ctx.logger.info("shard %d/%d: %d of %d problems", ctx.shard_index, ctx.shard_count, len(mine), len(problems))
    settings = SamplingSettings(params.sampling, config.seed)
    if params.adapter_uri:
        ctx.manifest.add_input("adapter", params.adapter_uri)
    with ctx.manifest.timed("load"):
        backend = load_backend(config, ctx, params.adapter_uri)
    try:
        with ctx.manifest.timed("generate"):
            records, shard_uri = generate_records(ctx, backend, mine, settings, shard_index=ctx.shard_index,
                                                  shard_count=ctx.shard_count)
    finally:
        backend.close()
    ctx.manifest.extra.update(backend=backend.name, model=config.model.uri)
    metrics = {**completion_metrics(records), "shard": ctx.shard_index, "shards": ctx.shard_count,
               "backend": backend.name}
    grading = code_grading_metrics(mine)
    if grading:
        ctx.logger.info("code grading: %d problems with untrusted tests, sandbox layers %s",
                        grading["testsUntrusted"], ", ".join(grading["sandboxLayers"]))
        metrics.update(grading)
    return StageResult(
        key=config.key,
        ok=True,
        message=f"{len(records)} problems x (1 greedy + {params.sampling.samples} samples) on {backend.name}",
        metrics=metrics,
        outputs={"generations": config.output_uri, "shard": shard_uri},
    )
