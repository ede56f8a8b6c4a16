"""The generated configuration reference (README) is correct: every documented default is the model's
value, every field is described, no row leaks Python internals, per-stage sections are collapsed."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from consistency_core import reference
from consistency_core.spec import CampaignSpec, StageName
from consistency_core.wire_model import nested_model
from pydantic import BaseModel

ROWS = reference.rows()
STAGES = [s.value for s in StageName]
INTERNALS = ("annotation=", "metadata=", "required=", "<class", "typing.", "NoneType", "Undefined", "lambda",
             "function", "Field(", "Annotated", "Literal[", "Optional[", "FieldInfo")


def _default_spec_wire() -> dict[str, Any]:
    spec = CampaignSpec.model_validate({"model": {"uri": "m"}, "store": {"uri": "s"}})
    return spec.model_dump(mode="json", by_alias=True)


def _field(path: str) -> tuple[Any, bool]:
    """(JSON default, required) of the field at a reference path, walking the model classes."""
    model: type[BaseModel] = CampaignSpec
    parts = path.removeprefix("spec.").split(".")
    info = None
    for part in parts:
        name = part.removesuffix("[]")
        if name == reference.STAGE:
            name = STAGES[0]
        info = next(i for n, i in model.model_fields.items() if (i.alias or n) == name)
        model = nested_model(info.annotation) or model
    assert info is not None
    if info.is_required():
        return None, True
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "value", str(v)))), False


def _actual(path: str, wire: dict[str, Any]) -> Any:
    """The value at `path` in the default spec; for fields inside list entries, the field's own default."""
    if "[]" in path:
        return _field(path)[0]
    node: Any = wire
    for part in path.removeprefix("spec.").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _parse_per_stage(text: str) -> dict[str, str]:
    """`1` (prepare, distill: `0`) -> {stage: text} for every stage."""
    match = re.fullmatch(r"(.*?)(?: \((.*)\))?", text)
    assert match
    common, exceptions = match.group(1), match.group(2)
    values = dict.fromkeys(STAGES, common)
    for part in (exceptions or "").split("; ") if exceptions else []:
        stages, value = part.split(": ", 1)
        for stage in stages.split(", "):
            values[stage] = value
    return values


def _check(shown: str, actual: Any, path: str, required: bool) -> None:
    if shown == reference.REQUIRED:
        assert required, f"{path} is documented as required but has a default"
        return
    assert not required, f"{path} is required but documented with default {shown!r}"
    if shown in ("", "unset"):
        assert actual is None, f"{path}: documented without default, model has {actual!r}"
    elif shown == "(see fields)":
        assert isinstance(actual, dict), path
    elif " entries: " in shown:
        count, names = shown.split(" entries: ")
        assert isinstance(actual, list) and len(actual) == int(count), path
        first = [next(iter(entry.values())) for entry in actual]
        assert [n.strip("`") for n in names.split(", ")] == first, path
    else:
        assert shown.startswith("`") and shown.endswith("`"), f"{path}: default {shown!r} is not a JSON literal"
        assert json.loads(shown.strip("`")) == actual, f"{path}: documented {shown}, model default {actual!r}"


@pytest.mark.parametrize("row", ROWS, ids=[r.path for r in ROWS])
def test_documented_default_is_the_models(row: reference.Row) -> None:
    wire = _default_spec_wire()
    _, required = _field(row.path)
    if reference.STAGE in row.path:
        shown = _parse_per_stage(row.default)
        for stage in STAGES:
            concrete = row.path.replace(reference.STAGE, stage)
            _check(shown[stage], _actual(concrete, wire), concrete, required)
    else:
        _check(row.default, _actual(row.path, wire), row.path, required)


def test_every_row_is_described_without_python_internals() -> None:
    for row in ROWS:
        assert row.meaning.strip(), f"{row.path} has no description"
        text = f"{row.type} {row.default} {row.meaning}"
        leaked = [word for word in INTERNALS if word in text]
        assert not leaked, f"{row.path}: {leaked} in {text!r}"


def test_constrained_and_optional_types_read_as_types() -> None:
    by_path = {r.path: r for r in ROWS}
    assert by_path["spec.thresholds.consistency"].type == "float (>= 0.0, <= 1.0)"
    assert by_path["spec.retry.temperatureSchedule"].type == "list of float (>= 0.05, <= 2.0)"
    assert by_path["spec.thresholds.accuracy"].type == "map of float (>= 0.0, <= 1.0)"
    assert by_path["spec.quickFix.samples"].type == "int (>= 1, <= 64)"


def test_per_stage_rows_are_collapsed_with_each_stages_default() -> None:
    paths = [r.path for r in ROWS]
    assert not any(f"stages.{s}" in p for p in paths for s in STAGES)
    gpus = next(r for r in ROWS if r.path == "spec.resources.stages.<stage>.gpus")
    # prepare, distill and report are CPU stages (their own defaults), the others get one GPU.
    assert _parse_per_stage(gpus.default) == {"prepare": "`0`", "generate": "`1`", "distill": "`0`",
                                              "train": "`1`", "evaluate": "`1`", "report": "`0`"}
