"""`consistency status` on a running campaign, the live line, and the report's intervals."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from consistency_core.spec import StageName
from consistency_core.stats import paired_from_rows, wilson
from consistency_core.status import CampaignPhase, CampaignStatus, EvaluationRecord, StageRecord, TrainingPhase
from consistency_local.console import LiveConsole, render_status, tick_line
from consistency_local.rundir import RunDir
from consistency_local.stage_process import Tick
from consistency_report.data import domain_figures, rates_from_rows, transitions


def _running(tmp_path: Path) -> tuple[RunDir, StageRecord]:
    rd = RunDir(tmp_path / "run")
    record = StageRecord(key="baseline-evaluate", stage=StageName.evaluate, phase=TrainingPhase.quick_fix,
                         iteration=1, job_name="demo-baseline-evaluate", start_time="2026-01-01T00:00:00Z")
    status = CampaignStatus(phase=CampaignPhase.running, training_phase=TrainingPhase.quick_fix, iteration=1,
                            stage=record.key, stages=[record], message="running baseline-evaluate")
    rd.save_status(status)
    rd.write_run({"name": "demo", "namespace": "default", "digest": "x", "source": "c.yaml"})
    rd.progress_path(record).parent.mkdir(parents=True)
    rd.progress_path(record).write_text(json.dumps({"desc": "evaluate", "done": 48, "total": 200,
                                                    "etaSeconds": 28.0}))
    return rd, record


def test_status_shows_the_running_stage_and_its_progress(tmp_path: Path) -> None:
    rd, _ = _running(tmp_path)
    now = datetime(2026, 1, 1, 0, 2, 5, tzinfo=UTC)
    text = render_status(tmp_path, now=now)  # a runs/ folder holding run directories
    header, row = text.splitlines()
    assert header.split()[:6] == ["NAME", "STATUS", "PHASE", "ITERATION", "STAGE", "PROGRESS"]
    assert "default/demo" in row and "Running" in row and "baseline-evaluate" in row
    assert "evaluate 48/200 (24%) eta 28s" in row
    assert "2m05s" in row  # age
    assert render_status(rd.root, now=now, stages=True).count("baseline-evaluate") >= 2


def test_live_line_names_phase_iteration_progress_and_elapsed(tmp_path: Path) -> None:
    rd, record = _running(tmp_path)
    line = tick_line(Tick(record, 75.0, rd.progress(record)))
    assert line.startswith("[1B.1 i1] evaluate")
    assert "48/200" in line and "1m15s elapsed" in line
    out = io.StringIO()
    console = LiveConsole(out, interactive=True)
    console.tick(Tick(record, 1.0, None))
    console.close()
    assert "\r" in out.getvalue() and "starting" in out.getvalue()


def test_wilson_interval_known_values() -> None:
    half = wilson(5, 10)
    assert half.low == pytest.approx(0.2366, abs=1e-4) and half.high == pytest.approx(0.7634, abs=1e-4)
    none = wilson(0, 10)
    assert none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10).high == 1.0
    assert wilson(0, 0).text() == "n/a"
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_rates_and_transitions_from_per_problem_rows() -> None:
    before = [
        {"problemId": "a", "domain": "math", "stratum": "easy", "greedyCorrect": True, "consistent": True,
         "success": True},
        {"problemId": "b", "domain": "math", "stratum": "hard", "greedyCorrect": False, "consistent": False,
         "success": False},
    ]
    after = [dict(before[0], success=False), dict(before[1], greedyCorrect=True, consistent=True, success=True)]
    consistency, accuracy, strata = rates_from_rows(after)
    assert (consistency.successes, consistency.total) == (2, 2)
    assert accuracy["math"].successes == 2
    assert strata["math/hard"]["accuracy"].successes == 1
    assert transitions(before, after) == {"matched": 2, "failureToSuccess": 1, "successToFailure": 1,
                                          "stillFailure": 0, "stillSuccess": 0}


def test_paired_changes_in_status_and_from_rows(tmp_path: Path) -> None:
    before = [{"problemId": f"p{i}", "domain": "math", "greedyCorrect": i < 40, "consistent": i < 30,
               "success": i < 40} for i in range(100)]
    # 15 problems fixed, 3 broken, the rest unchanged
    after = [dict(r, greedyCorrect=(r["greedyCorrect"] or 40 <= i < 55) and not i < 3,
                  success=(r["success"] or 40 <= i < 55) and not i < 3) for i, r in enumerate(before)]
    changes = paired_from_rows(before, after)
    math = changes["math accuracy"]
    assert (math.better, math.worse, math.n) == (15, 3, 100)
    assert math.difference == pytest.approx(0.12) and math.low > 0 and math.p_value < 0.01
    assert changes["consistency"].better == changes["consistency"].worse == 0

    rd, _ = _running(tmp_path)
    status = rd.load_status()
    assert status is not None
    primary = {"figure": "math pairwise agreement", "reference": "baseline", "difference": 0.052, "low": 0.011,
               "high": 0.093, "pValue": 0.004, "n": 100, "before": 0.31, "after": 0.362}
    status.evaluations = [EvaluationRecord(phase="1B.1", iteration=1, primary=primary,
                                           paired={"math accuracy": {**math.as_json(), "pHolm": 0.0123}})]
    rd.save_status(status)
    text = render_status(tmp_path, now=datetime(2026, 1, 1, 0, 2, 5, tzinfo=UTC))
    assert "MATH-CHANGE" in text and "+12.0pp [" in text and "p=0.0" in text
    assert "PRIMARY (BASELINE -> LATEST)" in text and "math pairwise agreement +5.2pp [+1.1,+9.3] p=0.004" in text
    detail = render_status(rd.root, stages=True)
    assert "math accuracy" in detail and "15" in detail
    assert "PRIMARY math pairwise agreement (baseline)" in detail and "0.012" in detail


def test_domain_consistency_and_sample_pass_at_1_from_rows() -> None:
    rows = [{"problemId": "m", "domain": "math", "consistent": True, "samplesCorrect": 5, "samplesGraded": 5},
            {"problemId": "c1", "domain": "code", "consistent": False, "samplesCorrect": 1, "samplesGraded": 5},
            {"problemId": "c2", "domain": "code", "consistent": True, "samplesCorrect": 0, "samplesGraded": 5}]
    consistency, pass1 = domain_figures(rows)
    assert (consistency["code"].successes, consistency["code"].total) == (1, 2)
    assert pass1 == {"math": 1.0, "code": pytest.approx(0.1)}


def _rows(agreements: list[float], *, majority: int) -> list[dict]:
    return [{"problemId": f"p{i}", "domain": "math", "greedyCorrect": i < majority, "consistent": a == 1.0,
             "majorityCorrect": i < majority, "success": i < majority, "pairwiseAgreement": a, "modalShare": a,
             "samplesCorrect": 4 if i < majority else 0, "samplesGraded": 8, "cutOffUnanswered": i % 2}
            for i, a in enumerate(agreements)]


def test_report_headlines_the_primary_endpoint_and_model_card_prints_the_sampled_temperature() -> None:
    from consistency_report.data import EvalView, ReportData, graded_table
    from consistency_report.markdown import before_after_lines, graded_section
    from consistency_report.model_card import render_model_card

    from tests.core.helpers import minimal_spec

    spec = minimal_spec(retry={"temperatureSchedule": [0.3, 0.15]}, quickFix={"temperature": 0.9})
    before = _rows([0.1 * (i % 5) for i in range(60)], majority=20)
    after = _rows([min(1.0, 0.1 * (i % 5) + 0.15) for i in range(60)], majority=25)
    views = [EvalView(label="baseline", record=EvaluationRecord(phase="baseline", iteration=0), rows=before,
                      graded=graded_table(before)),
             EvalView(label="1B.1 i1", record=EvaluationRecord(phase="1B.1", iteration=1, gate_passed=False)),
             EvalView(label="1B.1 i2", record=EvaluationRecord(phase="1B.1", iteration=2, gate_passed=True),
                      rows=after, graded=graded_table(after))]
    data = ReportData(name="c", namespace="ns", status=CampaignStatus(), evaluations=views, stages=[], spec=spec)
    lines = before_after_lines(data)
    headline = next(line for line in lines if line.startswith("Primary endpoint"))
    assert "math pairwise agreement, baseline -> 1B.1 i2: 0.200 -> 0.350: +0.150" in headline
    assert "Wilcoxon p=" in headline
    # every other test carries its Holm-adjusted p; the primary is not in that family
    others = [line for line in lines if line.startswith("  ")]
    assert others and all("Holm p=" in line for line in others)
    assert not any(line.strip().startswith("math pairwise agreement") for line in others)
    graded = "\n".join(graded_section(data))
    assert "| 1B.1 i2 | math | 0.350 |" in graded and "| 30 |" in graded  # 30 cut-off answers
    card = render_model_card(data)
    # iteration 2 passed the gate: it sampled at retry.temperatureSchedule[0], not the spec's base 0.9
    assert "at temperature 0.3 (iteration 2)" in card and "temperature 0.9" not in card
    assert "Primary endpoint (declared in advance), math pairwise agreement" in card
