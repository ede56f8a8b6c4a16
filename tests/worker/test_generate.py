"""The generate stage on a tiny real model: records, grading, determinism, shards, resume, real S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_core.spec import SamplingKnobs
from consistency_core.stage_wire import RESULT
from consistency_testkit.fixtures import (
    PROBLEMS,
    run,
    single_torch_thread,
    stage_config,
    tiny_model_dir,
    write_problems,
)
from consistency_worker.data.problems import Problem
from consistency_worker.engines import answering
from consistency_worker.engines.answering import SamplingSettings, answer_problems, plan_requests, truncated_share
from consistency_worker.engines.backends import Generated, GenerationRequest
from consistency_worker.stages import PermanentStageError
from consistency_worker.stages.generate import shard_slice
from consistency_worker.store.facade import open_store
from consistency_worker.store.generations import (
    Completion,
    GenerationRecord,
    GenerationsError,
    chunk_file_name,
    parts_dir,
    read_generations,
    shard_file_name,
)

pytest.importorskip("torch")

PARAMS = {"samples": 3, "temperature": 0.9, "maxNewTokens": 12}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


def gen_config(store: str, problems_uri: str, key: str = "gen", **params: object):
    return stage_config("generate", store, str(tiny_model_dir()), {"problemsUri": problems_uri, **PARAMS, **params},
                        key=key)


def texts(records: list[GenerationRecord]) -> dict[str, list[str]]:
    return {r.problem_id: [r.greedy.text] + [s.text for s in r.samples] for r in records}


def test_generate_writes_graded_records(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    problems = write_problems(tmp_path / "problems.jsonl")
    result = run(gen_config(store, str(problems)), tmp_path / "scratch")
    assert result.ok and result.metrics["problems"] == len(PROBLEMS)
    # The random tiny model rarely says <|im_end|> within 12 tokens: most answers run out of budget.
    records_on_disk = read_generations(open_store(store), f"{store}/gen")
    assert result.metrics["maxNewTokensHitShare"] == truncated_share(records_on_disk) > 0.5
    assert result.metrics["completions"] == len(PROBLEMS) * (1 + 3)
    assert result.metrics["backend"] == "hf"
    records = read_generations(open_store(store), f"{store}/gen")
    assert [r.problem_id for r in records] == [p.id for p in PROBLEMS]
    for record, problem in zip(records, PROBLEMS, strict=True):
        assert record.domain == problem.domain and record.stratum == problem.stratum
        assert len(record.samples) == 3
        # Every problem here has gold, so every completion is graded; a random model answers wrongly.
        assert all(c.correct is False for c in [record.greedy, *record.samples])
        if problem.domain == "code":
            # the code "answer" is a digest of its returned values: never "pass" here
            assert all(c.answer and c.answer != "pass" for c in record.samples)
    on_disk = json.loads((tmp_path / "store" / "gen" / shard_file_name(0, 1)).read_text().splitlines()[0])
    assert set(on_disk) == {"problemId", "domain", "stratum", "greedy", "samples"}
    assert set(on_disk["greedy"]) == {"text", "answer", "correct", "truncated", "tokens"}
    # Token counts for the cost forecast: a truncated answer spent its whole budget, the rest at most that.
    answers = [c for r in records for c in (r.greedy, *r.samples)]
    budget = PARAMS["maxNewTokens"]
    assert all(c.tokens == budget for c in answers if c.truncated)
    assert all(c.tokens is not None and 0 <= c.tokens <= budget for c in answers)
    assert result.metrics["countedAnswers"] == len(answers)
    assert result.metrics["generatedTokens"] == sum(c.tokens or 0 for c in answers) > 0
    manifest = json.loads((tmp_path / "store" / "gen" / "manifest.json").read_text())
    assert manifest["inputs"]["problems"]["sha256"]
    assert set(manifest["outputs"]["generations"]["files"]) == {shard_file_name(0, 1)}


def test_generate_is_deterministic_and_shards_merge_to_the_same(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store")
    problems = str(write_problems(tmp_path / "problems.jsonl"))
    run(gen_config(store, problems, key="one"), tmp_path / "s1")
    run(gen_config(store, problems, key="again"), tmp_path / "s2")
    # Shard 0 as `--shard 0/2`, shard 1 as pod 1 of an Indexed Job (JOB_COMPLETION_INDEX).
    first = run(gen_config(store, problems, key="sharded", shards=2), tmp_path / "sh0", shard="0/2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    second = run(gen_config(store, problems, key="sharded", shards=2), tmp_path / "sh1")
    assert [first.metrics["shard"], second.metrics["shard"]] == [0, 1]
    assert first.metrics["problems"] == second.metrics["problems"] == 2
    st = open_store(store)
    single = texts(read_generations(st, f"{store}/one"))
    assert single == texts(read_generations(st, f"{store}/again"))
    merged = read_generations(st, f"{store}/sharded")
    # Per-problem seeds: the shard a problem lands in does not change its samples.
    assert texts(merged) == single
    assert sorted(r.problem_id for r in merged) == sorted(p.id for p in PROBLEMS)
    assert (tmp_path / "store" / "sharded" / "result-00001-of-00002.json").is_file()

    (tmp_path / "store" / "sharded" / shard_file_name(1, 2)).unlink()
    with pytest.raises(GenerationsError, match=r"1 of 2 shard\(s\) missing: generations-00001-of-00002\.jsonl"):
        read_generations(st, f"{store}/sharded")


def test_generate_resumes_from_finished_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSISTENCY_GENERATE_CHUNK", "1")
    store = str(tmp_path / "store")
    problems = str(write_problems(tmp_path / "problems.jsonl"))
    run(gen_config(store, problems, key="full"), tmp_path / "s1")
    full_parts = Path(parts_dir(f"{store}/full", 0, 1))
    assert len(list(full_parts.glob("chunk-*.jsonl"))) == len(PROBLEMS)

    # A pod preempted after two chunks: their files exist, the shard file and result do not. Mark one
    # finished answer so the test can see it was reused rather than recomputed.
    resumed_parts = Path(parts_dir(f"{store}/resumed", 0, 1))
    resumed_parts.mkdir(parents=True)
    for n in range(2):
        record = GenerationRecord.from_json_line((full_parts / chunk_file_name(n)).read_text())
        if n == 0:
            record.greedy.text = "answered before the preemption"
        (resumed_parts / chunk_file_name(n)).write_text(record.to_json_line() + "\n")
    result = run(gen_config(store, problems, key="resumed"), tmp_path / "s2")
    assert result.ok
    records = texts(read_generations(open_store(store), f"{store}/resumed"))
    full = texts(read_generations(open_store(store), f"{store}/full"))
    assert records[PROBLEMS[0].id][0] == "answered before the preemption"
    assert {k: v for k, v in records.items() if k != PROBLEMS[0].id} == {
        k: v for k, v in full.items() if k != PROBLEMS[0].id
    }
    assert len(list(resumed_parts.glob("chunk-*.jsonl"))) == len(PROBLEMS)


def test_finished_generate_is_not_rerun(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    problems = str(write_problems(tmp_path / "problems.jsonl"))
    first = run(gen_config(store, problems), tmp_path / "s1")
    shard = tmp_path / "store" / "gen" / shard_file_name(0, 1)
    result = tmp_path / "store" / "gen" / RESULT
    before = (shard.stat().st_mtime_ns, result.stat().st_mtime_ns)
    second = run(gen_config(store, problems), tmp_path / "s2")
    # Outputs that match the manifest: the result is reused and nothing is rewritten.
    assert second.metrics == first.metrics
    assert (shard.stat().st_mtime_ns, result.stat().st_mtime_ns) == before


def test_finished_generate_with_a_damaged_output_runs_again(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    problems = str(write_problems(tmp_path / "problems.jsonl"))
    first = run(gen_config(store, problems), tmp_path / "s1")
    shard = tmp_path / "store" / "gen" / shard_file_name(0, 1)
    good = shard.read_text()
    lines = good.splitlines(keepends=True)
    shard.write_text("".join(lines[:-1]))  # truncated on a line boundary: still valid JSONL
    second = run(gen_config(store, problems), tmp_path / "s2")
    assert second.metrics == first.metrics and shard.read_text() == good  # rewritten, not reused


def test_generate_on_s3_store(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    problems_uri = f"{s3_bucket}/inputs/problems.jsonl"
    store.write_text(problems_uri, "".join(p.to_jsonl() + "\n" for p in PROBLEMS[:2]))
    result = run(gen_config(s3_bucket, problems_uri, samples=2), tmp_path / "s")
    assert result.ok and result.metrics["problems"] == 2
    records = read_generations(store, f"{s3_bucket}/gen")
    assert [len(r.samples) for r in records] == [2, 2]
    assert store.is_file(f"{s3_bucket}/gen/{RESULT}")


def test_bad_problem_row_names_the_line(tmp_path: Path) -> None:
    path = write_problems(tmp_path / "problems.jsonl")
    path.write_text(path.read_text() + '{"id": "x", "domain": "math", "prompt": "no answer"}\n')
    with pytest.raises(PermanentStageError, match=r"problems\.jsonl:5: not a problem record"):
        run(gen_config(str(tmp_path / "store"), str(path)), tmp_path / "s")


class ScriptedBackend:
    """Stands in for a model whose answers the test chooses, to check grading of right answers."""

    name = "scripted"

    def __init__(self, tokenizer: object, answers: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.answers = answers

    def generate_requests(self, requests: list[GenerationRequest]) -> list[list[Generated]]:
        out = []
        for r in requests:
            texts = self.answers[next(k for k in self.answers if k in r.prompt)]
            chosen = [texts[0]] * r.n if r.greedy else texts[1 : 1 + r.n]
            out.append([Generated(t, hit_limit=t.endswith("...")) for t in chosen])
        return out

    def close(self) -> None:
        pass


def test_answers_are_graded_by_domain_including_sandboxed_code() -> None:
    from consistency_testkit.tinymodel import build_tokenizer

    problems = [p for p in PROBLEMS if p.id in ("m1", "c1", "r1")]
    backend = ScriptedBackend(build_tokenizer(), {
        "2 + 3": ["2 + 3 = 5\n#### 5", "#### 5", "#### 6"],
        "add(a, b)": ["```python\ndef add(a, b):\n    return a + b\n```",
                      "```python\ndef add(a, b):\n    return a - b\n```",
                      "```python\ndef add(a, b):\n    while True: pass\n```"],
        "mammal": ["Answer: B", "Answer: B", "Answer: C"],
    })
    records = answer_problems(backend, problems, SamplingSettings(
        SamplingKnobs(samples=2, temperature=0.7, max_new_tokens=8), seed=1, code_timeout_s=2.0))
    by_id = {r.problem_id: r for r in records}
    tokenizer = backend.tokenizer
    # Token counts are the answer re-encoded, capped at the budget (8 here).
    greedy_tokens = min(len(tokenizer.encode("2 + 3 = 5\n#### 5", add_special_tokens=False)), 8)
    assert by_id["m1"].greedy == Completion(text="2 + 3 = 5\n#### 5", answer="5", correct=True, tokens=greedy_tokens)
    assert greedy_tokens > 0
    assert [(s.answer, s.correct) for s in by_id["m1"].samples] == [("5", True), ("6", False)]
    assert (by_id["c1"].greedy.answer, by_id["c1"].greedy.correct) == ("pass", True)
    # A wrong program and one that never ends (killed by the sandbox timeout) both fail; their answers
    # say how: a digest of the values it returned, and a timeout.
    wrong, endless = by_id["c1"].samples
    assert (wrong.correct, endless.correct, endless.answer) == (False, False, "timeout")
    assert wrong.answer is not None and wrong.answer.startswith("v") and len(wrong.answer) == 17
    assert (by_id["r1"].greedy.answer, by_id["r1"].greedy.correct) == ("B", True)
    assert [s.correct for s in by_id["r1"].samples] == [True, False]


def test_plan_puts_greedy_and_samples_of_each_problem_in_one_call() -> None:
    sampling = SamplingKnobs(samples=4, temperature=0.8, max_new_tokens=16)
    assert plan_requests(["a", "b"], [1, 2], sampling) == [
        GenerationRequest("a", 1, 0.0, 16, 1), GenerationRequest("a", 4, 0.8, 16, 1),
        GenerationRequest("b", 1, 0.0, 16, 2), GenerationRequest("b", 4, 0.8, 16, 2)]
    # Temperature 0: the samples are the greedy answer; nothing more is decoded.
    cold = SamplingKnobs.model_construct(samples=4, temperature=0.0, max_new_tokens=16)  # below the spec floor
    assert plan_requests(["a"], [1], cold) == [GenerationRequest("a", 1, 0.0, 16, 1)]


def test_truncated_answers_are_recorded_and_counted() -> None:
    from consistency_testkit.tinymodel import build_tokenizer

    problems = [p for p in PROBLEMS if p.id == "m1"]
    backend = ScriptedBackend(build_tokenizer(), {"2 + 3": ["#### 5", "2 + 3 is...", "#### 5"]})
    records = answer_problems(backend, problems, SamplingSettings(
        SamplingKnobs(samples=2, temperature=0.7, max_new_tokens=8), seed=1))
    assert [c.truncated for c in (records[0].greedy, *records[0].samples)] == [False, True, False]
    assert truncated_share(records) == round(1 / 3, 4)


def test_chunk_is_graded_while_the_next_one_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grading of chunk 0 waits until generation of chunk 1 has started: only a pipelined loop gets past it
    (a sequential one would grade chunk 0 before generating chunk 1, and the wait would time out)."""
    import threading

    from consistency_testkit.tinymodel import build_tokenizer

    monkeypatch.setenv("CONSISTENCY_GENERATE_CHUNK", "1")
    second_started = threading.Event()
    graded_on: list[tuple[str, str, bool]] = []
    real_grade = answering.grade_chunk

    class Recording(ScriptedBackend):
        def generate_requests(self, requests: list[GenerationRequest]) -> list[list[Generated]]:
            if "Tom has" in requests[0].prompt:
                second_started.set()
            return super().generate_requests(requests)

    def grade(chunk: answering.GeneratedChunk, settings: SamplingSettings) -> list[GenerationRecord]:
        overlapped = chunk.problems[0].id != "m1" or second_started.wait(timeout=20)
        graded_on.append((chunk.problems[0].id, threading.current_thread().name, overlapped))
        return real_grade(chunk, settings)

    monkeypatch.setattr(answering, "grade_chunk", grade)
    backend = Recording(build_tokenizer(), {"2 + 3": ["#### 5", "#### 5", "#### 5"],
                                            "Tom has": ["#### 7", "#### 7", "#### 6..."]})
    config = gen_config(str(tmp_path / "store"), str(write_problems(tmp_path / "p.jsonl", PROBLEMS[:2])),
                        samples=2)
    from consistency_worker.job.context import StageContext

    ctx = StageContext.create(config, store=open_store(config.store), shard=None, scratch_dir=tmp_path / "s")
    records, _ = answering.generate_records(ctx, backend, PROBLEMS[:2], SamplingSettings(config.params.sampling,
                                                                                          seed=1))
    assert [(pid, ok) for pid, _, ok in graded_on] == [("m1", True), ("m2", True)]
    assert all(name.startswith("grader") for _, name, _ in graded_on)
    assert [r.problem_id for r in records] == ["m1", "m2"]
    assert [r.greedy.correct for r in records] == [True, True]
    assert truncated_share(records) == round(1 / 6, 4)


def test_generation_failure_keeps_the_chunk_being_graded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from consistency_testkit.tinymodel import build_tokenizer
    from consistency_worker.job.context import StageContext

    monkeypatch.setenv("CONSISTENCY_GENERATE_CHUNK", "1")

    class FailsOnSecond(ScriptedBackend):
        def generate_requests(self, requests: list[GenerationRequest]) -> list[list[Generated]]:
            if "Tom has" in requests[0].prompt:
                raise RuntimeError("CUDA error: device lost")
            return super().generate_requests(requests)

    config = gen_config(str(tmp_path / "store"), str(write_problems(tmp_path / "p.jsonl", PROBLEMS[:2])))
    ctx = StageContext.create(config, store=open_store(config.store), shard=None, scratch_dir=tmp_path / "s")
    backend = FailsOnSecond(build_tokenizer(), {"2 + 3": ["#### 5"] * 4, "Tom has": ["#### 7"] * 4})
    with pytest.raises(RuntimeError, match="device lost"):
        answering.generate_records(ctx, backend, PROBLEMS[:2], SamplingSettings(config.params.sampling, seed=1))
    parts = Path(parts_dir(config.output_uri, 0, 1))
    assert [f.name for f in parts.glob("chunk-*.jsonl")] == [chunk_file_name(0)]
    assert GenerationRecord.from_json_line((parts / chunk_file_name(0)).read_text()).problem_id == "m1"


def test_shard_slice_partitions_deterministically() -> None:
    problems = [Problem(id=f"p{i}", domain="math", prompt="q", answer="1") for i in range(10)]
    slices = [shard_slice(problems, i, 3) for i in range(3)]
    assert sorted(p.id for s in slices for p in s) == sorted(p.id for p in problems)
    assert [len(s) for s in slices] == [4, 3, 3]
    assert slices[1] == shard_slice(problems, 1, 3)


def test_temperature_zero_samples_are_copies_of_the_greedy_answer(tmp_path: Path) -> None:
    """Why spec and stage params refuse sampling temperatures below 0.05: on the real engine, samples at
    temperature 0 all repeat the greedy answer, so agreement is always 1 and the agreement filter cannot
    drop anything; at the default 0.7 they differ."""
    from consistency_core.spec import SamplingKnobs, SpecError, parse_spec
    from consistency_core.stage_wire import StageConfig
    from consistency_testkit.fixtures import stage_config
    from consistency_worker.engines.backends import open_backend
    from consistency_worker.engines.model_loading import resolve_model
    from consistency_worker.grading.voting import majority_vote
    from pydantic import ValidationError

    backend = open_backend("hf", resolve_model(StageConfig.model_validate(
        stage_config("generate", str(tmp_path), str(tiny_model_dir()), {"problemsUri": "x", **PARAMS}).to_wire()
    ).model))
    try:
        cold = SamplingKnobs.model_construct(samples=3, temperature=0.0, max_new_tokens=12)  # what 0 would do
        records = answer_problems(backend, PROBLEMS, SamplingSettings(cold, seed=1))
        assert all(set(t) == {t[0]} for t in texts(records).values())
        assert all(majority_vote([s.answer for s in r.samples]).agreement in (0.0, 1.0) for r in records)
        warm = answer_problems(backend, PROBLEMS, SamplingSettings(SamplingKnobs(samples=3, max_new_tokens=12), 1))
        assert any(len(set(t)) > 1 for t in texts(warm).values())
    finally:
        backend.close()
    with pytest.raises(SpecError, match="greedy answer"):
        parse_spec({"model": {"uri": "x"}, "store": {"uri": "y"}, "retry": {"temperatureSchedule": [0.2, 0.0]}})
    with pytest.raises(ValidationError, match=r"sampling temperature must be >= 0\.05"):
        gen_config(str(tmp_path), "x", temperature=0.0)
