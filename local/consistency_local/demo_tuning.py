"""Tune the demo campaign's knobs without ever looking at its evaluation split.

    python -m consistency_local.demo_tuning --name base                       # the finished run's own 1B.1 knobs
    python -m consistency_local.demo_tuning --name full-3e-4 --set method=full --set learningRate=3e-4
    python -m consistency_local.demo_tuning --name f2 --set minAgreement=0.4 --with-1b2

Takes a finished `make demo` run (runs/demo): its 1B.1 generations on the train selection are reused, so a
variant costs one distill + train + evaluation (and, with --with-1b2, the 1B.2 generate/distill/train on
the campaign's scan problems), not a new 1B.1 generation. Every evaluation here is on scan-split problems
201-400: the campaign scans only the first 200 and never evaluates these, and the eval split is not read.
`--set key=value` overrides a 1B.1 knob (training: epochs, learningRate, method, batchSize, lora.r, ...;
filter: minAgreement, maxPerProblem); `--set 1b2.key=value` a 1B.2 training knob.

Prints one tuning-table row: consistency and greedy accuracy base -> 1B.1 (-> 1B.2) with the paired change.
Stages run as the local runner runs them (`python -m consistency_worker.cli <stage> --config ...`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from consistency_report.text import paired_text

from consistency_local.rundir import RunDir
from consistency_local.stage_process import run_stage_process

TUNE_OFFSET, TUNE_COUNT = 200, 200
FILTER_KEYS = frozenset({"minAgreement", "maxPerProblem"})


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def overrides(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        target = first
        if key.startswith("1b2."):
            target, key = second, key[4:]
        target[key] = parse_value(value)
    return first, second


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def read_config(run_dir: Path, key: str) -> dict[str, Any]:
    path = run_dir / "configs" / f"{key}-a1.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `make demo` to the end first")
    return json.loads(path.read_text(encoding="utf-8"))


def run_stage(config: dict[str, Any], out: Path, key: str) -> dict[str, Any]:
    """Run one stage with `config` (outputs under out/key) the way the local runner runs it, unless an
    earlier run of the same config passed."""
    from consistency_core.stage_wire import StageConfig
    from consistency_core.status import StageRecord, TrainingPhase

    stage_config = StageConfig.model_validate({**config, "key": key, "outputUri": str(out / key)})
    # A record names paths only; like the campaign's plan, it files the baseline evaluation under 1B.1.
    expansion = str(stage_config.phase) == TrainingPhase.expansion
    phase = TrainingPhase.expansion if expansion else TrainingPhase.quick_fix
    record = StageRecord(key=key, stage=stage_config.stage, phase=phase, iteration=max(stage_config.iteration, 1),
                         job_name=key)
    run_dir = RunDir(out)
    config_path = run_dir.config_path(record)
    earlier = run_dir.finished_result(record)
    if earlier is not None and earlier.ok and config_path.is_file() \
            and config_path.read_text() == stage_config.to_json():
        return earlier.model_dump(by_alias=True)
    started = time.monotonic()
    result = run_stage_process(run_dir, record, stage_config)
    if not result.ok:
        raise SystemExit(f"{key} failed: {result.message}; log: {run_dir.log_path(record)}")
    print(f"  {key}: {time.monotonic() - started:.0f}s", file=sys.stderr)
    return result.model_dump(by_alias=True)


def tuning_problems(run_dir: Path, out: Path) -> Path:
    """Scan-split problems 201-400 as problem JSONL (the campaign scans 1-200)."""
    from consistency_worker.data.loaders import load_problems

    path = out / f"scan-{TUNE_OFFSET + 1}-{TUNE_OFFSET + TUNE_COUNT}.jsonl"
    if path.is_file():
        return path
    prepare = read_config(run_dir, "prepare")
    scan = next(d for d in prepare["params"]["datasets"] if "scan" in d["roles"])
    problems = load_problems({**scan, "limit": TUNE_OFFSET + TUNE_COUNT}).problems[TUNE_OFFSET:]
    if len(problems) < TUNE_COUNT:
        raise SystemExit(f"{scan['uri']} has only {TUNE_OFFSET + len(problems)} problems")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.model_dump_json() + "\n" for p in problems), encoding="utf-8")
    return path


def evaluate(run_dir: Path, out: Path, key: str, problems: Path, adapter: str | None,
             baseline: str | None) -> dict[str, Any]:
    config = read_config(run_dir, "baseline-evaluate")
    params = {**config["params"], "problemsUri": str(problems)}
    if adapter:
        params["adapterUri"] = adapter
    if baseline:
        params["baselineReportUri"] = baseline
    return run_stage({**config, "params": params}, out, key)


def train(run_dir: Path, out: Path, key: str, source_key: str, data: str, knobs: dict[str, Any],
          init_adapter: str | None = None) -> dict[str, Any]:
    config = read_config(run_dir, source_key)
    params = json.loads(json.dumps(config["params"]))
    params["dataUri"] = data
    if init_adapter:
        params["initAdapterUri"] = init_adapter
    for name, value in knobs.items():
        set_path(params["training"], name, value)
    return run_stage({**config, "params": params}, out, key)


def figures(result: dict[str, Any]) -> dict[str, Any]:
    metrics = result["metrics"]
    return {"consistency": metrics["consistency"], "accuracy": metrics["accuracy"].get("math"),
            "paired": metrics.get("paired", {})}


def change_text(paired: dict[str, Any], name: str) -> str:
    change = paired.get(name)
    if not change:
        return ""
    return f"{paired_text(change)}, {change['better']} up / {change['worse']} down"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo-tuning"))
    parser.add_argument("--name", required=True, help="variant name (its outputs: <out>/<name>/)")
    parser.add_argument("--set", dest="pairs", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--with-1b2", action="store_true", help="also run 1B.2 on the campaign's scan problems")
    parser.add_argument("--1b1-from", dest="first_from", default=None, metavar="VARIANT",
                        help="take 1B.1 from an earlier variant (only 1b2.* knobs may then be set)")
    args = parser.parse_args(argv)
    run_dir, out = args.run_dir.resolve(), args.out.resolve()
    first, second = overrides(args.pairs)
    problems = tuning_problems(run_dir, out)
    base = evaluate(run_dir, out, "baseline", problems, None, None)
    base_report = str(out / "baseline" / "report.json")
    variant = out / args.name
    if args.first_from:
        if first:
            raise SystemExit("--1b1-from takes 1B.1 from another variant: set only 1b2.* knobs")
        args.with_1b2 = True
    first_dir = out / args.first_from if args.first_from else variant

    distill = read_config(run_dir, "1b1-i1-distill")
    filter_knobs = {k: v for k, v in first.items() if k in FILTER_KEYS}
    train_knobs = {k: v for k, v in first.items() if k not in FILTER_KEYS}
    params = {**distill["params"], "filter": {**distill["params"]["filter"], **filter_knobs}}
    distilled = run_stage({**distill, "params": params}, first_dir, "1b1-distill")
    data = str(first_dir / "1b1-distill" / "train.jsonl")
    trained = train(run_dir, first_dir, "1b1-train", "1b1-i1-train", data, train_knobs)
    adapter = str(first_dir / "1b1-train" / "adapter")
    after = evaluate(run_dir, first_dir, "1b1-evaluate", problems, adapter, base_report)
    rows = [("1B.1", distilled, trained, after)]

    if args.with_1b2:
        gen = read_config(run_dir, "1b2-generate")
        gen = {**gen, "params": {**gen["params"], "adapterUri": adapter}}
        run_stage(gen, variant, "1b2-generate")
        distill2 = read_config(run_dir, "1b2-distill")
        distill2 = {**distill2, "params": {**distill2["params"], "generationsUri": str(variant / "1b2-generate"),
                                           "replayUri": data}}
        distilled2 = run_stage(distill2, variant, "1b2-distill")
        trained2 = train(run_dir, variant, "1b2-train", "1b2-train", str(variant / "1b2-distill" / "train.jsonl"),
                         second, init_adapter=adapter)
        after2 = evaluate(run_dir, variant, "1b2-evaluate", problems, str(variant / "1b2-train" / "adapter"),
                          base_report)
        rows.append(("1B.2", distilled2, trained2, after2))

    b = figures(base)
    print(f"variant {args.name}: {json.dumps(first) if first else 'the run’s knobs'}"
          + (f"; 1B.2 {json.dumps(second)}" if second else ""))
    print(f"  base: consistency {b['consistency']:.3f}, accuracy {b['accuracy']:.3f} (scan problems "
          f"{TUNE_OFFSET + 1}-{TUNE_OFFSET + TUNE_COUNT})")
    for phase, distilled_result, trained_result, evaluated in rows:
        f = figures(evaluated)
        steps = trained_result["metrics"].get("steps")
        print(f"  {phase}: {distilled_result['metrics'].get('examples')} examples, {steps} steps, "
              f"{trained_result['metrics'].get('method')}; consistency {f['consistency']:.3f} "
              f"(paired {change_text(f['paired'], 'math consistency')}); accuracy {f['accuracy']:.3f} "
              f"(paired {change_text(f['paired'], 'math accuracy')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
