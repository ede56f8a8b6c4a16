"""distill on hand-built generation records: every keep/drop reason, both modes, caps, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from consistency_core.stage_wire import DISTILL_TRAIN, RESULT, StageConfig, StageResult
from consistency_testkit.fixtures import nest_params
from consistency_worker.data.problems import Problem
from consistency_worker.data.prompts import build_messages
from consistency_worker.grading.selection import Example, cap_total, format_reference
from consistency_worker.job.context import StageContext
from consistency_worker.stages import PermanentStageError, run_stage
from consistency_worker.stages.distill import STATS
from consistency_worker.store.generations import Completion, GenerationRecord, dump_records, shard_file_name
from pydantic import ValidationError


def c(text: str, answer: str | None = None, correct: bool | None = None) -> Completion:
    return Completion(text=text, answer=answer, correct=correct)


def math_problem(pid: str, answer: str = "7", stratum: str = "easy", solution: str | None = None) -> Problem:
    return Problem(id=pid, domain="math", prompt=f"Question {pid}: what is 3 + 4?", answer=answer,
                   stratum=stratum, solution=solution, source="hand")


def code_problem(pid: str, solution: str | None = None) -> Problem:
    return Problem(id=pid, domain="code", prompt=f"Write add(a, b) ({pid}).", tests="assert add(1, 2) == 3",
                   entry_point="add", examples=("assert add(1, 2) == 3",), solution=solution,
                   stratum="easy", source="hand")


def mc_problem(pid: str) -> Problem:
    return Problem(id=pid, domain="reasoning", prompt=f"Pick one ({pid})", choices=("x", "y", "z", "w"),
                   answer="B", stratum="all", source="hand")


def rec(problem: Problem, greedy: Completion, samples: list[Completion]) -> GenerationRecord:
    return GenerationRecord(problemId=problem.id, domain=problem.domain, stratum=problem.stratum,
                            greedy=greedy, samples=samples)


def right(i: int, answer: str = "7") -> Completion:
    return c(f"Step {i}: 3 + 4 = {answer}.\n#### {answer}", answer, True)


def wrong(i: int, answer: str = "5") -> Completion:
    return c(f"Attempt {i}: 3 + 4 = {answer}.\n#### {answer}", answer, False)


CODE = "```python\ndef add(a, b):\n    return a + b\n```"
CODE_REFLOWED = "Here you go:\n```python\ndef add(a,b):\n    # sum\n    return (a + b)\n```"
CODE_OTHER = "```python\ndef add(a, b):\n    return sum([a, b])\n```"


def consistent_cases() -> tuple[list[Problem], list[GenerationRecord]]:
    p = {name: math_problem(name) for name in ("all-right", "split", "minority", "all-wrong", "no-samples",
                                                  "no-answer", "with-empty")}
    p["mc"] = mc_problem("mc")
    p["code"] = code_problem("code")
    records = [
        rec(p["all-right"], right(0), [right(i) for i in range(1, 6)]),
        rec(p["split"], right(0), [right(1), right(2), wrong(3, "5"), wrong(4, "6"), wrong(5, "8")]),
        rec(p["minority"], wrong(0), [wrong(1), wrong(2), wrong(3), wrong(4), right(5)]),
        rec(p["all-wrong"], wrong(0), [wrong(i) for i in range(1, 6)]),
        rec(p["no-samples"], right(0), []),
        rec(p["no-answer"], c("I don't know"), [c(f"hmm {i}") for i in range(5)]),
        rec(p["with-empty"], c("   ", None, None), [right(1), right(1), c("", "7", True), right(2), right(3)]),
        # No gold: modal answer B (3 of 5), two B samples differ only in whitespace.
        rec(p["mc"], c("Answer: B", "B"), [c("Answer: B", "B"), c("Answer:  B", "B"), c("So\nAnswer: B", "B"),
                                             c("Answer: A", "A"), c("Answer: C", "C")]),
        # Code: three passing programs, two of them the same program up to prose, comments and layout.
        rec(p["code"], c(CODE, "pass", True), [c(CODE, "pass", True), c(CODE_REFLOWED, "pass", True),
                                                 c(CODE_OTHER, "pass", True), c("oops", "fail", False),
                                                 c("```python\ndef add(a, b): return a - b\n```", "fail", False)]),
    ]
    return list(p.values()), records


def setup_dirs(tmp_path: Path, problems: list[Problem], records: list[GenerationRecord], shards: int = 2) -> None:
    (tmp_path / "prep").mkdir(parents=True, exist_ok=True)
    (tmp_path / "prep/problems.jsonl").write_text("".join(p.to_jsonl() + "\n" for p in problems))
    gen = tmp_path / "gen"
    gen.mkdir(exist_ok=True)
    for i in range(shards):
        (gen / shard_file_name(i, shards)).write_bytes(dump_records(records[i::shards]))


def distill_config(tmp_path: Path, out: str = "distill", seed: int = 3, **settings: Any) -> StageConfig:
    """A distill config; `settings` are spec-style flat knobs (nest_params puts them in their sections)."""
    params = nest_params("distill", {"problemsUri": str(tmp_path / "prep/problems.jsonl"),
                                     "generationsUri": str(tmp_path / "gen"), "minAgreement": 0.6,
                                     "maxPerProblem": 2, "mode": "consistent", **settings})
    return StageConfig.model_validate({
        "campaign": "c", "key": f"k-{out}", "stage": "distill", "phase": "1B.1", "iteration": 1, "seed": seed,
        "store": {"uri": str(tmp_path)}, "outputUri": str(tmp_path / out), "model": {"uri": "m"},
        "params": {"kind": "distill", **params},
    })


def run(config: StageConfig, tmp_path: Path) -> StageResult:
    return run_stage(StageContext.create(config, scratch_dir=tmp_path / "scratch"))


def train_lines(tmp_path: Path, out: str = "distill") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / out / DISTILL_TRAIN).read_text().splitlines()]


def test_consistent_mode_keeps_and_drops_for_each_reason(tmp_path: Path) -> None:
    problems, records = consistent_cases()
    setup_dirs(tmp_path, problems, records)
    result = run(distill_config(tmp_path), tmp_path)
    m = result.metrics
    assert m["dropped"] == {"low_agreement": 1, "no_answer": 1, "no_correct_sample": 1, "no_samples": 1}
    lines = train_lines(tmp_path)
    per_problem: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        per_problem.setdefault(line["problemId"], []).append(line)
    assert {k: len(v) for k, v in per_problem.items()} == {
        "all-right": 2, "minority": 1, "with-empty": 2, "mc": 2, "code": 2,
    }
    assert m["examples"] == 9 and m["problemsKept"] == 5 and m["problems"] == 9
    assert m["perDomain"] == {"code": 2, "math": 5, "reasoning": 2}
    # Rejection sampling: only the one correct sample of "minority" survives.
    assert per_problem["minority"][0]["messages"][-1]["content"] == right(5).text
    # Code duplicates (same AST) collapse: the two kept programs differ.
    code_targets = {line["messages"][-1]["content"] for line in per_problem["code"]}
    assert CODE_OTHER in code_targets and len(code_targets) == 2
    # No gold: only modal-answer samples, never "Answer: A"/"Answer: C".
    assert all(line["messages"][-1]["content"].endswith("B") for line in per_problem["mc"])

    dropped = m["droppedCandidates"]
    # all-right: 6 distinct correct candidates, 2 kept; with-empty: 3 distinct usable ones, 2 kept.
    assert dropped["over_per_problem"] == 4 + 1
    assert dropped["empty"] == 2  # the blank greedy and the empty sample of with-empty
    assert dropped["duplicate"] == 1 + 2 + 2  # with-empty's repeat; mc's whitespace copies; code copies
    assert dropped["wrong"] == 5 + 6 + 2  # minority, all-wrong (greedy too), code's failing programs
    assert dropped["not_modal"] == 2

    for line in lines:
        problem = next(p for p in problems if p.id == line["problemId"])
        assert line["messages"][:-1] == build_messages(problem)
        assert line["messages"][-1]["role"] == "assistant"
        assert line["source"] == "sample"
        assert set(line) == {"messages", "problemId", "source"}

    stats = json.loads((tmp_path / "distill" / STATS).read_text())
    easy = stats["groups"]["math/easy"]
    assert easy["problems"] == 7 and easy["problemsKept"] == 3 and easy["examples"] == 5
    assert easy["droppedProblems"] == {"low_agreement": 1, "no_answer": 1, "no_correct_sample": 1,
                                       "no_samples": 1}
    assert stats["groups"]["reasoning/all"]["meanAgreement"] == 0.6
    assert len(result.to_termination_message()) <= 4096


def test_choice_is_seeded_and_order_independent(tmp_path: Path) -> None:
    problems, records = consistent_cases()
    setup_dirs(tmp_path, problems, records, shards=1)
    run(distill_config(tmp_path, out="a", seed=3), tmp_path)
    # Same seed, records spread over 3 shards in another order: same examples.
    setup_dirs(tmp_path / "other", problems, list(reversed(records)), shards=3)
    cfg = distill_config(tmp_path / "other", out="b", seed=3)
    run(cfg, tmp_path)
    a = sorted(json.dumps(x, sort_keys=True) for x in train_lines(tmp_path, "a"))
    b = sorted(json.dumps(x, sort_keys=True) for x in train_lines(tmp_path / "other", "b"))
    assert a == b
    # Another seed picks other targets for all-right (6 candidates, 2 kept) for at least one seed.
    picks = set()
    for seed in range(4, 10):
        run(distill_config(tmp_path, out=f"s{seed}", seed=seed), tmp_path)
        picks.add(tuple(sorted(x["messages"][-1]["content"] for x in train_lines(tmp_path, f"s{seed}")
                               if x["problemId"] == "all-right")))
    assert len(picks) > 1


def failure_cases() -> tuple[list[Problem], list[GenerationRecord]]:
    gsm_solution = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"
    p = {
        "greedy-wrong": math_problem("greedy-wrong"),
        "solid": math_problem("solid"),
        "shaky": math_problem("shaky"),
        "hopeless": math_problem("hopeless", answer="72", stratum="medium", solution=gsm_solution),
        "hopeless-bare": math_problem("hopeless-bare"),
        "code-ref": code_problem("code-ref", solution="def add(a, b):\n    return a + b"),
        "nogold": mc_problem("nogold"),
        "nogold-split": mc_problem("nogold-split"),
    }
    records = [
        rec(p["greedy-wrong"], wrong(0), [right(1), right(2), wrong(3), wrong(4), right(5)]),
        rec(p["solid"], right(0), [right(i) for i in range(1, 6)]),
        # Greedy right but the samples scatter: agreement 0.2 < 0.3.
        rec(p["shaky"], right(0), [right(1), wrong(2, "1"), wrong(3, "2"), wrong(4, "3"), wrong(5, "4")]),
        rec(p["hopeless"], wrong(0), [wrong(i) for i in range(1, 6)]),
        rec(p["hopeless-bare"], wrong(0), [wrong(i) for i in range(1, 6)]),
        rec(p["code-ref"], c("nope", "fail", False), [c(f"bad {i}", "fail", False) for i in range(5)]),
        # No gold: agreement 1/5 (tie broken towards the greedy answer A) and 2/5, both below 0.5.
        rec(p["nogold"], c("I think\nAnswer: A", "A"), [c("Answer: A", "A"), c("Answer: B", "B"), c("Answer: C", "C"),
                                               c("Answer: D", "D"), c("no idea")]),
        rec(p["nogold-split"], c("x", None), [c("Answer: A", "A"), c("Answer: A.", "A"), c("Answer: B", "B"),
                                              c("Answer: C", "C"), c("Answer: D", "D")]),
    ]
    return list(p.values()), records


def failures_params(**overrides: Any) -> dict[str, Any]:
    return {"mode": "failures", "minAgreement": 0.2, "failure": {"maxAgreement": 0.5, "includeWrong": True},
            "maxPerProblem": 2, "useReferenceSolutions": True, **overrides}


def test_failures_mode_samples_then_references(tmp_path: Path) -> None:
    problems, records = failure_cases()
    setup_dirs(tmp_path, problems, records)
    result = run(distill_config(tmp_path, **failures_params()), tmp_path)
    m = result.metrics
    assert m["failures"] == 7  # all but "solid"
    assert m["dropped"] == {"not_failure": 1}
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for line in train_lines(tmp_path):
        by_problem.setdefault(line["problemId"], []).append(line)
    assert {k: [x["source"] for x in v] for k, v in sorted(by_problem.items())} == {
        "code-ref": ["reference"],
        "greedy-wrong": ["sample", "sample"],
        "hopeless": ["reference"],
        "hopeless-bare": ["reference"],
        "nogold": ["sample", "sample"],
        "nogold-split": ["sample", "sample"],
        "shaky": ["sample", "sample"],
    }
    assert (m["fromSamples"], m["fromReference"], m["examples"]) == (8, 3, 11)
    hopeless = by_problem["hopeless"][0]["messages"][-1]["content"]
    assert hopeless.endswith("#### 72") and hopeless.count("####") == 1
    assert by_problem["hopeless-bare"][0]["messages"][-1]["content"] == "#### 7"
    assert by_problem["code-ref"][0]["messages"][-1]["content"].startswith("```python\ndef add")
    # Correct samples only for gold problems: the greedy and the right sample of "shaky".
    # No gold: modal-answer samples; "nogold" ties 1-1-1-1 and the greedy answer A breaks the tie.
    assert all(x["messages"][-1]["content"].endswith("A") for x in by_problem["nogold"])
    assert all("= 7" in x["messages"][-1]["content"] for x in by_problem["shaky"])
    # No gold: modal-answer samples (A) whose agreement (0.4 / 0.2) reaches minAgreement 0.2.
    assert all("A" in x["messages"][-1]["content"] for x in by_problem["nogold-split"])


def test_failures_mode_thresholds_and_switches(tmp_path: Path) -> None:
    problems, records = failure_cases()
    setup_dirs(tmp_path, problems, records)
    strict = failures_params(minAgreement=0.5, useReferenceSolutions=False,
                             failure={"maxAgreement": 0.5, "includeWrong": False})
    result = run(distill_config(tmp_path, out="strict", **strict), tmp_path)
    m = result.metrics
    # Without include_wrong only low agreement counts: greedy-wrong (0.6), hopeless* (1.0) and
    # code-ref (its "fail" answers agree 100 %) are not failures; shaky and the no-gold ones are.
    assert m["failures"] == 3
    assert m["dropped"] == {"no_target": 2, "not_failure": 5}  # no-gold problems below minAgreement 0.5
    assert m["fromReference"] == 0
    assert {x["problemId"] for x in train_lines(tmp_path, "strict")} == {"shaky"}


def test_max_examples_cap_spreads_over_groups(tmp_path: Path) -> None:
    problems = [math_problem(f"m{i}", stratum="easy") for i in range(20)]
    problems += [math_problem(f"h{i}", stratum="hard") for i in range(3)]
    problems += [code_problem(f"c{i}", solution="def add(a, b):\n    return a + b") for i in range(2)]
    records = [rec(p, wrong(0), [right(1), right(2), wrong(3), wrong(4), wrong(5)])
               for p in problems if p.domain == "math"]
    records += [rec(p, c("x", "fail", False), [c(f"y{i}", "fail", False) for i in range(5)])
                for p in problems if p.domain == "code"]
    setup_dirs(tmp_path, problems, records)
    result = run(distill_config(tmp_path, **failures_params(maxExamples=8)), tmp_path)
    lines = train_lines(tmp_path)
    assert len(lines) == result.metrics["examples"] == 8
    groups = [x["problemId"][0] for x in lines]
    # Round-robin over (code/easy, math/easy, math/hard): both code refs, all 3 hard, 3 easy.
    assert sorted(groups) == sorted("cc" + "hhh" + "mmm")
    assert result.metrics["droppedCandidates"]["over_max_examples"] == 23 * 2 + 2 - 8
    # First targets before second ones: 8 different problems.
    assert len({x["problemId"] for x in lines}) == 8


def test_cap_total_is_exact_and_keeps_input_order() -> None:
    examples = [Example(f"p{i}", "math", "easy", f"t{i}", "sample", 0) for i in range(10)]
    kept, dropped = cap_total(examples, 4, seed=1)
    assert len(kept) == 4 and len(dropped) == 6
    assert kept == [ex for ex in examples if ex in kept]
    assert cap_total(examples, 4, seed=1) == (kept, dropped)
    assert cap_total(examples, None, seed=1) == (examples, [])


def test_format_reference_per_domain() -> None:
    gsm = math_problem("g", answer="72", solution="48/2 = 24\n48+24 = 72\n#### 72")
    assert format_reference(gsm) == "48/2 = 24\n48+24 = 72\n#### 72"
    assert format_reference(math_problem("g2", answer="3.5", solution="It is 3.5")) == "It is 3.5\n#### 3.5"
    assert format_reference(code_problem("c")) is None
    assert format_reference(mc_problem("r")) == "Answer: B"


def test_errors_are_permanent_and_rerun_is_idempotent(tmp_path: Path) -> None:
    problems, records = consistent_cases()
    setup_dirs(tmp_path, problems, records, shards=3)
    (tmp_path / "gen" / shard_file_name(1, 3)).unlink()
    with pytest.raises(PermanentStageError, match=r"1 of 3 shard\(s\) missing: generations-00001-of-00003"):
        run(distill_config(tmp_path), tmp_path)

    setup_dirs(tmp_path, problems[1:], records, shards=3)
    with pytest.raises(PermanentStageError, match="name problems missing"):
        run(distill_config(tmp_path), tmp_path)

    setup_dirs(tmp_path, problems, records, shards=3)
    with pytest.raises(ValidationError, match=r"params\.failures: required"):
        distill_config(tmp_path, mode="failures")

    only_bad = [r for r in records if r.problem_id in ("split", "all-wrong")]
    setup_dirs(tmp_path, problems, only_bad, shards=1)
    for f in (tmp_path / "gen").glob("generations-*-of-00003.jsonl"):
        f.unlink()
    with pytest.raises(PermanentStageError, match="no training examples"):
        run(distill_config(tmp_path), tmp_path)

    setup_dirs(tmp_path, problems, records, shards=1)
    first = run(distill_config(tmp_path, out="ok"), tmp_path)
    stamp = (tmp_path / "ok" / DISTILL_TRAIN).stat().st_mtime_ns
    assert run(distill_config(tmp_path, out="ok"), tmp_path) == first
    assert (tmp_path / "ok" / DISTILL_TRAIN).stat().st_mtime_ns == stamp
    assert (tmp_path / "ok" / RESULT).is_file()


def _gsm8k_training_lines(shared: Path, n: int) -> list[dict[str, Any]]:
    """What a 1B.1 distill writes, for real GSM8K problems: chat lines whose target is the worked solution."""
    from consistency_worker.data.loaders import load_problems
    from consistency_worker.grading.selection import format_reference

    problems = load_problems({"name": "gsm8k-train", "uri": str(shared / "gsm8k" / "train.jsonl"),
                              "format": "gsm8k", "limit": n}).problems
    return [{"messages": [*build_messages(p), {"role": "assistant", "content": format_reference(p)}],
             "problemId": p.id, "source": "sample"} for p in problems]


def test_failures_mode_replays_a_share_of_the_1b1_examples(tmp_path: Path, shared_datasets: Path) -> None:
    from consistency_worker.stages.distill import replay_count

    problems, records = failure_cases()
    setup_dirs(tmp_path, problems, records)
    replay_file = tmp_path / "1b1-distill" / DISTILL_TRAIN
    replay_file.parent.mkdir()
    lines = _gsm8k_training_lines(shared_datasets, 40)
    lines[0]["problemId"] = "shaky"  # 1B.1 trained "shaky" too: its new 1B.2 targets replace the old one
    replay_file.write_text("".join(json.dumps(r) + "\n" for r in lines))
    params = failures_params(replayUri=str(replay_file), replayFraction=0.2)
    result = run(distill_config(tmp_path, **params), tmp_path)
    m = result.metrics
    # 11 new examples; 0.2 of the output replayed: round(11 * 0.2 / 0.8) = 3, so 3 of 14 lines
    assert (m["newExamples"], m["replayed"], m["examples"]) == (11, 3, 14)
    out = train_lines(tmp_path)
    replayed = [x for x in out if x["source"] == "replay"]
    assert len(replayed) == 3 and all(x["problemId"].startswith("gsm8k-train/") for x in replayed)
    assert all(x["messages"][-1]["content"].rstrip().split("#### ")[-1].isdigit() for x in replayed)
    stats = json.loads((tmp_path / "distill" / STATS).read_text())
    assert (stats["replayed"], stats["replayAvailable"]) == (3, 39)
    assert "3 replayed" in result.message
    # seeded: the same lines again
    again = run(distill_config(tmp_path, out="again", **params), tmp_path)
    assert again.metrics["replayed"] == 3
    assert [x for x in train_lines(tmp_path, "again") if x["source"] == "replay"] == replayed
    # off, and bounded by what exists
    off = run(distill_config(tmp_path, out="off", **failures_params(replayUri=str(replay_file), replayFraction=0)),
              tmp_path)
    assert off.metrics["replayed"] == 0 and off.metrics["examples"] == 11
    assert replay_count(11, 0.5, 39) == 11 and replay_count(100, 0.9, 39) == 39 and replay_count(0, 0.2, 5) == 0
    with pytest.raises(PermanentStageError, match="replayUri"):
        run(distill_config(tmp_path, out="missing",
                           **failures_params(replayUri=str(tmp_path / "nope.jsonl"), replayFraction=0.2)), tmp_path)


def test_problems_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One read serves both the manifest's hash and the parse (a big scan set is not downloaded twice).
    problems, records = consistent_cases()
    setup_dirs(tmp_path, problems, records)
    config = distill_config(tmp_path)
    ctx = StageContext.create(config, scratch_dir=tmp_path / "scratch")
    reads: list[str] = []
    real = ctx.store.read_bytes
    monkeypatch.setattr(ctx.store, "read_bytes", lambda uri, **kw: reads.append(uri) or real(uri, **kw))
    assert run_stage(ctx).ok
    assert reads.count(config.params.problems_uri) == 1
    manifest = json.loads((tmp_path / "distill" / "manifest.json").read_text())
    assert manifest["inputs"]["problems"]["sha256"]


# ------------------------------------------------------------------------ label-free targets and pairs


def _scrambled(problems: list[Problem], records: list[GenerationRecord]
               ) -> tuple[list[Problem], list[GenerationRecord]]:
    """Every gold answer and reference solution replaced, and every graded verdict as generate would
    write it against the new gold (a sample right before is wrong now, and the reverse)."""
    problems = [p.model_copy(update={"answer": "999" if p.domain == "math" else ("D" if p.answer else None),
                                     "solution": "scrambled\n#### 999" if p.solution else None})
                for p in problems]

    def flip(comp: Completion) -> Completion:
        return comp if comp.correct is None else comp.model_copy(update={"correct": not comp.correct})

    return problems, [r.model_copy(update={"greedy": flip(r.greedy), "samples": [flip(s) for s in r.samples]})
                      for r in records]


@pytest.mark.parametrize("settings", [{"mode": "consistent", "minAgreement": 0.4}, failures_params()],
                         ids=["1B.1", "1B.2"])
def test_majority_targets_never_read_gold(tmp_path: Path, settings: dict[str, Any]) -> None:
    problems, records = (consistent_cases() if settings["mode"] == "consistent" else failure_cases())
    outputs: dict[str, dict[str, bytes]] = {}
    for targets in ("gold", "majority"):
        for name, (ps, rs) in {"real": (problems, records), "scrambled": _scrambled(problems, records)}.items():
            root = tmp_path / targets / name
            setup_dirs(root, ps, rs)
            run(distill_config(root, **{**settings, "targets": targets}), tmp_path)
            outputs[f"{targets}/{name}"] = {f: (root / "distill" / f).read_bytes()
                                             for f in (DISTILL_TRAIN, "pairs.jsonl")}
    # Label-free: the training data (SFT targets and preference pairs) is byte-identical under scrambled gold.
    assert outputs["majority/real"] == outputs["majority/scrambled"]
    assert outputs["majority/real"][DISTILL_TRAIN]
    # The check can fail: with gold targets, scrambling the gold changes what is trained on.
    assert outputs["gold/real"][DISTILL_TRAIN] != outputs["gold/scrambled"][DISTILL_TRAIN]
    lines = [json.loads(x) for x in outputs["majority/real"][DISTILL_TRAIN].splitlines()]
    assert {x["source"] for x in lines} == {"sample"}  # never a reference solution


def test_majority_targets_are_the_modal_samples(tmp_path: Path) -> None:
    problems, records = consistent_cases()
    setup_dirs(tmp_path, problems, records)
    result = run(distill_config(tmp_path, targets="majority", minAgreement=0.6), tmp_path)
    by_problem: dict[str, list[str]] = {}
    for line in train_lines(tmp_path):
        by_problem.setdefault(line["problemId"], []).append(line["messages"][-1]["content"])
    # "minority" and "all-wrong" agree 4/5 and 5/5 on 5: label-free, their modal (wrong) samples are targets;
    # "split" (2/5 on 7) is below minAgreement whatever gold says.
    assert sorted(by_problem) == ["all-right", "all-wrong", "code", "mc", "minority", "with-empty"]
    assert all(t.endswith("#### 5") for t in by_problem["minority"] + by_problem["all-wrong"])
    assert result.metrics["targets"] == "majority"
    assert result.metrics["dropped"] == {"low_agreement": 1, "no_answer": 1, "no_samples": 1}


def test_pairs_are_modal_against_least_voted_weighted_by_margin(tmp_path: Path) -> None:
    problem = math_problem("p")
    samples = [right(1), right(2), right(3), wrong(4, "5"), wrong(5, "5"), wrong(6, "6"), c("rambling", None)]
    records = [rec(problem, right(0), samples),
               rec(math_problem("same"), right(0), [right(i) for i in range(1, 5)])]
    setup_dirs(tmp_path, [problem, math_problem("same")], records)
    result = run(distill_config(tmp_path, targets="majority", minAgreement=0.4), tmp_path)
    pairs = [json.loads(x) for x in (tmp_path / "distill" / "pairs.jsonl").read_text().splitlines()]
    # "same": every sample agrees, nothing to prefer against.
    assert [p["problemId"] for p in pairs] == ["p"] and result.metrics["pairs"] == 1
    pair = pairs[0]
    assert pair["messages"][:-1] == build_messages(problem)
    assert pair["messages"][-1]["content"] in {right(i).text for i in range(4)}
    # Least voted: "6" and the answerless sample have one vote each; the margin is 3 - 1 of 7 samples.
    assert pair["rejected"] in {wrong(6, "6").text, "rambling"}
    assert pair["weight"] == round(2 / 7, 6)
    assert set(pair) == {"messages", "rejected", "weight", "problemId", "source"}
