"""`consistency plan`: the campaign file validated and priced from local files' sizes, --strict, -o json,
and the seed's options (--compare)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from consistency_local.cli import main

from tests.core.test_forecast import HAND, ROWS


def campaign_file(tmp_path: Path, max_usd: float | None) -> Path:
    """The hand-computed campaign of tests/core/test_forecast.py with local files of the sizes it assumes."""
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in ROWS.items():
        lines = [json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) for i in range(rows)]
        (data / f"{name}.jsonl").write_text("\n".join(lines) + "\n\n")  # a blank line is not a problem
    spec = {**HAND, "model": {"uri": "hf://org/model"}, "store": {"uri": "store"},
            "datasets": [{**d, "uri": f"data/{d['name']}.jsonl"} for d in HAND["datasets"]],
            "budget": {**HAND["budget"], "maxUsd": max_usd}}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "consistency.dev/v1alpha1", "kind": "ConsistencyTraining",
                                    "metadata": {"name": "hand"}, "spec": spec}))
    return path


def test_plan_prints_the_stages_totals_and_verdict(tmp_path, capsys):
    assert main(["plan", "-f", str(campaign_file(tmp_path, 1.0))]) == 0
    out = capsys.readouterr().out
    assert "default/hand: spec valid" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("1b", "baseline"))}
    # 1B.2 train: 400 examples at most, 1 epoch, 20 s, $0.02 a try and $0.04 with its retry
    assert lines["1b2-train"][:2] == ["1b2-train", "first"] and "400" in lines["1b2-train"]
    assert lines["1b2-train"][-2:] == ["0.02", "0.04"]
    assert lines["1b1-i2-generate"][1] == "retry" and "200" not in lines["1b1-i2-generate"][2]
    assert "first pass (1B.1 passes its first gate, no stage fails): 0.07 GPU-h, $0.27" in out
    assert "worst case (every 1B.1 iteration, every stage tried 2x): 0.21 GPU-h, $0.74" in out
    assert "budget: $1.00: WithinBudget" in out


@pytest.mark.parametrize(("max_usd", "code", "verdict"), [(1.0, 0, "WithinBudget"), (0.5, 1, "MayExceedBudget"),
                                                          (0.2, 1, "ExceedsBudget"), (None, 0, "NoBudget")])
def test_strict_fails_when_the_worst_case_exceeds_the_budget(tmp_path, capsys, max_usd, code, verdict):
    path = campaign_file(tmp_path, max_usd)
    assert main(["plan", "-f", str(path), "-o", "json"]) == 0  # without --strict a plan never fails
    plan = json.loads(capsys.readouterr().out)
    assert plan["verdict"] == verdict and plan["worstCaseUsd"] == pytest.approx(0.74)
    assert plan["firstPassUsd"] == pytest.approx(0.265)
    assert main(["plan", "-f", str(path), "--strict", "-o", "json"]) == code


def test_strict_fails_when_a_dataset_cannot_be_sized(tmp_path, capsys):
    path = campaign_file(tmp_path, 1.0)
    (tmp_path / "data" / "e.jsonl").unlink()  # the eval file is not here: its size is unknown
    assert main(["plan", "-f", str(path), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "Incomplete" in out and "unknown: baseline-evaluate" in out


def test_invalid_campaign_is_refused_with_the_field(tmp_path, capsys):
    path = campaign_file(tmp_path, 1.0)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["quickFix"]["samples"] = 0
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", "-f", str(path)]) == 2
    assert "quickFix.samples" in capsys.readouterr().err


def test_compare_prices_the_seed_options(capsys):
    assert main(["plan", "--compare", "-o", "json"]) == 0
    rows = {r["option"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["quick fix (1B.1)", "strategic sampling", "failure-driven (1B.1 + 1B.2)",
                          "full train sets"]
    quick = rows["quick fix (1B.1)"]["defaultFigures"]
    # baseline + 1B.1 evaluate: 1483 x (1 + evaluation k 8) x 512 / 2000 / 3600 = 0.9491 h each; generate
    # 664 x 6 x 512 -> 0.2833 h; train 664 x 2 examples x 2 epochs x 256 / 3000 / 3600 = 0.0630 h: 2.2445 h at $2.00
    assert quick["firstPassGpuHours"] == pytest.approx(2.2445, abs=1e-3)
    assert quick["firstPassUsd"] == pytest.approx(4.4890, abs=1e-3)
    assert not any(s["key"].startswith("1b2") for s in quick["stages"])
    full = rows["full train sets"]["defaultFigures"]
    assert next(s for s in full["stages"] if s["key"] == "1b1-i1-generate")["problems"] == 7473 + 374
    failure = rows["failure-driven (1B.1 + 1B.2)"]["publishedFigures"]
    assert failure["assumptions"]["generateTokensPerSecond"] == 12500
    assert main(["plan", "--compare"]) == 0
    assert "full train sets" in capsys.readouterr().out


def test_report_shows_forecast_against_actual_with_errors():
    from consistency_core.spec import StageName
    from consistency_report.data import ReportData
    from consistency_report.markdown import forecast_lines

    from tests.core.helpers import drive, minimal_spec, succeed_with

    spec = minimal_spec(**HAND)

    def outcome(run):
        base = succeed_with([(0.9, 0.9)])(run)
        metrics = {**base.metrics, "selection": 100, "scan": 200, "eval": 50} \
            if run.record.stage == StageName.prepare else dict(base.metrics)
        if run.record.stage in (StageName.generate, StageName.evaluate):
            metrics.update(generatedTokens=5000, countedAnswers=250)  # 50 tok/s over 100 s, a fifth of the budget
        return base.model_copy(update={"metrics": metrics, "seconds": 100.0})

    final, _ = drive(spec, outcome)
    lines = forecast_lines(ReportData("hand", "default", final.status, [], [], spec))
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines if line.startswith("| 1b")}
    # The baseline took 100 s against 25 s forecast from the spec's figures (-75%); 1B.1 generate was then
    # forecast from it: 100 x 5 x 100 x 0.2 / 50 = 200 s, +100% against the 100 s it took.
    baseline = next(line for line in lines if line.startswith("| baseline-evaluate"))
    assert "| 25s | -75% | 25s | -75% |" in baseline
    assert rows["1b1-i1-generate"][3:7] == ["50s", "-50%", "3m20s", "+100%"]
    assert "## Forecast against actual" in lines


def test_plan_loads_no_model_library(tmp_path):
    """`consistency plan` is pure: no torch, transformers or worker stage code is imported to run it."""
    import subprocess
    import sys

    path = campaign_file(tmp_path, 1.0)
    code = ("import sys; from consistency_local.cli import main; rc = main(['plan', '-f', sys.argv[1]]); "
            "heavy = sorted(m for m in ('torch', 'transformers', 'vllm', 'consistency_worker.stages') "
            "if m in sys.modules); print(heavy); sys.exit(rc or bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("[]")
