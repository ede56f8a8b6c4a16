"""Answering problems with a generation backend: per problem one greedy answer (temperature 0) and k
seeded samples, each graded, in resumable chunks under a stage's output directory.

The generate and evaluate stages both answer through `generate_records`, so they sample and grade the same
way. Seeds are per problem (`problem_seed`), so a problem gets the same answers whatever its shard, batch
or chunk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from consistency_core.spec import SamplingKnobs
from consistency_core.stages import StageConfig, join_uri

from consistency_worker.backends import GenerationBackend, open_backend, select_backend
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
from consistency_worker.seeds import derive_seed
from consistency_worker.stages.context import StageContext

ENV_CHUNK = "CONSISTENCY_GENERATE_CHUNK"  # problems per resumable chunk
ENV_BATCH_ROWS = "CONSISTENCY_HF_BATCH_ROWS"  # sequences per forward pass of the hf backend
DEFAULT_CHUNK = {"hf": 16, "vllm": 512}
CODE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SamplingSettings:
    """The spec's sampling section plus what the stage adds: the campaign seed and the sandbox limit."""

    sampling: SamplingKnobs
    seed: int
    code_timeout_s: float = CODE_TIMEOUT_S  # wall-clock limit of one sandboxed test run


def problem_seed(seed: int, problem_id: str) -> int:
    """A problem's sampling seed: independent of shard, batch and chunk, so reruns reproduce it."""
    return derive_seed("problem", seed, problem_id)


def load_backend(config: StageConfig, ctx: StageContext, adapter_uri: str | None) -> GenerationBackend:
    """The configured engine with the base model (+ adapter), fetched from the store as needed."""
    model = resolve_model(config.model, ctx.store, ctx.cache_dir)
    adapter = fetch_adapter(adapter_uri, ctx.store, ctx.cache_dir) if adapter_uri else None
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
    sampling = settings.sampling
    greedy = backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=sampling.max_new_tokens, seeds=seeds)
    if sampling.temperature <= 0.0:
        # Temperature 0 sampling is greedy decoding: reuse the greedy text instead of decoding k more times.
        samples = [g * sampling.samples for g in greedy]
    else:
        samples = backend.generate(prompts, n=sampling.samples, temperature=sampling.temperature,
                                   max_new_tokens=sampling.max_new_tokens, seeds=seeds)
    pairs = []
    for problem, g, s in zip(problems, greedy, samples, strict=True):
        pairs.append((problem, g[0]))
        pairs.extend((problem, text) for text in s)
    grades = grade_many(pairs, timeout_s=settings.code_timeout_s)
    records = []
    per_problem = 1 + sampling.samples
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
