"""Shared pieces of the model-side checks (tests/ and bench/gpu_check.py): a tiny real Llama checkpoint, a
few problems of every domain with targets a tiny model learns in seconds, training rows, stage configs
for the generate / distill / train / evaluate stages and a runner for them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from consistency_core import spec
from consistency_core.stage_wire import DistillParams, EvaluateParams, GenerateParams, StageConfig, TrainParams
from consistency_core.wire_model import WireModel, nested_model
from consistency_worker.data.problems import Problem
from consistency_worker.data.prompts import build_messages
from consistency_worker.job.context import StageContext
from consistency_worker.stages import run_stage
from consistency_worker.store.facade import open_store

# One problem per domain, with targets short enough that a tiny model can learn them in seconds.
PROBLEMS = [
    Problem(id="m1", domain="math", prompt="What is 2 + 3?", answer="5", stratum="easy"),
    Problem(id="m2", domain="math", prompt="Tom has 4 apples and buys 3 more. How many now?", answer="7",
            stratum="medium"),
    Problem(id="c1", domain="code", prompt="Write a function add(a, b) returning the sum.",
            tests="assert add(1, 2) == 3\nassert add(-1, 1) == 0", entry_point="add",
            examples=("assert add(1, 2) == 3",), stratum="all"),
    Problem(id="r1", domain="reasoning", prompt="Which is a mammal?", choices=("Shark", "Dog", "Trout", "Crab"),
            answer="B", stratum="all"),
]
TARGETS = {
    "m1": "2 + 3 = 5\n#### 5",
    "m2": "4 + 3 = 7\n#### 7",
    "c1": "```python\ndef add(a, b):\n    return a + b\n```",
    "r1": "A dog is a mammal.\nAnswer: B",
}


def write_problems(path: Path, problems: list[Problem] = PROBLEMS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.to_jsonl() + "\n" for p in problems))
    return path


def write_train_data(path: Path, problems: list[Problem] = PROBLEMS, copies: int = 1,
                     target: Callable[[Problem], str] | None = None) -> Path:
    """Chat-format training rows (the distill stage's format) teaching `target(problem)` (default TARGETS)."""
    rows = []
    for _ in range(copies):
        for p in problems:
            answer = target(p) if target is not None else TARGETS[p.id]
            messages = [*build_messages(p), {"role": "assistant", "content": answer}]
            rows.append({"messages": messages, "problemId": p.id, "source": "sample"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PARAMS_MODELS: dict[str, type[WireModel]] = {
    "generate": GenerateParams, "distill": DistillParams, "train": TrainParams, "evaluate": EvaluateParams,
}
# What the state machine always fills in; tests of one stage need not spell it out.
STRUCTURAL_DEFAULTS: dict[str, dict[str, Any]] = {"generate": {"shards": 1, "tensorParallelSize": 1}}


def nest_params(stage: str, flat: dict[str, Any]) -> dict[str, Any]:
    """Stage params from spec-style flat knobs (e.g. `epochs`, `minAgreement`): each knob moves into the
    spec section the params carry it in (`training`, `sampling`, `filter`, `failures`)."""
    model = PARAMS_MODELS.get(stage)
    params = {**STRUCTURAL_DEFAULTS.get(stage, {}), **flat}
    if model is None:
        return params
    for name, info in model.model_fields.items():
        section = nested_model(info.annotation)
        # A spec section (consistency_core.spec exports them all, whichever spec_* module defines it).
        if section is None or getattr(spec, section.__name__, None) is not section:
            continue
        aliases = {f.alias or n for n, f in section.model_fields.items()}
        part = {k: params.pop(k) for k in list(params) if k in aliases}
        if part:
            params[info.alias or name] = part
    return params


def stage_config(stage: str, store_uri: str, model_uri: str, params: dict[str, Any], *, key: str | None = None,
                 seed: int = 11, backend: str = "hf", output: str | None = None, campaign: str = "test",
                 max_model_len: int | None = None) -> StageConfig:
    """A stage's config; `params` may be spec-style flat knobs (see nest_params) or already nested."""
    key = key or f"t-{stage}"
    model: dict[str, Any] = {"uri": model_uri}
    if max_model_len is not None:
        model["maxModelLen"] = max_model_len
    return StageConfig.model_validate({
        "campaign": campaign,
        "key": key,
        "stage": stage,
        "phase": "1B.1",
        "iteration": 1,
        "seed": seed,
        "store": {"uri": store_uri},
        "outputUri": output or f"{store_uri.rstrip('/')}/{key}",
        "model": model,
        "backend": backend,
        "params": {"kind": stage, **nest_params(stage, params)},
    })


def run(config: StageConfig, tmp: Path, shard: str | None = None):  # -> StageResult
    ctx = StageContext.create(config, store=open_store(config.store), shard=shard, scratch_dir=tmp)
    return run_stage(ctx)


_TINY: dict[str, Path] = {}


def tiny_model_dir() -> Path:
    """A tiny Llama checkpoint, built once per test session (about a second)."""
    import tempfile

    from consistency_testkit.tinymodel import build_tiny_model

    if "dir" not in _TINY:
        _TINY["dir"] = build_tiny_model(Path(tempfile.mkdtemp(prefix="tiny-llama-")) / "model", seed=0)
    return _TINY["dir"]


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch on one thread: on a small shared CI machine, torch's default pool (one thread per core)
    spins against the other test processes and makes tiny-model steps tens of times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
