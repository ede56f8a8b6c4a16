"""A real, tiny, fast campaign for the local runner's tests.

The model is built with the demo builder (seconds) on problems whose answer is always 7: it learns
to answer "#### 7", so it is right on the problems whose gold is 7 and wrong on the others. That
gives every stage real work (correct majority answers to distill in 1B.1, failures to learn from in
1B.2, a measurable accuracy for the gate) without a model that takes minutes to train.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from consistency_local.demo_data import generate_splits, write_jsonl
from consistency_local.demo_model import DemoModelConfig, build_demo_model

CONSTANT = "7"
MODEL_CONFIG = DemoModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, steps=40,
                               batch_size=8, warmup_steps=4, learning_rate=1e-2, max_positions=512)


def _rows(problems, gold_for) -> list[dict[str, str]]:
    rows = []
    for i, p in enumerate(problems):
        gold = gold_for(i)
        rows.append({"question": p.question, "answer": f"The answer is {gold}.\n#### {gold}"})
    return rows


def build_constant_model(root: Path) -> Path:
    splits = generate_splits(11, {"pretrain": 96})
    pretrain = root / "pretrain.jsonl"
    write_jsonl(pretrain, _rows(splits["pretrain"], lambda i: CONSTANT))
    out = root / "model"
    build_demo_model(pretrain, out, MODEL_CONFIG, log=lambda _: None)
    return out


def write_data(root: Path) -> Path:
    """train: gold always 7 (the model is right); scan and eval: half 7, half not."""
    splits = generate_splits(12, {"train": 6, "scan": 6, "eval": 6})
    data = root / "data"
    write_jsonl(data / "train.jsonl", _rows(splits["train"], lambda i: CONSTANT))
    write_jsonl(data / "scan.jsonl", _rows(splits["scan"], lambda i: CONSTANT if i % 2 else str(20 + i)))
    write_jsonl(data / "eval.jsonl", _rows(splits["eval"], lambda i: CONSTANT if i % 2 else str(30 + i)))
    return data


def _phase(**extra: object) -> dict[str, object]:
    return {"samples": 2, "maxNewTokens": 20, "epochs": 1, "batchSize": 4, "gradientAccumulation": 1,
            "maxSeqLen": 256, "learningRate": 0.001, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **extra}


def campaign_doc(model: Path, data: Path, *, name: str, math_gate: float, baseline: bool = True,
                 max_iterations: int = 2, store: str = "artifacts") -> dict:
    return {
        "apiVersion": "consistency.dev/v1alpha1",
        "kind": "ConsistencyTraining",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": str(model), "dtype": "float32"},
            "store": {"uri": store},
            "backend": "hf",
            "datasets": [
                {"name": "t-train", "uri": str(data / "train.jsonl"), "format": "gsm8k", "roles": ["train"]},
                {"name": "t-scan", "uri": str(data / "scan.jsonl"), "format": "gsm8k", "roles": ["scan"]},
                {"name": "t-eval", "uri": str(data / "eval.jsonl"), "format": "gsm8k", "roles": ["eval"]},
            ],
            "quickFix": _phase(selection=[{"dataset": "t-train", "count": 4}], minAgreement=0.5),
            "expansion": _phase(scanDatasets=["t-scan"], maxExamples=20),
            "evaluation": {"datasets": ["t-eval"], "samples": 2, "maxNewTokens": 20, "baseline": baseline},
            "thresholds": {"consistency": 0.0, "accuracy": {"math": math_gate}},
            "retry": {"maxIterations": max_iterations, "temperatureSchedule": [0.3]},
            "seed": 3,
        },
    }


def write_campaign(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def statuses(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())
