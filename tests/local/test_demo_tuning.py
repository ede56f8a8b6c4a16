"""The demo tuning harness evaluates on scan-split problems 201-400 only, never on the eval split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from consistency_local import demo_tuning


def _gsm8k_rows(path: Path, count: int, tag: str) -> None:
    path.write_text("".join(json.dumps({"question": f"{tag} question {i}: how many apples?",
                                        "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                            for i in range(count)))


def test_tuning_problems_are_scan_rows_201_to_400_and_never_the_eval_split(tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "tune"
    (run_dir / "configs").mkdir(parents=True)
    _gsm8k_rows(tmp_path / "scan.jsonl", 450, "scan")
    prepare = {"params": {"datasets": [
        {"name": "demo-scan", "uri": str(tmp_path / "scan.jsonl"), "format": "gsm8k", "roles": ["scan"],
         "limit": 200},
        {"name": "demo-eval", "uri": str(tmp_path / "missing-eval.jsonl"), "format": "gsm8k", "roles": ["eval"]},
    ]}}
    (run_dir / "configs" / "prepare-a1.json").write_text(json.dumps(prepare))

    path = demo_tuning.tuning_problems(run_dir, out)

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 200
    assert rows[0]["prompt"].startswith("scan question 200:") and rows[-1]["prompt"].startswith("scan question 399:")
    assert {row["source"] for row in rows} == {"demo-scan"}


def test_overrides_split_1b1_and_1b2_knobs_and_parse_values() -> None:
    first, second = demo_tuning.overrides(["method=full", "learningRate=3e-4", "lora.r=8", "1b2.epochs=2"])
    assert first == {"method": "full", "learningRate": 3e-4, "lora.r": 8}
    assert second == {"epochs": 2}
    tree: dict = {"lora": {"r": 16, "alpha": 32}}
    demo_tuning.set_path(tree, "lora.r", 8)
    assert tree == {"lora": {"r": 8, "alpha": 32}}
    with pytest.raises(SystemExit, match="key=value"):
        demo_tuning.overrides(["method"])


def test_a_missing_demo_run_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="make demo"):
        demo_tuning.read_config(tmp_path, "prepare")
