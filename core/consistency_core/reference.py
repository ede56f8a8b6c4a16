"""Render the spec's configuration reference (a Markdown table) from the typed model, for the README.
`make docs` rewrites the README section between the markers; a test fails when it is stale."""

from __future__ import annotations

import argparse
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from consistency_core.model import nested_model
from consistency_core.spec import CampaignSpec

START = "<!-- spec-reference:start -->"
END = "<!-- spec-reference:end -->"


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return "object"
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            return " \\| ".join(str(m.value) for m in annotation)
        return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[1])}"
    if str(origin).endswith("Literal"):
        return " \\| ".join(str(a) for a in get_args(annotation))
    if str(origin).endswith("Annotated"):
        return _type_name(args[0])
    return " or ".join(_type_name(a) for a in args)


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return "(see fields)"
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return f"{len(value)} entries (Phase 1B plan)"
        return f"`{json.dumps(value)}`"
    if info.default is PydanticUndefined:
        return "**required**"
    if info.default is None:
        return ""
    value = getattr(info.default, "value", info.default)
    return f"`{json.dumps(value)}`"


def rows(model: type[BaseModel], prefix: str = "spec") -> list[tuple[str, str, str, str]]:
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        nested = nested_model(info.annotation)
        path_items = f"{path}[]" if get_origin(info.annotation) is list and nested is not None else path
        out.append((path, _type_name(info.annotation), _default(info), (info.description or "").replace("|", "\\|")))
        if nested is not None:
            out.extend(rows(nested, path_items))
    return out


def render() -> str:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{p}` | {t} | {d} | {m} |" for p, t, d, m in rows(CampaignSpec)]
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
