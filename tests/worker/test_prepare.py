"""prepare on the real GSM8K / MBPP files (small counts), leakage, malformed rows, s3:// sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from consistency_core.stage_wire import (
    MANIFEST,
    PREPARE_EVAL,
    PREPARE_SCAN,
    PREPARE_SELECTION,
    RESULT,
    StageConfig,
    StageResult,
)
from consistency_worker.data.problems import Problem
from consistency_worker.job.context import StageContext
from consistency_worker.stages import PermanentStageError, run_stage
from consistency_worker.stages.prepare import REPORT
from consistency_worker.store.facade import open_store

from tests.conftest import make_bucket


def config_for(store_uri: str, datasets: list[dict[str, Any]], selection: list[dict[str, Any]],
               scan: list[str], evaluation: list[str], seed: int = 11) -> StageConfig:
    return StageConfig.model_validate({
        "campaign": "c", "key": "1b1-i1-prepare", "stage": "prepare", "phase": "1B.1", "iteration": 1,
        "seed": seed, "store": {"uri": store_uri}, "outputUri": f"{store_uri}/1b1-i1/prepare",
        "model": {"uri": "hf://x/y"},
        "params": {"kind": "prepare", "datasets": datasets, "selection": selection,
                   "scanDatasets": scan, "evalDatasets": evaluation},
    })


def run(config: StageConfig, tmp_path: Path) -> StageResult:
    return run_stage(StageContext.create(config, scratch_dir=tmp_path / "scratch"))


def real_datasets(shared: Path) -> list[dict[str, Any]]:
    return [
        {"name": "gsm8k-train", "uri": str(shared / "gsm8k/train.jsonl"), "format": "gsm8k",
         "roles": ["train", "scan"], "limit": 400},
        {"name": "gsm8k-test", "uri": str(shared / "gsm8k/test.jsonl"), "format": "gsm8k", "roles": ["eval"],
         "limit": 60},
        {"name": "mbpp-train", "uri": str(shared / "mbpp/mbpp.jsonl"), "format": "mbpp", "split": "train",
         "roles": ["train", "scan"], "limit": 80},
        {"name": "mbpp-test", "uri": str(shared / "mbpp/mbpp.jsonl"), "format": "mbpp", "split": "test",
         "roles": ["eval"], "limit": 40},
    ]


def test_prepare_real_gsm8k_and_mbpp(shared_datasets: Path, tmp_path: Path) -> None:
    store_uri = str(tmp_path / "store")
    config = config_for(
        store_uri, real_datasets(shared_datasets),
        selection=[{"dataset": "gsm8k-train", "count": 30, "strata": {"easy": 1, "medium": 1, "hard": 1}},
                   {"dataset": "mbpp-train", "count": 10}],
        scan=["gsm8k-train", "mbpp-train"], evaluation=["gsm8k-test", "mbpp-test"],
    )
    result = run(config, tmp_path)
    assert result.ok
    m = result.metrics
    assert (m["selection"], m["scan"], m["eval"], m["malformed"]) == (40, 480, 100, 0)
    assert m["perDataset"]["gsm8k-train"] == {"rows": 400, "problems": 400, "malformed": 0, "overlapExcluded": 0}
    assert m["ngramOverlap"] == {"count": 0, "examples": []}
    assert m["skeletonOverlap"] == {"count": 0, "examples": []}
    # Equal stratum weights: 10 easy, 10 medium, 10 hard GSM8K problems (each stratum has >= 10).
    assert m["strata"]["math"] == {"easy": 10, "hard": 10, "medium": 10}
    assert sum(m["strata"]["code"].values()) == 10

    store = open_store(store_uri)
    out = f"{store_uri}/1b1-i1/prepare"
    selection = [Problem.model_validate(r) for r in store.read_jsonl(f"{out}/{PREPARE_SELECTION}")]
    scan = store.read_jsonl(f"{out}/{PREPARE_SCAN}")
    evaluation = [Problem.model_validate(r) for r in store.read_jsonl(f"{out}/{PREPARE_EVAL}")]
    assert len(selection) == 40 and len({p.id for p in selection}) == 40
    assert len(scan) == 480 and len(evaluation) == 100
    assert {p.domain for p in selection} == {"math", "code"}
    assert all(p.answer for p in selection if p.domain == "math")
    assert all(p.tests for p in evaluation if p.domain == "code")
    mbpp_ids = [int(p.id.split("/")[1]) for p in selection if p.domain == "code"]
    assert all(601 <= i <= 974 for i in mbpp_ids)  # MBPP's train split only

    report = store.read_json(f"{out}/{REPORT}")
    assert report["perDataset"]["mbpp-test"]["problems"] == 40
    manifest = store.read_json(f"{out}/{MANIFEST}")
    assert set(manifest["outputs"]) == {"selection", "scan", "eval", "report"}
    assert len(manifest["outputs"]["selection"]["sha256"]) == 64
    assert manifest["inputs"]["gsm8k-train"]["uri"].endswith("gsm8k/train.jsonl")
    assert manifest["config"]["key"] == "1b1-i1-prepare" and "load:gsm8k-train" in manifest["timings"]
    assert store.read_json(f"{out}/{RESULT}")["metrics"]["selection"] == 40

    # Same seed, fresh directory: the same selection, byte for byte; another seed: a different one.
    again = config_for(str(tmp_path / "again"), real_datasets(shared_datasets),
                       selection=[{"dataset": "gsm8k-train", "count": 30,
                                   "strata": {"easy": 1, "medium": 1, "hard": 1}},
                                  {"dataset": "mbpp-train", "count": 10}],
                       scan=["gsm8k-train", "mbpp-train"], evaluation=["gsm8k-test", "mbpp-test"])
    run(again, tmp_path)
    same = (tmp_path / "again/1b1-i1/prepare" / PREPARE_SELECTION).read_bytes()
    assert same == (tmp_path / "store/1b1-i1/prepare" / PREPARE_SELECTION).read_bytes()
    other = again.model_copy(update={"seed": 12, "output_uri": str(tmp_path / "other")})
    run(other, tmp_path)
    assert (tmp_path / "other" / PREPARE_SELECTION).read_bytes() != same


def _gsm8k_rows(path: Path, n: int, start: int = 0) -> list[str]:
    with path.open() as fh:
        return [line for i, line in enumerate(fh) if start <= i < start + n]


def test_leakage_is_refused_with_examples(shared_datasets: Path, tmp_path: Path) -> None:
    test_rows = _gsm8k_rows(shared_datasets / "gsm8k/test.jsonl", 20)
    train_rows = _gsm8k_rows(shared_datasets / "gsm8k/train.jsonl", 30)
    # Two test questions sneak into the training file, reformatted (case, spacing).
    leaked = []
    for line in test_rows[3:5]:
        row = json.loads(line)
        row["question"] = "  " + row["question"].upper().replace(" ", "  ")
        leaked.append(json.dumps(row) + "\n")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(train_rows + leaked))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(test_rows))
    datasets = [
        {"name": "mytrain", "uri": str(train), "format": "gsm8k", "roles": ["train", "scan"]},
        {"name": "mytest", "uri": str(test), "format": "gsm8k", "roles": ["eval"]},
    ]
    config = config_for(str(tmp_path / "store"), datasets, [{"dataset": "mytrain", "count": 5}], ["mytrain"],
                        ["mytest"])
    with pytest.raises(PermanentStageError) as info:
        run(config, tmp_path)
    message = str(info.value)
    assert "2 training/scan problem(s)" in message
    assert "mytrain/30 == mytest/3" in message and "mytrain/31 == mytest/4" in message
    # Refused before writing anything: nothing for the next stage to pick up.
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.jsonl"))


def test_leakage_guard_covers_eval_datasets_not_evaluated_this_run(shared_datasets: Path,
                                                                    tmp_path: Path) -> None:
    test_rows = _gsm8k_rows(shared_datasets / "gsm8k/test.jsonl", 10)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(_gsm8k_rows(shared_datasets / "gsm8k/train.jsonl", 10) + test_rows[:1]))
    held_out = tmp_path / "held-out.jsonl"
    held_out.write_text("".join(test_rows))
    other_eval = tmp_path / "other.jsonl"
    other_eval.write_text("".join(_gsm8k_rows(shared_datasets / "gsm8k/test.jsonl", 5, start=100)))
    datasets = [
        {"name": "mytrain", "uri": str(train), "format": "gsm8k", "roles": ["scan"]},
        {"name": "held-out", "uri": str(held_out), "format": "gsm8k", "roles": ["eval"]},
        {"name": "other", "uri": str(other_eval), "format": "gsm8k", "roles": ["eval"]},
    ]
    config = config_for(str(tmp_path / "store"), datasets, [], ["mytrain"], ["other"])
    with pytest.raises(PermanentStageError, match="mytrain/10 == held-out/0"):
        run(config, tmp_path)


def test_near_copies_sharing_a_13_gram_are_left_out_and_listed(shared_datasets: Path, tmp_path: Path) -> None:
    """The whole GSM8K train split scanned against the whole test split: four train problems share a
    13-word run with a test problem (real near-duplicates in GSM8K). MBPP is checked against HumanEval
    too: an MBPP-style task that quotes a HumanEval docstring is caught."""
    mbpp = tmp_path / "mbpp.jsonl"
    rows = [json.loads(line) for line in (shared_datasets / "mbpp/mbpp.jsonl").read_text().splitlines()]
    rows[700]["text"] = ("Write a function to check if in given list of numbers, are any two numbers closer to "
                         "each other than given threshold.")
    mbpp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets = [
        {"name": "gsm8k-train", "uri": str(shared_datasets / "gsm8k/train.jsonl"), "format": "gsm8k",
         "roles": ["train", "scan"]},
        {"name": "gsm8k-test", "uri": str(shared_datasets / "gsm8k/test.jsonl"), "format": "gsm8k",
         "roles": ["eval"]},
        {"name": "mbpp-train", "uri": str(mbpp), "format": "mbpp", "split": "train", "roles": ["train", "scan"]},
        {"name": "humaneval", "uri": "builtin://humaneval", "format": "humaneval", "roles": ["eval"]},
    ]
    store_uri = str(tmp_path / "store")
    config = config_for(store_uri, datasets, [{"dataset": "gsm8k-train", "count": 7469},
                                              {"dataset": "mbpp-train", "count": 373}],
                        ["gsm8k-train", "mbpp-train"], ["gsm8k-test", "humaneval"])
    result = run(config, tmp_path)
    overlap = result.metrics["ngramOverlap"]
    pairs = [(e["trainId"], e["evalId"]) for e in overlap["examples"]]
    assert overlap["count"] == 5
    assert pairs == [("gsm8k-train/20", "gsm8k-test/632"), ("gsm8k-train/406", "gsm8k-test/581"),
                     ("gsm8k-train/1314", "gsm8k-test/602"), ("gsm8k-train/5162", "gsm8k-test/602"),
                     ("mbpp-train/701", "humaneval/0")]
    assert "rose" in overlap["examples"][0]["ngram"]
    assert result.metrics["perDataset"]["gsm8k-train"]["overlapExcluded"] == 4
    # left out of the pools before drawing: all 7473 - 4 remaining train problems, none of the five
    out = f"{store_uri}/1b1-i1/prepare"
    store = open_store(store_uri)
    used = {r["id"] for name in (PREPARE_SELECTION, PREPARE_SCAN) for r in store.read_jsonl(f"{out}/{name}")}
    assert len(used) == 7469 + 373 and not used & {a for a, _ in pairs}
    report = store.read_json(f"{out}/{REPORT}")
    assert report["ngramOverlap"]["n"] == 13 and report["ngramOverlap"]["count"] == 5


def test_malformed_rows_are_counted_and_reported(shared_datasets: Path, tmp_path: Path) -> None:
    good = _gsm8k_rows(shared_datasets / "gsm8k/train.jsonl", 20)
    bad = [
        "{this is not json\n",
        json.dumps({"question": "How many?"}) + "\n",
        json.dumps({"question": "How many?", "answer": "no final line"}) + "\n",
    ]
    data = tmp_path / "dirty.jsonl"
    data.write_text("".join(good[:5] + bad + good[5:]))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(_gsm8k_rows(shared_datasets / "gsm8k/test.jsonl", 5)))
    datasets = [
        {"name": "dirty", "uri": str(data), "format": "gsm8k", "roles": ["train"]},
        {"name": "t", "uri": str(test), "format": "gsm8k", "roles": ["eval"]},
    ]
    result = run(config_for(str(tmp_path / "store"), datasets, [{"dataset": "dirty", "count": 20}], [], ["t"]),
                 tmp_path)
    assert result.metrics["malformed"] == 3
    assert result.metrics["selection"] == 20
    assert result.metrics["perDataset"]["dirty"] == {"rows": 23, "problems": 20, "malformed": 3,
                                                     "overlapExcluded": 0}
    examples = result.metrics["malformedExamples"]
    assert [e["row"] for e in examples] == [6, 7, 8]
    assert "invalid JSON" in examples[0]["reason"]
    assert "answer" in examples[1]["reason"]
    assert "####" in examples[2]["reason"]
    report = json.loads((tmp_path / "store/1b1-i1/prepare" / REPORT).read_text())
    assert [(r["dataset"], r["row"]) for r in report["malformed"]] == [("dirty", 6), ("dirty", 7), ("dirty", 8)]
    assert len(result.to_termination_message()) <= 4096


def test_many_dirty_datasets_still_report_counts(shared_datasets: Path, tmp_path: Path) -> None:
    good = _gsm8k_rows(shared_datasets / "gsm8k/train.jsonl", 3)
    datasets = []
    for i in range(60):
        path = tmp_path / f"d{i}.jsonl"
        path.write_text("".join([*good, "{broken " + "x" * 200 + "\n"]).replace("Natalia", f"Natalia{i}"))
        datasets.append({"name": f"dataset-number-{i}", "uri": str(path), "format": "gsm8k", "roles": ["scan"]})
    test = tmp_path / "test.jsonl"
    test.write_text("".join(_gsm8k_rows(shared_datasets / "gsm8k/test.jsonl", 3)))
    datasets.append({"name": "t", "uri": str(test), "format": "gsm8k", "roles": ["eval"]})
    result = run(config_for(str(tmp_path / "store"), datasets, [], [d["name"] for d in datasets[:-1]], ["t"]),
                 tmp_path)
    message = json.loads(result.to_termination_message())
    # Per-dataset detail no longer fits in 4 KiB; the counts the control plane reads still arrive.
    assert message["metrics"]["scan"] == 180 and message["metrics"]["malformed"] == 60
    assert "perDataset" not in message["metrics"]
    report = json.loads((tmp_path / "store/1b1-i1/prepare" / REPORT).read_text())
    assert len(report["perDataset"]) == 61


def test_bad_references_and_counts_are_permanent(shared_datasets: Path, tmp_path: Path) -> None:
    datasets = [
        {"name": "g", "uri": str(shared_datasets / "gsm8k/test.jsonl"), "format": "gsm8k", "roles": ["train"],
         "limit": 20},
        {"name": "e", "uri": str(shared_datasets / "gsm8k/train.jsonl"), "format": "gsm8k", "roles": ["eval"],
         "limit": 5},
    ]
    with pytest.raises(PermanentStageError, match=r"params.selection\[0\] \(g, count 50\): cannot sample 50"):
        run(config_for(str(tmp_path / "s1"), datasets, [{"dataset": "g", "count": 50}], [], ["e"]), tmp_path)
    with pytest.raises(PermanentStageError, match=r"params.scanDatasets\[0\]: unknown dataset 'nope'"):
        run(config_for(str(tmp_path / "s2"), datasets, [{"dataset": "g", "count": 5}], ["nope"], ["e"]),
            tmp_path)
    with pytest.raises(PermanentStageError, match=r"params.selection\[0\].dataset: dataset 'e' lacks role 'train'"):
        run(config_for(str(tmp_path / "s2"), datasets, [{"dataset": "e", "count": 5}], [], ["e"]), tmp_path)
    missing = [{**datasets[0], "uri": str(tmp_path / "absent.jsonl")}, datasets[1]]
    with pytest.raises(ValueError, match=r"absent\.jsonl"):
        run(config_for(str(tmp_path / "s3"), missing, [{"dataset": "g", "count": 5}], [], ["e"]), tmp_path)


def test_dataset_and_outputs_on_s3(s3_env: dict[str, str], shared_datasets: Path, tmp_path: Path) -> None:
    bucket = make_bucket(s3_env["AWS_ENDPOINT_URL"])
    store = open_store(f"s3://{bucket}")
    train = "".join(_gsm8k_rows(shared_datasets / "gsm8k/train.jsonl", 50))
    test = "".join(_gsm8k_rows(shared_datasets / "gsm8k/test.jsonl", 10))
    store.write_text(f"s3://{bucket}/data/train.jsonl", train)
    store.write_text(f"s3://{bucket}/data/test.jsonl", test)
    datasets = [
        {"name": "g", "uri": f"s3://{bucket}/data/train.jsonl", "format": "gsm8k", "roles": ["train", "scan"]},
        {"name": "e", "uri": f"s3://{bucket}/data/test.jsonl", "format": "gsm8k", "roles": ["eval"]},
    ]
    config = config_for(f"s3://{bucket}/run", datasets, [{"dataset": "g", "count": 8}], ["g"], ["e"])
    result = run(config, tmp_path)
    assert (result.metrics["selection"], result.metrics["scan"], result.metrics["eval"]) == (8, 50, 10)
    out = f"s3://{bucket}/run/1b1-i1/prepare"
    assert len(store.read_jsonl(f"{out}/{PREPARE_SELECTION}")) == 8
    assert result.outputs["scan"] == f"{out}/{PREPARE_SCAN}"
    # A second run finds result.json in S3 and returns it without work.
    assert run(config, tmp_path) == result


def test_skeleton_overlap_is_reported(tmp_path: Path) -> None:
    """A train problem that is an eval problem with other names and numbers is counted (not refused); the
    demo's generated splits, drawn from disjoint skeletons, read 0."""
    from consistency_local.demo_data import write_splits

    def gsm8k(path: Path, questions: list[str]) -> str:
        path.write_text("".join(json.dumps({"question": q, "answer": "x\n#### 1"}) + "\n" for q in questions))
        return str(path)

    train = gsm8k(tmp_path / "train.jsonl", ["Mia has 5 apples. Then Mia buys 3 more apples. How many now?",
                                             "A train leaves at 3 pm and travels 60 miles. When does it arrive?"])
    test = gsm8k(tmp_path / "test.jsonl", ["Ben has 12 apples. Then Ben buys 7 more apples. How many now?"])
    datasets = [{"name": "tr", "uri": train, "format": "gsm8k", "roles": ["train", "scan"]},
                {"name": "te", "uri": test, "format": "gsm8k", "roles": ["eval"]}]
    result = run(config_for(str(tmp_path / "store"), datasets, [{"dataset": "tr", "count": 2}], ["tr"], ["te"]),
                 tmp_path)
    overlap = result.metrics["skeletonOverlap"]
    assert overlap["count"] == 1 and [(e["trainId"], e["evalId"]) for e in overlap["examples"]] == [("tr/0", "te/0")]
    report = json.loads((tmp_path / "store" / "1b1-i1" / "prepare" / REPORT).read_text())
    assert report["skeletonOverlap"]["count"] == 1 and report["ngramOverlap"]["count"] == 0

    paths = write_splits(tmp_path / "demo", seed=3, sizes={"train": 120, "scan": 60, "eval": 80})
    datasets = [{"name": "tr", "uri": str(paths["train"]), "format": "gsm8k", "roles": ["train"]},
                {"name": "sc", "uri": str(paths["scan"]), "format": "gsm8k", "roles": ["scan"]},
                {"name": "te", "uri": str(paths["eval"]), "format": "gsm8k", "roles": ["eval"]}]
    demo = run(config_for(str(tmp_path / "store2"), datasets, [{"dataset": "tr", "count": 120}], ["sc"], ["te"]),
               tmp_path)
    assert demo.metrics["skeletonOverlap"]["count"] == 0 and demo.metrics["ngramOverlap"]["count"] == 0
