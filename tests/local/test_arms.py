"""The efficacy arms harness: the arm documents, equal optimizer steps, the comparison table's figures and
the token-budget procedure, on hand-made inputs whose answers are worked out here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from consistency_core.graded_stats import graded_paired
from consistency_core.spec import MAX_EPOCHS
from consistency_core.stage_wire import StageConfig
from consistency_core.status import StageRecord, TrainingPhase
from consistency_local import arms, arms_budget, arms_table
from consistency_local.campaign_file import load_campaign
from consistency_local.demo import render_template


def demo_document(tmp_path: Path) -> dict:
    return yaml.safe_load(render_template("demo-campaign.yaml", {
        "MODEL": str(tmp_path / "model"), "DATA": str(tmp_path / "data"), "STORE": str(tmp_path / "store")}))


@pytest.mark.parametrize("arm", list(arms.ARMS))
def test_arm_document_sets_the_arm_knobs_k8_and_open_gates_and_validates(tmp_path: Path, arm: str) -> None:
    doc = arms.arm_document(demo_document(tmp_path), "demo", arm, None)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    spec = load_campaign(path).spec
    assert load_campaign(path).name == f"demo-{arm}"
    for phase in (spec.quick_fix, spec.expansion):
        assert (phase.targets, phase.objective) == (arms.ARMS[arm]["targets"], arms.ARMS[arm]["objective"])
    assert spec.evaluation.samples == 8
    assert spec.thresholds.consistency == 0.0 and spec.thresholds.accuracy == {"math": 0.0}
    # Everything else is the demo campaign as written: the same problems, seeds and training knobs.
    base = demo_document(tmp_path)["spec"]
    assert doc["spec"]["datasets"] == base["datasets"] and doc["spec"]["seed"] == base["seed"]
    assert doc["spec"]["quickFix"]["learningRate"] == base["quickFix"]["learningRate"]


def test_arm_document_budget_applies_to_generation_and_evaluation(tmp_path: Path) -> None:
    spec = arms.arm_document(demo_document(tmp_path), "demo", "preference", 256)["spec"]
    assert [spec[p]["maxNewTokens"] for p in ("quickFix", "expansion", "evaluation")] == [256, 256, 256]


def training(epochs: int = 10, batch: int = 8, accumulation: int = 1, objective: str = "sft"):
    from consistency_core.spec import TrainingKnobs

    return TrainingKnobs.model_validate({"epochs": epochs, "batchSize": batch, "gradientAccumulation": accumulation,
                                         "objective": objective, "method": "lora"})


def test_matched_epochs_is_the_fewest_reaching_the_reference_steps() -> None:
    # 288 examples at batch 8: 36 steps an epoch; 360 reference steps -> exactly 10 epochs.
    assert arms.matched_epochs(360, 288, training()) == 10
    # 52 pairs at batch 8: 7 steps an epoch; 360 steps -> 52 epochs (364 steps, the nearest at or above).
    assert arms.matched_epochs(360, 52, training(objective="preference")) == 52
    # Accumulation counts: 100 examples, batch 4, accumulation 2 -> 13 steps an epoch; 31 steps -> 3 epochs.
    assert arms.matched_epochs(31, 100, training(batch=4, accumulation=2)) == 3
    assert arms.matched_epochs(10_000, 8, training()) == MAX_EPOCHS


def train_config(tmp_path: Path, objective: str) -> StageConfig:
    distill = tmp_path / "store" / "1b1-i1-distill"
    data = distill / ("pairs.jsonl" if objective == "preference" else "train.jsonl")
    return StageConfig.model_validate({
        "attempt": 1, "backend": "hf", "campaign": "demo-x", "iteration": 1, "key": "1b1-i1-train",
        "model": {"uri": str(tmp_path / "model")}, "namespace": "default", "phase": "1B.1", "seed": 1234,
        "outputUri": str(tmp_path / "store" / "1b1-i1-train"), "stage": "train", "store": {"uri": str(tmp_path)},
        "params": {"kind": "train", "dataUri": str(data), "processes": 1,
                   "training": training(objective=objective).model_dump(by_alias=True)}})


@pytest.mark.parametrize(("objective", "expected"), [("sft", 5), ("preference", 36)])
def test_equal_steps_sets_epochs_from_the_arms_own_distill_output(tmp_path: Path, objective: str,
                                                                  expected: int) -> None:
    reference = tmp_path / "reference"
    (reference / "results").mkdir(parents=True)
    (reference / "results" / "1b1-i1-train-a1.json").write_text(json.dumps({"metrics": {"steps": 71}}))
    distill = tmp_path / "store" / "1b1-i1-distill"
    distill.mkdir(parents=True)
    (distill / "result.json").write_text(json.dumps({"metrics": {"examples": 120, "pairs": 16}}))
    config = train_config(tmp_path, objective)
    record = StageRecord(key="1b1-i1-train", stage="train", phase=TrainingPhase.quick_fix, iteration=1,
                         job_name="x")
    adjusted = arms.equal_steps(reference, lambda _: None)(record, config)
    # sft: 120 examples / 8 = 15 steps an epoch -> 5 epochs (75 >= 71); preference: 16 pairs -> 2 an epoch -> 36.
    assert adjusted.params.training.epochs == expected
    assert adjusted.params.training.model_dump(exclude={"epochs"}) == config.params.training.model_dump(
        exclude={"epochs"})
    other = config.model_copy(update={"stage": "evaluate"})
    assert arms.equal_steps(reference, lambda _: None)(record, other) is other


def test_link_shared_points_later_arms_at_the_first_arms_finished_stages(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for key in arms.SHARED_KEYS:
        (store / "default" / "demo-gold-sft" / key).mkdir(parents=True)
    with pytest.raises(SystemExit, match="has not finished"):
        arms.link_shared(store, "demo-gold-sft", "demo-preference")
    for key in arms.SHARED_KEYS:
        (store / "default" / "demo-gold-sft" / key / "result.json").write_text("{}")
    arms.link_shared(store, "demo-gold-sft", "demo-preference")
    arms.link_shared(store, "demo-gold-sft", "demo-preference")  # resuming: links already there
    for key in arms.SHARED_KEYS:
        link = store / "default" / "demo-preference" / key
        assert link.is_symlink() and (link / "result.json").is_file()
    assert not (store / "default" / "demo-preference" / "1b1-i1-distill").exists()


def row(pid: str, *, agreement: float, correct: int, greedy: bool, majority: bool, gap: float, unanimous: bool,
        success: bool, right: float | None = None, wrong: float | None = None) -> dict:
    return {"problemId": pid, "domain": "math", "pairwiseAgreement": agreement, "samplesCorrect": correct,
            "samplesGraded": 8, "greedyCorrect": greedy, "majorityCorrect": majority, "selfConsistencyGap": gap,
            "consistent": unanimous, "success": success, "rightAgreement": right, "wrongAgreement": wrong}


def test_compare_pairs_each_measure_and_holm_adjusts_the_secondary_family() -> None:
    before = [row(f"p{i}", agreement=0.1, correct=i % 3, greedy=i % 4 == 0, majority=False, gap=-(i % 3) / 8,
                  unanimous=False, success=False, wrong=0.1) for i in range(12)]
    after = [row(f"p{i}", agreement=0.1 + 0.05 * (i % 5), correct=i % 3 + 1, greedy=i % 2 == 0, majority=i < 3,
                 gap=(1.0 if i < 3 else 0.0) - (i % 3 + 1) / 8, unanimous=i == 0, success=i < 2, wrong=0.2)
             for i in range(12)] + [row("only-after", agreement=1.0, correct=8, greedy=True, majority=True, gap=0.0,
                                        unanimous=True, success=True)]
    figures = arms_table.compare(before, after)
    assert figures["n"] == 12  # the problem only in the final evaluation is not paired
    expected = graded_paired([(0.1, 0.1 + 0.05 * (i % 5)) for i in range(12)], resamples=10_000, seed=20)
    assert figures["primary"]["difference"] == pytest.approx(round(expected.difference, 4))
    assert figures["primary"]["low"] == round(expected.low, 4)
    sec = figures["secondary"]
    assert sec["pass@1"]["difference"] == pytest.approx(1 / 8, abs=1e-4)  # every problem one more right sample
    assert (sec["accuracy"]["better"], sec["accuracy"]["worse"]) == (3, 0)  # i = 2, 6, 10
    assert (sec["failure -> success"]["better"], sec["unanimity"]["better"]) == (2, 1)
    assert sec["wrong agreement"]["difference"] == pytest.approx(0.1)
    assert sec["right agreement"]["n"] == 0  # never defined before: nothing to pair
    assert set(sec) == set(arms_table.SECONDARY)
    for name, change in sec.items():
        assert change["pHolm"] >= change["pValue"], name
    smallest = min(sec, key=lambda n: sec[n]["pValue"])
    assert sec[smallest]["pHolm"] == pytest.approx(min(1.0, 8 * sec[smallest]["pValue"]), abs=1e-6)
    assert figures["levels"]["accuracy"] == {"before": 3 / 12, "after": 7 / 13}
    gap_before = sum(-(i % 3) / 8 for i in range(12)) / 12
    assert math.isclose(sec["self-consistency gap"]["before"], gap_before, abs_tol=1e-4)
    assert figures["gapClosed"] is None  # a negative baseline gap has nothing to close


def test_budget_cut_off_rule_and_choice() -> None:
    words = "step " * 300
    samples = [
        SimpleNamespace(text="4 + 4 = 8\n#### 8", tokens=8, truncated=False),  # ended early: never cut off
        SimpleNamespace(text=words + "#### 5", tokens=302, truncated=False),  # marker only after 300 tokens
        SimpleNamespace(text=words + words, tokens=512, truncated=True),  # no marker at all
    ]
    shares = arms_budget.shares_of(samples, str.split, " ".join)
    assert shares == {192: 2 / 3, 256: 2 / 3, 384: 1 / 3, 512: 1 / 3}
    assert arms_budget.choose(shares) == 512  # nothing under 10%: the largest, with its share reported
    assert arms_budget.choose({192: 0.2, 256: 0.09, 384: 0.05, 512: 0.0}) == 256
