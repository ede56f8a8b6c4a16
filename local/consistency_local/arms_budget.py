"""The protocol's token-budget procedure (docs/efficacy-protocol.md, "Sampling"): the smallest of 192, 256,
384 and 512 new tokens at which fewer than 10% of the base model's sampled answers on the first 16
problems of the train split (never eval) are cut off without a final-answer marker.

One generation at the largest budget answers every budget: sampling is per-sequence seeded and
autoregressive, so an answer generated with a budget of b tokens is the first b tokens of the same answer
generated with more. A sample that ended (EOS or stop string) within b tokens is not cut off at b; one
that did not is cut off at b unless its first b tokens (re-tokenised from its text) hold a final-answer
marker (the grader's own cut-off rule, extract_math_answer(..., cut_off=True)).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from consistency_local.campaign_file import load_campaign
from consistency_local.rundir import atomic_write

BUDGETS = (192, 256, 384, 512)
PROBLEMS = 16
LIMIT = 0.10


def cut_off(tokens: int | None, truncated: bool, prefix: Callable[[int], str], budget: int) -> bool:
    """Whether a sample generated with ``budget`` new tokens would be cut off without a marker."""
    from consistency_worker.grading.answers import extract_math_answer

    if not truncated and tokens is not None and tokens <= budget:
        return False
    return extract_math_answer(prefix(budget), cut_off=True) is None


def choose(shares: dict[int, float]) -> int:
    """The smallest budget under the limit, else the largest (whose share is then reported)."""
    under = [b for b in sorted(shares) if shares[b] < LIMIT]
    return under[0] if under else max(shares)


def shares_of(samples: Sequence[Any], encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
              budgets: Sequence[int] = BUDGETS) -> dict[int, float]:
    counts = dict.fromkeys(budgets, 0)
    for sample in samples:
        ids = encode(sample.text)
        for budget in budgets:
            counts[budget] += cut_off(sample.tokens, sample.truncated, lambda b, ids=ids: decode(ids[:b]), budget)
    return {b: counts[b] / len(samples) for b in budgets}


def measure_budget(template: str, paths: dict[str, str], out: Path, log: Callable[[str], None]) -> int:
    from consistency_core.spec import SamplingKnobs, StageName
    from consistency_core.stage_wire import GenerateParams, StageConfig
    from consistency_worker.data.loaders import load_problems
    from consistency_worker.engines.model_loading import load_tokenizer, resolve_model
    from consistency_worker.store.facade import open_store
    from consistency_worker.store.generations import read_generations

    from consistency_local.demo import render_template
    from consistency_local.demo_tuning import run_stage

    out.mkdir(parents=True, exist_ok=True)
    campaign_path = out / "campaign.yaml"
    atomic_write(campaign_path, render_template(template, {**paths, "STORE": str(out / "store")}))
    spec = load_campaign(campaign_path).spec
    train = next(d for d in spec.datasets if "train" in d.roles)
    problems = load_problems({**train.model_dump(by_alias=True, exclude_none=True), "limit": PROBLEMS}).problems
    problems_path = out / f"train-first-{PROBLEMS}.jsonl"
    problems_path.write_text("".join(p.model_dump_json() + "\n" for p in problems), encoding="utf-8")
    config = StageConfig(
        campaign="budget", namespace="default", key="budget-generate", stage=StageName.generate, phase="1B.1",
        iteration=1, attempt=1, seed=spec.seed, store=spec.store, output_uri=str(out / "budget-generate"),
        model=spec.model, backend=spec.backend,
        params=GenerateParams(problems_uri=str(problems_path), shards=1, tensor_parallel_size=1, sampling=SamplingKnobs(
            samples=spec.quick_fix.samples, temperature=spec.quick_fix.temperature, max_new_tokens=max(BUDGETS))))
    result = run_stage(json.loads(config.to_json()), out, "budget-generate")
    store = open_store(spec.store)
    samples = [s for record in read_generations(store, str(out / "budget-generate")) for s in record.samples]
    tokenizer = load_tokenizer(resolve_model(spec.model, store))
    shares = shares_of(samples, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
                       lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    budget = choose(shares)
    report = {"problems": len(problems), "samples": len(samples), "cutOffShare": shares, "budget": budget,
              "generateSeconds": result.get("seconds")}
    atomic_write(out / "budget.json", json.dumps(report, indent=1) + "\n")
    log(yaml.safe_dump(report, sort_keys=False))
    print(budget)
    return 0
