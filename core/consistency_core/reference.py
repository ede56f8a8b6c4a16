"""Render the spec's configuration reference (a Markdown table) from the typed model, for the README.
`make docs` rewrites the README section between the markers; a test fails when it is stale.

Defaults are read from a default-built spec, not from the field classes, so a section whose default
comes from a factory (e.g. the CPU-sized `resources.stages.prepare`) shows its own values. Per-stage
sections that share one model are collapsed into `stages.<stage>.*` rows whose default names the
stages that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from consistency_core.spec import CampaignSpec, StageName
from consistency_core.wire_model import nested_model

START = "<!-- spec-reference:start -->"
END = "<!-- spec-reference:end -->"
STAGE = "<stage>"
REQUIRED = "**required**"
# A spec the reference reads defaults from: only the required fields are filled in.
_REQUIRED_ONLY = {"model": {"uri": "hf://org/model"}, "store": {"uri": "s3://bucket/prefix"}}


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    default: str
    meaning: str


def _bounds(metadata: list[Any]) -> str:
    marks = []
    for item in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                marks.append(f"{sign} {value}")
    return f" ({', '.join(marks)})" if marks else ""


def type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A reader's name for a field type: `int (>= 1)`, `list of str`, `a \\| b`, `object`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return type_name(base, [*extra, *[m for e in extra for m in getattr(e, "metadata", [])]])
    if origin is Literal:
        return " \\| ".join(str(a) for a in get_args(annotation))
    if origin is list:
        return f"list of {type_name(get_args(annotation)[0])}"
    if origin is dict:
        return f"map of {type_name(get_args(annotation)[1])}"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(str(m.value) for m in annotation)
    if isinstance(annotation, type):
        return annotation.__name__ + _bounds(metadata or [])
    raise TypeError(f"no reference name for type {annotation!r}")


def default_text(value: Any) -> str:
    """How a default reads in the table; blank when the field is optional and unset."""
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        return "(see fields)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        # Entries are named by their first field (a dataset's name, a selection's dataset).
        first = next(iter(type(value[0]).model_fields))
        return f"{len(value)} entries: " + ", ".join(f"`{getattr(v, first)}`" for v in value)
    if isinstance(value, Enum):
        value = value.value
    return f"`{json.dumps(value)}`"


def _field_default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _stage_sections(model: type[BaseModel]) -> type[BaseModel] | None:
    """The shared section model when `model` has one field per stage of the same type (StagesResources)."""
    fields = model.model_fields
    if set(fields) != {s.value for s in StageName}:
        return None
    kinds = {nested_model(info.annotation) for info in fields.values()}
    # CPU stages use a subclass with other defaults (same fields): the shared section is the base class.
    return next((k for k in kinds if k is not None and all(o is not None and issubclass(o, k) for o in kinds)),
                None)


def _per_stage_default(values: dict[str, str]) -> str:
    """`1` when every stage agrees, else the most common value and the stages that differ."""
    counts: dict[str, list[str]] = {}
    for stage, text in values.items():
        counts.setdefault(text, []).append(stage)
    common = max(counts, key=lambda t: len(counts[t]))
    others = [f"{', '.join(stages)}: {text or 'unset'}" for text, stages in counts.items() if text != common]
    return common if not others else f"{common or 'unset'} ({'; '.join(others)})"


def _rows(model: type[BaseModel], defaults: BaseModel | None, prefix: str) -> Iterator[Row]:
    """Rows of `model`'s fields; `defaults` is the default-built instance when there is one (not inside a
    list, where only the field's own default applies)."""
    section = _stage_sections(model)
    if section is not None and defaults is not None:
        yield from _collapsed(section, defaults, prefix)
        return
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        value = getattr(defaults, name) if defaults is not None else _field_default(info)
        nested = nested_model(info.annotation)
        # A required field has no default even though the spec the defaults come from fills it in.
        shown = REQUIRED if info.is_required() else default_text(value)
        yield Row(path, type_name(info.annotation, info.metadata), shown, (info.description or "").replace("|", "\\|"))
        if nested is None:
            continue
        if get_origin(info.annotation) is list:
            yield from _rows(nested, None, f"{path}[]")
        else:
            yield from _rows(nested, value if isinstance(value, BaseModel) else None, path)


def _collapsed(section: type[BaseModel], defaults: BaseModel, prefix: str) -> Iterator[Row]:
    stages = [s.value for s in StageName]
    doc = (section.__doc__ or "").strip().replace("\n", " ")
    yield Row(f"{prefix}.{STAGE}", "object", "(see fields)", f"{doc} `<stage>`: {', '.join(stages)}.")
    per_stage = {s: list(_rows(section, getattr(defaults, s), f"{prefix}.{STAGE}")) for s in stages}
    for i, row in enumerate(per_stage[stages[0]]):
        values = {s: per_stage[s][i].default for s in stages}
        yield Row(row.path, row.type, _per_stage_default(values), row.meaning)


def rows() -> list[Row]:
    return list(_rows(CampaignSpec, CampaignSpec.model_validate(_REQUIRED_ONLY), "spec"))


def render() -> str:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{r.path}` | {r.type} | {r.default} | {r.meaning} |" for r in rows()]
    return "\n".join(lines)


def splice(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("readme", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README section is stale")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new = splice(text)
    if args.check:
        if new != text:
            print(f"{args.readme}: configuration reference is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
