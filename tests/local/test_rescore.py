"""Re-scoring a finished run's stored generations with the current grader (no generation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from consistency_core.spec import StageName
from consistency_core.stage_wire import StageConfig
from consistency_core.status import CampaignStatus, EvaluationRecord, StageOutcome, StageRecord, TrainingPhase
from consistency_local.rescore import main, rescore_run
from consistency_local.rundir import RunDir

# (completion, truncated, the answer the grader of then stored)
BASELINE = [
    ("The answer is 5 apples. Check: 5*2=10", False, "10"),
    ("Janet has 16. 16 - 3 = 13, 13 - 4 = 9, and", True, "9"),  # cut off mid-working
    ("#### 5", False, "5"),
    ("So 5 apples = 10 halves, maybe 7", True, "7"),
]
FINAL = [("#### 5", False, "5")] * 3 + [("The answer is 5 apples. Check: 5*2=10", False, "10")]


def _record(pid: str, texts: list[tuple[str, bool, str]], gold: str) -> dict:
    def completion(text: str, truncated: bool, answer: str) -> dict:
        return {"text": text, "answer": answer, "correct": answer == gold, "truncated": truncated}

    return {"problemId": pid, "domain": "math", "stratum": "all", "greedy": completion(*texts[0]),
            "samples": [completion(*t) for t in texts]}


def _write_run(tmp: Path) -> tuple[Path, Path]:
    store = tmp / "store"
    (store / "prepare").mkdir(parents=True)
    problems = [{"id": f"m{i}", "domain": "math", "prompt": "How many?", "answer": "5"} for i in range(3)]
    (store / "prepare" / "eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    run = tmp / "run"
    rd = RunDir(run)
    (run / "configs").mkdir(parents=True)
    stages, evaluations = [], []
    for key, phase, iteration, texts in (("baseline-evaluate", "baseline", 0, BASELINE),
                                         ("1b1-i1-evaluate", "1B.1", 1, FINAL)):
        out = store / key
        out.mkdir()
        records = [_record(p["id"], texts, "5") for p in problems]
        (out / "generations-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        report = out / "report.json"
        report.write_text(json.dumps({"generationsUri": str(out), "consistency": 0.0, "accuracy": {"math": 0.0}}))
        config = StageConfig.model_validate({
            "campaign": "demo", "key": key, "stage": "evaluate", "phase": phase, "iteration": max(iteration, 1),
            "seed": 1, "store": {"uri": str(store)}, "outputUri": str(out), "model": {"uri": "demo://m"},
            "backend": "hf", "params": {"kind": "evaluate", "problemsUri": str(store / "prepare" / "eval.jsonl"),
                                        "sampling": {"samples": 4}}})
        record = StageRecord(key=key, stage=StageName.evaluate, phase=TrainingPhase.quick_fix,
                             iteration=max(iteration, 1), job_name=key, outcome=StageOutcome.succeeded,
                             artifacts={"report": str(report)})
        rd.config_path(record).write_text(json.dumps(config.to_wire()))
        stages.append(record)
        evaluations.append(EvaluationRecord(phase=phase, iteration=iteration, report=str(report)))
    rd.save_status(CampaignStatus(stages=stages, evaluations=evaluations))
    return run, store


def test_rescore_regrades_stored_generations_without_touching_the_run(tmp_path: Path) -> None:
    run, store = _write_run(tmp_path)
    before_files = {p: p.read_bytes() for p in [*run.rglob("*"), *store.rglob("*")] if p.is_file()}
    result = rescore_run(run, tmp_path / "out")
    base, final = result["evaluations"]
    assert base["evaluation"] == "baseline" and final["evaluation"] == "1B.1 i1"
    # baseline: greedy "answer is 5 ... 5*2=10" was 10 (wrong), now 5 (right); the cut-off samples lose their
    # intermediate numbers (9, 7) and become no answer
    assert base["before"]["accuracy"] == {"math": 0.0} and base["after"]["accuracy"] == {"math": 1.0}
    assert base["after"]["cutOffUnanswered"] == 3 * 2 and base["before"]["cutOffUnanswered"] == 0
    # samples 5, None, 5, None: 2 of 12 ordered pairs agree (before: 10, 9, 5, 7 -> none)
    assert base["before"]["pairwiseAgreement"] == {"math": 0.0}
    assert base["after"]["pairwiseAgreement"] == {"math": pytest.approx(2 / 12, abs=1e-4)}
    assert base["answersChanged"] == 3 * 4  # greedy + the first sample (10 -> 5), two cut-off samples
    assert final["after"]["pairwiseAgreement"] == {"math": 1.0}
    assert final["before"]["pairwiseAgreement"] == {"math": pytest.approx(6 / 12, abs=1e-4)}
    comparison = result["baselineToFinal"]
    assert comparison["after"]["primary"]["figure"] == "math pairwise agreement"
    assert comparison["after"]["primary"]["difference"] == pytest.approx(1.0 - 2 / 12, abs=1e-3)
    family = comparison["after"]["family"]
    assert "pHolm" not in family["math pairwise agreement"]  # the primary is not in the Holm family
    assert all("pHolm" in c for name, c in family.items() if c["n"] and name != "math pairwise agreement")
    text = (tmp_path / "out" / "rescore.md").read_text()
    assert "| baseline | accuracy | math | 0.000 | 1.000 |" in text and "PRIMARY math pairwise agreement" in text
    rows = (tmp_path / "out" / "baseline" / "per_problem.jsonl").read_text().splitlines()
    assert len(rows) == 3 and json.loads(rows[0])["cutOffUnanswered"] == 2
    # nothing in the run or its store changed
    assert {p: p.read_bytes() for p in [*run.rglob("*"), *store.rglob("*")] if p.is_file()} == before_files


def test_rescore_refuses_to_write_into_the_run(tmp_path: Path) -> None:
    run, _ = _write_run(tmp_path)
    with pytest.raises(SystemExit):
        main([str(run), str(run / "rescore")])
