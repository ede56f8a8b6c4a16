"""generate stage: per problem one greedy answer (temperature 0) and k seeded samples, each graded.

Sharding: shard i of n takes problems i, i+n, i+2n, ... of the problems file (a deterministic slice that
spreads strata evenly). Resume: finished problems are written in chunk files under `parts/`; a rerun reads
them and answers only the rest, then writes the shard file `generations-{i}-of-{n}.jsonl` in one piece.
The evaluate stage calls `generate_records` too, so both stages answer and grade the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consistency_core.stages import GenerateParams, StageConfig, StageResult, join_uri

from consistency_worker.backends import GenerationBackend, derive_seed, open_backend, select_backend
from consistency_worker.generations import (
    Completion,
    GenerationRecord,
    chunk_file_name,
    dump_records,
    parse_records,
    parts_dir,
    shard_file_name,
)
from consistency_worker.grading import Grade, grade_many
from consistency_worker.manifest import sha256_bytes
from consistency_worker.models import fetch_adapter, resolve_model, with_trained
from consistency_worker.problems import Problem
from consistency_worker.prompts import render_prompt
from consistency_worker.stages import PermanentStageError
from consistency_worker.stages.context import StageContext
from consistency_worker.store import Store

ENV_MODEL_CACHE = "CONSISTENCY_MODEL_CACHE"  # share downloaded models/adapters between stages of a pod
ENV_CHUNK = "CONSISTENCY_GENERATE_CHUNK"  # problems per resumable chunk
ENV_BATCH_ROWS = "CONSISTENCY_HF_BATCH_ROWS"  # sequences per forward pass of the hf backend
DEFAULT_CHUNK = {"hf": 16, "vllm": 512}
CODE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SamplingSettings:
    samples: int
    temperature: float
    max_new_tokens: int
    seed: int
    code_timeout_s: float = CODE_TIMEOUT_S  # wall-clock limit of one sandboxed test run


def problem_seed(seed: int, problem_id: str) -> int:
    """A problem's sampling seed: independent of shard, batch and chunk, so reruns reproduce it."""
    return derive_seed("problem", seed, problem_id)


def read_problems(store: Store, uri: str) -> list[Problem]:
    """Problems of a JSONL file; a bad line is a permanent error naming the file and line."""
    problems = []
    for lineno, line in enumerate(store.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            problems.append(Problem.from_jsonl(line))
        except ValueError as exc:
            raise PermanentStageError(f"{uri}:{lineno}: not a problem record: {exc}") from None
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise PermanentStageError(f"{uri}: duplicate problem id {p.id!r}")
        seen.add(p.id)
    return problems


def shard_slice(problems: Sequence[Problem], index: int, count: int) -> list[Problem]:
    return list(problems[index::count])


def cache_dir(ctx: StageContext) -> Path:
    return Path(os.environ.get(ENV_MODEL_CACHE) or ctx.scratch_dir)


def load_backend(config: StageConfig, ctx: StageContext, adapter_uri: str | None) -> GenerationBackend:
    """The configured engine with the base model (+ adapter), fetched from the store as needed."""
    model = resolve_model(config.model, ctx.store, cache_dir(ctx))
    adapter = fetch_adapter(adapter_uri, ctx.store, cache_dir(ctx)) if adapter_uri else None
    # A full fine-tuning output replaces the base model instead of going on top of it.
    model, adapter = with_trained(model, adapter)
    tp = getattr(config.params, "tensor_parallel_size", 1)
    rows = int(os.environ[ENV_BATCH_ROWS]) if os.environ.get(ENV_BATCH_ROWS) else None
    ctx.logger.info("backend %s (requested %s), model %s, adapter %s",
                    select_backend(config.backend), config.backend.value, model.describe(), adapter_uri or "none")
    return open_backend(config.backend, model, adapter_dir=adapter, tensor_parallel_size=tp,
                        seed=config.seed, max_batch_rows=rows)


def _completion(text: str, grade: Grade) -> Completion:
    return Completion(text=text, answer=grade.answer, correct=grade.correct)


def answer_problems(
    backend: GenerationBackend, problems: Sequence[Problem], settings: SamplingSettings
) -> list[GenerationRecord]:
    """Greedy + k samples for each problem, graded (code in parallel sandboxes)."""
    if not problems:
        return []
    prompts = [render_prompt(backend.tokenizer, p) for p in problems]
    seeds = [problem_seed(settings.seed, p.id) for p in problems]
    greedy = backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=settings.max_new_tokens, seeds=seeds)
    if settings.temperature <= 0.0:
        # Temperature 0 sampling is greedy decoding: reuse the greedy text instead of decoding k more times.
        samples = [g * settings.samples for g in greedy]
    else:
        samples = backend.generate(prompts, n=settings.samples, temperature=settings.temperature,
                                   max_new_tokens=settings.max_new_tokens, seeds=seeds)
    pairs = []
    for problem, g, s in zip(problems, greedy, samples, strict=True):
        pairs.append((problem, g[0]))
        pairs.extend((problem, text) for text in s)
    grades = grade_many(pairs, timeout_s=settings.code_timeout_s)
    records = []
    per_problem = 1 + settings.samples
    for i, problem in enumerate(problems):
        block = list(zip(pairs[i * per_problem : (i + 1) * per_problem],
                         grades[i * per_problem : (i + 1) * per_problem], strict=True))
        completions = [_completion(text, grade) for (_, text), grade in block]
        records.append(GenerationRecord(problem_id=problem.id, domain=problem.domain, stratum=problem.stratum,
                                        greedy=completions[0], samples=completions[1:]))
    return records


def generate_records(
    ctx: StageContext,
    backend: GenerationBackend,
    problems: Sequence[Problem],
    settings: SamplingSettings,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    desc: str = "generate",
) -> tuple[list[GenerationRecord], str]:
    """Answer `problems` in resumable chunks under the stage's output dir; write and return the shard file.

    Returns the records in problem order and the shard file's URI."""
    out = ctx.config.output_uri
    shard_uri = join_uri(out, shard_file_name(shard_index, shard_count))
    parts = parts_dir(out, shard_index, shard_count)
    wanted = {p.id for p in problems}
    done: dict[str, GenerationRecord] = {}
    chunk_uris = ctx.store.list(parts) if ctx.store.exists(parts) else []
    for uri in chunk_uris:
        for record in parse_records(ctx.store.read_text(uri), uri):
            if record.problem_id in wanted:
                done[record.problem_id] = record
    if done:
        ctx.logger.info("resuming: %d of %d problems already answered in %s", len(done), len(problems), parts)
    todo = [p for p in problems if p.id not in done]
    env_chunk = os.environ.get(ENV_CHUNK)
    chunk = int(env_chunk) if env_chunk else DEFAULT_CHUNK.get(backend.name, 16)
    next_chunk = len(chunk_uris)
    with ctx.progress(len(problems), desc) as progress:
        progress.update(len(done))
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            records = answer_problems(backend, batch, settings)
            # Each chunk lands whole (atomic write), so a preempted pod loses at most one chunk of work.
            ctx.store.write_bytes(join_uri(parts, chunk_file_name(next_chunk)), dump_records(records))
            next_chunk += 1
            done.update((r.problem_id, r) for r in records)
            progress.update(len(batch))
    ordered = [done[p.id] for p in problems]
    data = dump_records(ordered)
    ctx.store.write_bytes(shard_uri, data)
    # Name this shard's file explicitly: hashing the whole directory would read every other shard too.
    ctx.manifest.outputs["generations"] = {
        "uri": out, "files": {shard_file_name(shard_index, shard_count): sha256_bytes(data)},
    }
    return ordered, shard_uri


def completion_metrics(records: Sequence[GenerationRecord]) -> dict[str, float | int]:
    completions = sum(1 + len(r.samples) for r in records)
    graded = [r.greedy.correct for r in records if r.greedy.correct is not None]
    metrics: dict[str, float | int] = {"problems": len(records), "completions": completions}
    if graded:
        metrics["greedyAccuracy"] = round(sum(graded) / len(graded), 4)
    return metrics


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, GenerateParams):
        raise PermanentStageError(f"generate stage got params of kind {params.kind!r}")
    problems_data = ctx.store.read_bytes(params.problems_uri)
    ctx.manifest.add_input("problems", params.problems_uri, data=problems_data)
    problems = read_problems(ctx.store, params.problems_uri)
    mine = shard_slice(problems, ctx.shard_index, ctx.shard_count)
    ctx.logger.info("shard %d/%d: %d of %d problems", ctx.shard_index, ctx.shard_count, len(mine), len(problems))
    settings = SamplingSettings(params.samples, params.temperature, params.max_new_tokens, config.seed)
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
    return StageResult(
        key=config.key,
        ok=True,
        message=f"{len(records)} problems x (1 greedy + {params.samples} samples) on {backend.name}",
        metrics=metrics,
        outputs={"generations": config.output_uri, "shard": shard_uri},
    )
