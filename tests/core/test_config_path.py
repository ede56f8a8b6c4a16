"""One config path: every spec field a stage acts on reaches that stage's config.

The cases are generated from the spec model's own fields, so a new field in a stage-facing section (or a
new top-level section) fails here until it has a path to a stage, or is listed as consumed elsewhere.
"""

from __future__ import annotations

import types
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import pytest
from consistency_core.plan import plan, report_step
from consistency_core.spec import CampaignSpec
from consistency_core.stage_builder import StageConfigBuilder
from consistency_core.stage_wire import StageConfig
from consistency_core.status import CampaignStatus, TrainingPhase
from consistency_core.wire_model import nested_model
from pydantic import BaseModel

from .helpers import minimal_spec

# Top-level sections whose every leaf must reach a stage config, and which configs may carry it.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "quick_fix": ("prepare", "1b1-"),
    "expansion": ("prepare", "1b2-"),
    "evaluation": ("prepare", "baseline-evaluate", "1b1-i1-evaluate", "1b2-evaluate"),
    "model": ("",),
    "store": ("",),
    "datasets": ("prepare",),
    "seed": ("",),
    "backend": ("",),
    "export": ("report",),
}
# Consumed by the control plane, not by stages (each has its own tests).
NOT_STAGE_INPUTS = {
    "thresholds": "the 1B.1 gate (statemachine.gate)",
    "retry": "iterations and stage retries; per-iteration knobs are tested in test_statemachine",
    "resources": "pods (operator/jobs.py); generate's shards and gpus, evaluate's gpus are tested below",
    "budget": "the cost forecast and the spending limit",
}
# Switches that choose which stages run (and what prepare readies) rather than being a stage's input.
SWITCHES = {"expansion.enabled", "evaluation.baseline"}
# Where a stage reads a field under another name.
RENAMED = {"evaluation.datasets": "evalDatasets"}
# Non-default values the generic rule cannot derive (they must keep dataset references valid).
VALUES: dict[str, Any] = {
    "expansion.scan_datasets": ["gsm8k-train"],
    "evaluation.datasets": ["humaneval"],
    "model.token_secret": "hf-token",
    "model.revision": "main",
    "model.gguf_file": "model.gguf",
    "store.endpoint": "http://minio.store.svc:9000",
    "store.credentials_secret": "store-creds",
}


def _other_value(path: str, annotation: Any, default: Any) -> Any:
    """A valid value different from `default`."""
    if path in VALUES:
        return VALUES[path]
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return next(a for a in get_args(annotation) if a != default)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return next(m for m in annotation if m != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.25
    if isinstance(default, str):
        return default + "-x"
    if isinstance(default, list):
        return default[:-1] if len(default) > 1 else [*default, "q_proj"]
    if default is None and get_origin(annotation) in (types.UnionType,) and args:
        return _other_value(path, args[0], {int: 0, float: 0.5, str: ""}.get(args[0]))
    raise AssertionError(f"no non-default value rule for {path} ({annotation}); add one to VALUES")


def _leaves(model: BaseModel, prefix: str) -> list[tuple[str, Any, Any]]:
    """(path, annotation, current value) of every leaf field under `model`; nested models are walked."""
    out = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel) and nested_model(info.annotation) is type(value):
            out.extend(_leaves(value, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", info.annotation, value))
    return out


def _cases() -> list[tuple[str, Any]]:
    spec = minimal_spec()
    cases = []
    for section in STAGE_SECTIONS:
        value = getattr(spec, section)
        if isinstance(value, BaseModel):
            cases += [(path, _other_value(path, ann, cur)) for path, ann, cur in _leaves(value, f"{section}.")]
        elif section == "datasets":
            changed = [ds.model_copy(update={"limit": 7}) if i == 0 else ds for i, ds in enumerate(value)]
            cases.append((section, changed))
        else:
            cases.append((section, _other_value(section, CampaignSpec.model_fields[section].annotation, value)))
    return cases


def _with(spec: CampaignSpec, path: str, value: Any) -> CampaignSpec:
    raw = spec.model_dump()
    *parents, leaf = path.split(".")
    target = raw
    for part in parents:
        target = target[part]
    target[leaf] = value.model_dump() if isinstance(value, BaseModel) else (
        [v.model_dump() if isinstance(v, BaseModel) else v for v in value] if isinstance(value, list) else value)
    return CampaignSpec.model_validate(raw)


def _configs(spec: CampaignSpec) -> list[StageConfig]:
    """Every stage config of a campaign that runs two 1B.1 iterations and 1B.2."""
    builder = StageConfigBuilder(spec, CampaignStatus(adapter="s3://bucket/adapter"), "c", "ns")
    steps = [*plan(spec, TrainingPhase.quick_fix, 1), *plan(spec, TrainingPhase.quick_fix, 2),
             *plan(spec, TrainingPhase.expansion, 1), report_step(TrainingPhase.expansion, 1)]
    return [builder.config(step, 1) for step in steps]


def _found(node: Any, key: str, wanted: Any) -> bool:
    if isinstance(node, dict):
        return any((k == key and v == wanted) or _found(v, key, wanted) for k, v in node.items())
    if isinstance(node, list):
        return any(_found(v, key, wanted) for v in node)
    return False


def _wire(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value.value if isinstance(value, Enum) else value


def _alias(path: str) -> str:
    model: type[BaseModel] = CampaignSpec
    info = None
    for part in path.split("."):
        info = model.model_fields[part]
        model = nested_model(info.annotation) or model
    return RENAMED.get(path) or info.alias or path


def test_every_spec_section_is_classified():
    assert set(CampaignSpec.model_fields) == set(STAGE_SECTIONS) | set(NOT_STAGE_INPUTS)


@pytest.mark.parametrize(("path", "value"), _cases(), ids=[p for p, _ in _cases()])
def test_non_default_spec_value_reaches_its_stage(path: str, value: Any):
    base = minimal_spec()
    changed = _with(base, path, value)
    if path in SWITCHES:
        assert [c.to_wire() for c in _configs(changed)] != [c.to_wire() for c in _configs(base)]
        return
    key, wanted = _alias(path), _wire(value)
    prefixes = STAGE_SECTIONS[path.split(".")[0]]

    def carriers(spec: CampaignSpec) -> set[str]:
        return {c.key for c in _configs(spec)
                if c.key.startswith(prefixes) and _found(c.to_wire(), key, wanted)}

    reached = carriers(changed) - carriers(base)
    assert reached, f"spec.{path}={wanted!r} reaches no stage config (looked for {key!r} in {prefixes})"


@pytest.mark.parametrize(("field", "param", "value"), [("shards", "shards", 3), ("gpus", "tensorParallelSize", 2)])
def test_generate_resources_reach_the_generate_stage(field: str, param: str, value: int):
    spec = _with(minimal_spec(), f"resources.stages.generate.{field}", value)
    generate = [c for c in _configs(spec) if c.stage.value == "generate"]
    assert generate and all(c.to_wire()["params"][param] == value for c in generate)


def test_evaluate_gpus_reach_the_evaluate_stage_as_tensor_parallelism():
    spec = _with(minimal_spec(), "resources.stages.evaluate.gpus", 2)
    evaluate = [c for c in _configs(spec) if c.stage.value == "evaluate"]
    assert evaluate and all(c.to_wire()["params"]["tensorParallelSize"] == 2 for c in evaluate)
    base = [c for c in _configs(minimal_spec()) if c.stage.value == "evaluate"]
    assert all(c.to_wire()["params"]["tensorParallelSize"] == 1 for c in base)
