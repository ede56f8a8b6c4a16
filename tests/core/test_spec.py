import pytest
from consistency_core.spec import SpecError, parse_spec

from .helpers import minimal_spec


def test_defaults_reproduce_phase_1b_plan():
    spec = minimal_spec()
    assert [(s.dataset, s.count) for s in spec.quick_fix.selection] == [("gsm8k-train", 500), ("mbpp-train", 164)]
    assert spec.quick_fix.samples == 5 and spec.quick_fix.epochs == 2
    assert spec.expansion.failure.max_agreement == 0.30 and spec.expansion.failure.include_wrong
    assert spec.expansion.max_examples == 2500 and spec.expansion.epochs == 2
    assert spec.thresholds.consistency == 0.60 and spec.thresholds.accuracy == {"math": 0.55}
    assert spec.retry.temperature_schedule == [0.2, 0.1]
    assert spec.evaluation.datasets == ["gsm8k-test", "humaneval"]


def test_wire_format_is_camel_case_and_round_trips():
    spec = minimal_spec(quickFix={"minAgreement": 0.8})
    wire = spec.to_wire()
    assert wire["quickFix"]["minAgreement"] == 0.8
    assert parse_spec(wire) == spec


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"quickFix": {"samples": 0}}, "spec.quickFix.samples"),
        ({"thresholds": {"consistency": 1.5}}, "spec.thresholds.consistency"),
        ({"quickFix": {"selection": [{"dataset": "nope", "count": 3}]}}, "spec.quickFix.selection[0].dataset"),
        ({"evaluation": {"datasets": ["gsm8k-train"]}}, "spec.evaluation.datasets[0]"),
        ({"modle": {"uri": "x"}}, "spec.modle"),
        ({"thresholds": {"accuracy": {"poetry": 0.5}}}, "spec.thresholds.accuracy"),
        ({"budget": {"gpuHourUsd": -1}}, "spec.budget.gpuHourUsd"),
        ({"retry": {"temperatureSchedule": [0.2, 0.0]}}, "spec.retry.temperatureSchedule[1]"),
        ({"quickFix": {"temperature": 0.01}}, "spec.quickFix.temperature"),
        ({"evaluation": {"temperature": 0}}, "spec.evaluation.temperature"),
        ({"expansion": {"temperature": 0.04}}, "spec.expansion.temperature"),
        ({"model": {"uri": "hf://org/m", "tokenSecret": "Not_A_Name"}}, "spec.model.tokenSecret"),
    ],
)
def test_validation_errors_name_the_field(patch, field):
    with pytest.raises(SpecError) as err:
        minimal_spec(**patch)
    assert field in str(err.value)


def test_missing_required_fields_are_named():
    with pytest.raises(SpecError) as err:
        parse_spec({})
    assert "spec.model" in str(err.value) and "spec.store" in str(err.value)


def test_jsonl_dataset_needs_field_mapping_and_eval_cannot_train():
    with pytest.raises(SpecError, match="fields"):
        minimal_spec(datasets=[{"name": "mine", "uri": "/x.jsonl", "format": "jsonl", "roles": ["train"]}])
    with pytest.raises(SpecError, match="leakage"):
        minimal_spec(datasets=[{"name": "t", "uri": "/x", "format": "gsm8k", "roles": ["eval", "train"]}])


def test_duplicate_dataset_names_rejected():
    ds = {"name": "a", "uri": "/x", "format": "gsm8k", "roles": ["train"]}
    with pytest.raises(SpecError, match=r"spec.datasets\[1\].name"):
        minimal_spec(datasets=[ds, ds])


def test_cpu_stages_keep_their_defaults_under_partial_overrides():
    spec = minimal_spec(resources={"stages": {"prepare": {"memory": "16Gi"}, "distill": {"cpu": "3"},
                                              "train": {"memory": "64Gi"}}})
    stages = spec.resources.stages
    prepare, distill, train = stages.prepare, stages.distill, stages.train
    assert (prepare.gpus, prepare.cpu, prepare.memory, prepare.deadline_seconds) == (0, "2", "16Gi", 3600)
    assert (distill.gpus, distill.cpu, distill.memory, distill.deadline_seconds) == (0, "3", "8Gi", 3600)
    assert (train.gpus, train.cpu, train.memory, train.deadline_seconds) == (1, "4", "64Gi", 6 * 3600)


def test_epochs_of_the_last_iteration_must_stay_valid():
    # Iteration n trains quickFix.epochs + (n-1) * epochsStep epochs; the train stage would reject > 100.
    minimal_spec(quickFix={"epochs": 98}, retry={"maxIterations": 3, "epochsStep": 1})
    with pytest.raises(SpecError, match=r"spec\.retry\.epochsStep: 1B\.1 iteration 3 would train 101 epochs"):
        minimal_spec(quickFix={"epochs": 99}, retry={"maxIterations": 3, "epochsStep": 1})
