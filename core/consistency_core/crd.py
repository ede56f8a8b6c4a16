"""Generate the ConsistencyTraining CRD from the typed spec and status models (`make crds`), so the CRD and
the code never drift. Pydantic's JSON Schema is rewritten into a Kubernetes *structural* openAPIV3Schema:
refs inlined, nullable instead of anyOf-null, OpenAPI 3.0 exclusive bounds, no titles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from consistency_core.names import MAX_CAMPAIGN_NAME
from consistency_core.spec import CampaignSpec
from consistency_core.status import CampaignStatus
from consistency_core.wire_model import nested_model

GROUP = "consistency.dev"
VERSION = "v1alpha1"
KIND = "ConsistencyTraining"
PLURAL = "consistencytrainings"
SINGULAR = "consistencytraining"
SHORT_NAMES = ["ct"]

PRINTER_COLUMNS = [
    {"name": "Status", "type": "string", "jsonPath": ".status.phase", "description": "Campaign lifecycle"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.trainingPhase", "description": "1B.1 or 1B.2"},
    {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration", "description": "1B.1 iteration"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "description": "Stage now running"},
    {"name": "Stage Status", "type": "string", "jsonPath": ".status.stageStatus",
     "description": "Queued while the stage's Job waits for admission, then Running"},
    {"name": "Consistency", "type": "number", "jsonPath": ".status.consistency",
     "description": "Latest evaluated consistency rate"},
    {"name": "Math", "type": "number", "jsonPath": ".status.mathAccuracy",
     "description": "Latest evaluated math accuracy"},
    {"name": "Primary Change", "type": "number", "jsonPath": ".status.primaryChange",
     "description": "Paired change of the primary endpoint (evaluation.primaryEndpoint), baseline -> latest model"},
    {"name": "Cost USD", "type": "number", "jsonPath": ".status.cost.usd", "description": "Spent so far"},
    {"name": "Worst USD", "type": "number", "jsonPath": ".status.forecast.worstCaseUsd",
     "description": "Forecast cost if every 1B.1 iteration and stage retry runs (status.forecast)"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "discriminator", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    variants = node.get("anyOf") or node.get("oneOf")
    if variants is not None:
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
        real = [v for v in variants if v.get("type") != "null"]
        nullable = len(real) < len(variants)
        shapes = [_structural(v, defs) for v in real]
        if len(real) == 1:
            out = _structural({**real[0], **rest}, defs)
        elif all("enum" in v for v in shapes):
            # e.g. TrainingPhase | Literal["baseline"]: one string enum
            out = {**_structural(rest, defs), "type": "string",
                   "enum": [e for v in shapes for e in v["enum"]]}
        else:
            # A union of object shapes (stage params): one object whose properties are the union.
            props: dict[str, Any] = {}
            for shape in shapes:
                props.update(shape.get("properties", {}))
            out = {**_structural(rest, defs), "type": "object", "properties": props}
        if nullable:
            out["nullable"] = True
        return out
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    names = out.pop("propertyNames", None) or {}
    patterned = out.pop("patternProperties", None)
    if patterned:
        # Structural schemas have neither patternProperties nor propertyNames: the value schema becomes
        # additionalProperties and the key rule a CEL rule over the map's keys.
        [(key_pattern, value_schema)] = patterned.items()
        out["additionalProperties"] = value_schema
        rule = f"self.all(k, size(k) <= {names.get('maxLength', 316)} && k.matches('{key_pattern}'))"
        out.setdefault("x-kubernetes-validations", []).append(
            {"rule": rule, "message": "keys must be label keys ([prefix/]name, at most 316 characters)"})
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" not in out:
        extra = out.get("additionalProperties")
        if not extra or extra is True or extra == {}:
            out.pop("additionalProperties", None)
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("additionalProperties") is False:
        out.pop("additionalProperties")  # structural schemas prune unknown fields instead
    return out


def _apply_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Pydantic leaves default_factory values out of the schema; the API server should apply them too.
    A nested object defaults to {} so the server fills in its own field defaults."""
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        prop = props.get(info.alias or name)
        if prop is None:
            continue
        if prop.get("default", 0) is None:
            del prop["default"]
        if info.default_factory is not None:
            value = info.default_factory()
            prop["default"] = {} if isinstance(value, BaseModel) else TypeAdapter(Any).dump_python(
                [v.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(v, BaseModel) else v
                 for v in value] if isinstance(value, list) else value, mode="json")
        nested = nested_model(info.annotation)
        if nested is not None:
            target = prop.get("items", prop)
            if target.get("type") == "object" or "properties" in target:
                _apply_defaults(nested, target)


def schema_of(model: type[BaseModel], doc: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    _apply_defaults(model, schema)
    schema["description"] = doc
    return schema


def crd() -> dict[str, Any]:
    spec = schema_of(CampaignSpec, "Desired campaign: base model, datasets, phases, thresholds, budget.")
    status = schema_of(CampaignStatus, "Observed campaign state, written by the operator.")
    # kopf may keep its own bookkeeping under status.kopf; keep it from being pruned.
    status["properties"]["kopf"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "shortNames": SHORT_NAMES,
                      "listKind": f"{KIND}List", "categories": ["all", "ml"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A failure-driven self-consistency fine-tuning campaign for an LLM "
                                   "(Phase 1B.1 quick fix, gate, Phase 1B.2 failure-driven expansion).",
                    "required": ["spec"],
                    # Only metadata.name is visible to rules at the root; it names every Job and label.
                    "x-kubernetes-validations": [{
                        "rule": f"size(self.metadata.name) <= {MAX_CAMPAIGN_NAME}",
                        "message": f"metadata.name: at most {MAX_CAMPAIGN_NAME} characters (it prefixes every "
                                   "stage Job's name and is the value of the consistency.dev/campaign label)"}],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    }


def render() -> str:
    header = "# Generated by `make crds` from consistency_core.spec / status. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="write the CRD to this file")
    parser.add_argument("--check", type=Path, help="exit 1 if this file differs from the generated CRD")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.check.exists() or args.check.read_text() != text:
            print(f"{args.check} is stale: run `make crds`", file=sys.stderr)
            return 1
        return 0
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
