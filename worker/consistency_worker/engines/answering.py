"""Answering problems with a generation backend: per problem one greedy answer (temperature 0) and k
seeded samples, each graded, in resumable chunks under a stage's output directory.

The generate and evaluate stages both answer through `generate_records`, so they sample and grade the same
way. Seeds are per problem (`problem_seed`), so a problem gets the same answers whatever its shard, batch
or chunk (on vLLM with `sampling.seeding: engine`, only within the same run: see backends/vllm.py).

Per chunk, one engine call: `plan_requests` puts each problem's greedy request (n=1) and sampled request
(n=k) side by side. Grading overlaps generation: chunk i is graded (code in the sandbox) and written on a
grader thread while chunk i+1 generates, so the GPU does not idle during sandbox runs. At most one chunk
waits for grading, and chunks are written in order, so resume semantics are unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from consistency_core.spec import SamplingKnobs
from consistency_core.stage_wire import EvaluateParams, GenerateParams, StageConfig, join_uri

from consistency_worker.data.problems import Problem
from consistency_worker.data.prompts import render_prompt
from consistency_worker.engines.backends import (
    SEEDING_PER_SEQUENCE,
    Generated,
    GenerationBackend,
    GenerationRequest,
    open_backend,
    select_backend,
)
from consistency_worker.engines.model_loading import fetch_adapter, resolve_model, with_trained
from consistency_worker.grading.grade import Grade, grade_many
from consistency_worker.job.context import StageContext
from consistency_worker.runtime.seeds import derive_seed
from consistency_worker.store.generations import (
    Completion,
    GenerationRecord,
    chunk_file_name,
    dump_records,
    parse_records,
    parts_dir,
    shard_file_name,
)
from consistency_worker.store.manifest import sha256_bytes

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
    params = config.params
    # Read through the params' types: a misspelt attribute would silently give the default.
    tp, seeding = 1, SEEDING_PER_SEQUENCE
    if isinstance(params, GenerateParams | EvaluateParams):
        tp, seeding = params.tensor_parallel_size, params.sampling.seeding.value
    rows = int(os.environ[ENV_BATCH_ROWS]) if os.environ.get(ENV_BATCH_ROWS) else None
    ctx.logger.info("backend %s (requested %s), model %s, adapter %s, tensor parallel %d",
                    select_backend(config.backend), config.backend.value, model.describe(), adapter_uri or "none",
                    tp)
    return open_backend(config.backend, model, adapter_dir=adapter, tensor_parallel_size=tp,
                        seed=config.seed, max_batch_rows=rows, seeding=seeding)


def _completion(generated: Generated, grade: Grade) -> Completion:
    return Completion(text=generated.text, answer=grade.answer, correct=grade.correct, truncated=generated.hit_limit,
                      tokens=generated.tokens)


def count_tokens(tokenizer: object, generated: Generated, max_new_tokens: int) -> Generated:
    """The answer's generated tokens: the whole budget when it hit the limit (the engine spent it even where a
    stop string cut the text), else its text re-encoded. Backends report text only, so this one count serves
    hf and vLLM alike; the cost forecast learns the mean from it."""
    if generated.hit_limit:
        return replace(generated, tokens=max_new_tokens)
    ids = tokenizer.encode(generated.text, add_special_tokens=False)  # type: ignore[attr-defined]
    return replace(generated, tokens=min(len(ids), max_new_tokens))


@dataclass(frozen=True)
class GeneratedChunk:
    """A chunk's answers before grading: per problem the greedy answer and the k samples."""

    problems: list[Problem]
    greedy: list[Generated]
    samples: list[list[Generated]]


def plan_requests(prompts: Sequence[str], seeds: Sequence[int], sampling: SamplingKnobs) -> list[GenerationRequest]:
    """Per problem a greedy request (n=1) then, at a temperature above 0, a sampled one (n=k): one engine
    call serves both. At temperature 0 the samples would equal the greedy answer, so none are requested."""
    requests = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        requests.append(GenerationRequest(prompt, 1, 0.0, sampling.max_new_tokens, seed))
        if sampling.temperature > 0.0:
            requests.append(GenerationRequest(prompt, sampling.samples, sampling.temperature,
                                              sampling.max_new_tokens, seed))
    return requests


def generate_chunk(backend: GenerationBackend, problems: Sequence[Problem], settings: SamplingSettings
                   ) -> GeneratedChunk:
    """Greedy + k samples for each problem, in one engine call."""
    sampling = settings.sampling
    prompts = [render_prompt(backend.tokenizer, p) for p in problems]
    seeds = [problem_seed(settings.seed, p.id) for p in problems]
    outputs = backend.generate_requests(plan_requests(prompts, seeds, sampling)) if problems else []
    outputs = [[count_tokens(backend.tokenizer, g, sampling.max_new_tokens) for g in out] for out in outputs]
    if sampling.temperature > 0.0:
        greedy = [outputs[2 * i][0] for i in range(len(problems))]
        samples = [outputs[2 * i + 1] for i in range(len(problems))]
    else:
        # Temperature 0 sampling is greedy decoding: the samples are the greedy answer, k times.
        greedy = [out[0] for out in outputs]
        samples = [[g] * sampling.samples for g in greedy]
    return GeneratedChunk(list(problems), greedy, samples)


def grade_chunk(chunk: GeneratedChunk, settings: SamplingSettings) -> list[GenerationRecord]:
    """Grade every answer of a chunk (code in parallel sandboxes) into generation records."""
    pairs: list[tuple[Problem, Generated]] = []
    for problem, g, s in zip(chunk.problems, chunk.greedy, chunk.samples, strict=True):
        pairs.append((problem, g))
        pairs.extend((problem, x) for x in s)
    grades = grade_many([(p, g.text) for p, g in pairs], timeout_s=settings.code_timeout_s,
                        cut_off=[g.hit_limit for _, g in pairs])
    completions = [_completion(g, grade) for (_, g), grade in zip(pairs, grades, strict=True)]
    records, at = [], 0
    for problem, samples in zip(chunk.problems, chunk.samples, strict=True):
        block = completions[at : at + 1 + len(samples)]
        at += len(block)
        records.append(GenerationRecord(problem_id=problem.id, domain=problem.domain, stratum=problem.stratum,
                                        greedy=block[0], samples=block[1:]))
    return records


def answer_problems(
    backend: GenerationBackend, problems: Sequence[Problem], settings: SamplingSettings
) -> list[GenerationRecord]:
    """Greedy + k samples for each problem, graded (code in parallel sandboxes)."""
    if not problems:
        return []
    return grade_chunk(generate_chunk(backend, problems, settings), settings)


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

    def grade_and_write(generated: GeneratedChunk, number: int) -> list[GenerationRecord]:
        records = grade_chunk(generated, settings)
        # Each chunk lands whole (atomic write), so a preempted pod loses at most one chunk of work.
        ctx.store.write_bytes(join_uri(parts, chunk_file_name(number)), dump_records(records))
        return records

    def collect(pending: Future[list[GenerationRecord]]) -> None:
        records = pending.result()  # re-raises a grading or store error here, in the stage's thread
        done.update((r.problem_id, r) for r in records)
        progress.update(len(records))

    # Leaving the executor waits for the chunk being graded, also when generation fails: it still lands,
    # and a rerun resumes after it.
    with ctx.progress(len(problems), desc) as progress, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="grader") as grader:
        progress.update(len(done))
        pending: Future[list[GenerationRecord]] | None = None
        for start in range(0, len(todo), chunk):
            generated = generate_chunk(backend, todo[start : start + chunk], settings)
            if pending is not None:
                collect(pending)  # at most one chunk waits for grading, and chunks are written in order
            pending = grader.submit(grade_and_write, generated, next_chunk)
            next_chunk += 1
        if pending is not None:
            collect(pending)
    ordered = [done[p.id] for p in problems]
    data = dump_records(ordered)
    ctx.store.write_bytes(shard_uri, data)
    # Name this shard's file explicitly: hashing the whole directory would read every other shard too.
    ctx.manifest.outputs["generations"] = {
        "uri": out, "files": {shard_file_name(shard_index, shard_count): sha256_bytes(data)},
    }
    return ordered, shard_uri


def truncated_share(records: Sequence[GenerationRecord]) -> float:
    """Share of all answers (greedy and samples) that stopped at maxNewTokens: a high share means the budget
    cuts answers off before their final line, which grading then scores as wrong or unanswered."""
    answers = [c for r in records for c in (r.greedy, *r.samples)]
    return round(sum(c.truncated for c in answers) / len(answers), 4) if answers else 0.0


def token_metrics(records: Sequence[GenerationRecord]) -> dict[str, int]:
    """What the cost forecast learns from: generated tokens and the answers they were spent on (answers
    written before token counting existed are left out of both). Counts, so shards add up."""
    counted = [c.tokens for r in records for c in (r.greedy, *r.samples) if c.tokens is not None]
    return {"generatedTokens": sum(counted), "countedAnswers": len(counted)}


def completion_metrics(records: Sequence[GenerationRecord]) -> dict[str, float | int]:
    completions = sum(1 + len(r.samples) for r in records)
    graded = [r.greedy.correct for r in records if r.greedy.correct is not None]
    metrics: dict[str, float | int] = {"problems": len(records), "completions": completions,
                                       "maxNewTokensHitShare": truncated_share(records), **token_metrics(records)}
    if graded:
        metrics["greedyAccuracy"] = round(sum(graded) / len(graded), 4)
    return metrics
