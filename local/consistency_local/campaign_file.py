"""Read a ConsistencyTraining YAML (the same document `kubectl apply` takes) for a local run.

Relative local paths in the spec (model, datasets, store) are resolved against the YAML file's
directory, so a campaign file works from any working directory; URIs with a scheme (hf://, s3://,
builtin://, file://) are left alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from consistency_core.names import campaign_name_problem
from consistency_core.spec import CampaignSpec, SpecError, parse_spec

from consistency_local import boundedyaml

API_VERSION = "consistency.dev/v1alpha1"
KIND = "ConsistencyTraining"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class CampaignFileError(ValueError):
    """The campaign file cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Campaign:
    name: str
    namespace: str
    spec: CampaignSpec
    source: Path

    @property
    def digest(self) -> str:
        """Identity of the spec: a resumed run must be the same campaign it started as."""
        blob = json.dumps(self.spec.to_wire(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _resolve(uri: str, base: Path) -> str:
    if _SCHEME.match(uri) or Path(uri).is_absolute():
        return uri
    return str((base / uri).resolve())


def _resolve_paths(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    spec = json.loads(json.dumps(spec))  # deep copy; YAML gives plain data
    for key in ("model", "store"):
        section = spec.get(key)
        if isinstance(section, dict) and isinstance(section.get("uri"), str):
            section["uri"] = _resolve(section["uri"], base)
    for ds in spec.get("datasets") or []:
        if isinstance(ds, dict) and isinstance(ds.get("uri"), str):
            ds["uri"] = _resolve(ds["uri"], base)
    return spec


def load_campaign(path: Path) -> Campaign:
    try:
        docs = [d for d in boundedyaml.load_all(path) if d]
    except boundedyaml.BoundedYamlError as exc:
        raise CampaignFileError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise CampaignFileError(f"{path}: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise CampaignFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CampaignFileError(f"{path}: not valid YAML: {exc}") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not found:
        raise CampaignFileError(f"{path}: no document with kind: {KIND}")
    if len(found) > 1:
        raise CampaignFileError(f"{path}: {len(found)} {KIND} documents; a local run takes exactly one")
    doc = found[0]
    if doc.get("apiVersion") != API_VERSION:
        raise CampaignFileError(f"{path}: apiVersion must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    meta = doc.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not _DNS.match(name) or len(name) > 63:
        raise CampaignFileError(f"{path}: metadata.name must be a DNS label (lowercase letters, digits, "
                                f"'-'), got {name!r}")
    if (problem := campaign_name_problem(name)) is not None:
        raise CampaignFileError(f"{path}: {problem}")
    namespace = meta.get("namespace") or "default"
    if not isinstance(namespace, str) or not _DNS.match(namespace):
        raise CampaignFileError(f"{path}: metadata.namespace must be a DNS label, got {namespace!r}")
    raw = doc.get("spec")
    if not isinstance(raw, dict):
        raise CampaignFileError(f"{path}: spec is missing or not a mapping")
    try:
        spec = parse_spec(_resolve_paths(raw, path.resolve().parent))
    except SpecError as exc:
        raise CampaignFileError(f"{path}: {exc}") from None
    return Campaign(name=name, namespace=namespace, spec=spec, source=path)
