"""The final report stage against a real S3 server (moto): report + figures, the adapter with its model
card, the merged 16-bit export, and `consistency report --store` redrawing it on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from consistency_core.spec import parse_spec
from consistency_core.stage_wire import StageConfig, join_uri
from consistency_core.status import CampaignPhase, CampaignStatus, EvaluationRecord, StageRecord
from consistency_testkit.fixtures import run, single_torch_thread, tiny_model_dir

pytest.importorskip("matplotlib")
pytest.importorskip("peft")


def eval_rows(n: int, correct: int, consistent: int) -> list[dict[str, Any]]:
    return [{"problemId": f"p{i}", "domain": "math", "stratum": "easy", "greedyCorrect": i < correct,
             "consistent": i < consistent, "success": i < correct and i < consistent} for i in range(n)]


def make_adapter(model_dir: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    # init_lora_weights=False: a non-zero delta, so merging visibly changes the weights.
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def campaign(store: Any, root: str, model_dir: Path, tmp: Path, merged: bool) -> tuple[StageConfig, str]:
    """A succeeded campaign's evaluation reports and adapter in the store, and its report stage config."""
    reports = {}
    for key, correct, consistent in (("baseline-evaluate", 40, 20), ("1b2-evaluate", 70, 60)):
        rows_uri = join_uri(root, key, "per_problem.jsonl")
        store.write_jsonl(rows_uri, eval_rows(100, correct, consistent))
        reports[key] = join_uri(root, key, "report.json")
        store.write_json(reports[key], {"perProblemUri": rows_uri})
    adapter_uri = join_uri(root, "1b2-train", "adapter")
    store.upload_dir(make_adapter(model_dir, tmp / "adapter"), adapter_uri)
    spec = parse_spec({"model": {"uri": str(model_dir)}, "store": {"uri": "s3://x"},
                       "export": {"merged": merged, "dtype": "bfloat16"}})
    status = CampaignStatus(
        phase=CampaignPhase.succeeded, message="succeeded", adapter=adapter_uri,
        evaluations=[
            EvaluationRecord(phase="baseline", iteration=0, consistency=0.2, accuracy={"math": 0.4}, problems=100,
                             report=reports["baseline-evaluate"]),
            EvaluationRecord(phase="1B.2", iteration=1, consistency=0.6, accuracy={"math": 0.7}, problems=100,
                             report=reports["1b2-evaluate"])],
        stages=[StageRecord(key="1b2-evaluate", stage="evaluate", phase="1B.2", iteration=1,
                            job_name="c-1b2-evaluate", outcome="Succeeded", start_time="2026-01-01T00:00:00Z",
                            end_time="2026-01-01T00:10:00Z", gpu_hours=0.1667)])
    config = StageConfig.model_validate({
        "campaign": "demo", "namespace": "team-a", "key": "report", "stage": "report", "phase": "1B.2",
        "iteration": 1, "seed": 1, "store": {"uri": root}, "outputUri": join_uri(root, "report"),
        "model": {"uri": str(model_dir)},
        "params": {"kind": "report", "spec": spec.to_wire(), "status": status.to_wire(), "adapterUri": adapter_uri},
    })
    return config, adapter_uri


@pytest.mark.learning
def test_report_stage_writes_report_model_card_adapter_and_merged_model(s3_bucket: str, tmp_path: Path) -> None:
    import torch
    from consistency_worker.store.facade import open_store
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = f"{s3_bucket}/runs/team-a/demo"
    store = open_store(root)
    model_dir = tiny_model_dir()
    with single_torch_thread():
        config, adapter_uri = campaign(store, root, model_dir, tmp_path, merged=True)
        result = run(config, tmp_path / "scratch")
    assert result.ok, result.message
    out = join_uri(root, "report")
    assert result.outputs == {"report": f"{out}/report.md", "adapter": f"{out}/adapter",
                              "modelCard": f"{out}/adapter/README.md", "merged": f"{out}/merged"}

    report = store.read_text(result.outputs["report"])
    assert "# Campaign report: team-a/demo" in report and "## Before / after" in report
    assert "40.0% [" in report and "70.0% [" in report  # accuracies with their 95% intervals
    figures = [u.rsplit("/", 1)[1] for u in store.list(out) if u.endswith(".png")]
    assert "metrics.png" in figures and all(f"]({f})" in report for f in figures)
    assert store.read_bytes(f"{out}/metrics.png")[:8] == b"\x89PNG\r\n\x1a\n"

    card = store.read_text(result.outputs["modelCard"])
    assert card.startswith("---\nlibrary_name: peft") and f"`{model_dir}`" in card
    assert "gsm8k-train" in card and "1B.2 expansion" in card and "Promotion gate" in card
    assert "Per problem, base model -> 1B.2: 40 failure -> success, 0 success -> failure" in card
    assert "| metric | base model | with this adapter (1B.2) |" in card
    assert "| math accuracy | 40.0% [" in card
    shipped = {u.rsplit("/", 1)[1] for u in store.list(result.outputs["adapter"])}
    assert shipped == {"README.md", *(u.rsplit("/", 1)[1] for u in store.list(adapter_uri))}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= shipped

    merged_dir = store.download_dir(result.outputs["merged"], tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer_config.json").is_file()
    merged_config = json.loads((merged_dir / "config.json").read_text())
    assert (merged_config.get("dtype") or merged_config.get("torch_dtype")) == "bfloat16"
    # The merged weights compute what base + adapter compute (in the same 16-bit dtype).
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad(), single_torch_thread():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.bfloat16)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        plain = base(ids).logits.float()
        with_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter")(ids).logits.float()
        merged_logits = merged(ids).logits.float()
    # bf16 rounds each of the two paths differently, so compare the merge's error with the adapter's own
    # effect (scale-free) rather than with a fixed absolute tolerance.
    effect = (with_adapter - plain).abs().mean().item()
    error = (merged_logits - with_adapter).abs().mean().item()
    assert effect > 0.05, effect  # the adapter does something
    assert error < 0.2 * effect, (error, effect)

    # `consistency report --store` redraws the same report on this machine from the store.
    from consistency_local.cli import main

    local = tmp_path / "laptop"
    assert main(["report", "--store", root, "--out", str(local)]) == 0
    redrawn = (local / "report" / "report.md").read_text()
    assert redrawn == report
    assert (local / "report" / "metrics.png").is_file()


def test_report_store_cli_names_what_is_missing(s3_bucket: str, tmp_path: Path, capsys: Any) -> None:
    from consistency_local.cli import main

    assert main(["report", "--store", f"{s3_bucket}/runs/team-a/never-ran", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no report stage output under" in err and "never-ran/report" in err
    assert main(["report", "--store", "s3://bucket-only"]) == 2
    assert "expected <store uri>/<namespace>/<campaign>" in capsys.readouterr().err
