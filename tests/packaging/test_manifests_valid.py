"""Every rendered manifest is a valid Kubernetes object.

Built-in kinds are checked with kubernetes-validate's strict schemas (unknown fields rejected) for the
oldest Kubernetes the chart supports and the newest the schemas know. kubernetes-validate has no
schemas for CRD-based kinds, so for those:
  * KopfPeering / ClusterKopfPeering: against the openAPIV3Schema of the peering CRDs the chart ships;
  * ServiceMonitor / PrometheusRule (prometheus-operator CRDs, not shipped here): their metadata
    against the real ObjectMeta schema, their spec against the subset of the prometheus-operator
    schema below (the fields this chart uses, with types and required keys); the PromQL itself is
    checked in test_observability.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging_helpers import CHART_DIR, COMBOS, REPO, Manifest, chart, render

K8S_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())
BUILTIN_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1", "apiextensions.k8s.io/v1", "networking.k8s.io/v1",
                  "admissionregistration.k8s.io/v1")
# admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy is GA from Kubernetes 1.30 (the chart documents it).
SINCE = {"ValidatingAdmissionPolicy": (1, 30), "ValidatingAdmissionPolicyBinding": (1, 30)}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                         "(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

SERVICE_MONITOR_SPEC = {
    "type": "object",
    "required": ["selector", "endpoints"],
    "additionalProperties": False,
    "properties": {
        "namespaceSelector": {
            "type": "object", "additionalProperties": False,
            "properties": {"any": {"type": "boolean"},
                           "matchNames": {"type": "array", "items": {"type": "string"}}},
        },
        "selector": {
            "type": "object", "additionalProperties": False,
            "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
        },
        "endpoints": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "additionalProperties": False,
                "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                               "interval": DURATION, "scrapeTimeout": DURATION,
                               "scheme": {"enum": ["http", "https"]}},
            },
        },
    },
}

PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": DURATION,
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object", "required": ["expr"], "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string"}, "record": {"type": "string"},
                                "expr": {"type": ["string", "integer"]}, "for": DURATION,
                                "keep_firing_for": DURATION, "labels": STRING_MAP, "annotations": STRING_MAP,
                            },
                        },
                    },
                },
            },
        },
    },
}


def all_manifests() -> list[tuple[str, Manifest]]:
    return [(combo, m) for combo, values in sorted(COMBOS.items()) for m in render(values)]


def peering_crd_schemas() -> dict[str, dict[str, Any]]:
    path = CHART_DIR / "charts" / "kopf-peering" / "crds" / "kopf-peering.yaml"
    schemas = {}
    for crd in yaml.safe_load_all(path.read_text()):
        (version,) = crd["spec"]["versions"]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(version: str) -> None:
    checked: set[str] = set()
    for combo, m in all_manifests():
        if m.doc["apiVersion"] not in BUILTIN_GROUPS:
            continue
        if tuple(int(x) for x in version.split(".")[:2]) < SINCE.get(m.kind, (0, 0)):
            continue
        try:
            kubernetes_validate.validate(m.doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"[{combo}] {m.template} {m.kind}/{m.name} on {version}: {path}: {exc.message}")
        checked.add(m.kind)
    expected = {"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "NetworkPolicy", "Role",
                "RoleBinding", "Service", "ServiceAccount"}
    if version == K8S_VERSIONS[-1]:
        expected |= set(SINCE)
    assert checked == expected


def test_validator_rejects_a_broken_deployment() -> None:
    """Control: the strict schemas do catch a typo, so the test above can fail."""
    broken = next(m.doc for m in render() if m.kind == "Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_names_and_labels_are_valid_for_the_api_server() -> None:
    for combo, m in all_manifests():
        name_re = DNS_SUBDOMAIN if m.kind.startswith(("Cluster", "Role", "ConfigMap", "ServiceAccount")) else DNS_LABEL
        assert name_re.match(m.name) and len(m.name) <= 63, f"[{combo}] bad name {m.kind}/{m.name}"
        for key, value in m.doc["metadata"].get("labels", {}).items():
            assert isinstance(value, str) and LABEL_VALUE.match(value) and len(value) <= 63, (combo, key, value)


def test_crd_based_kinds_validate_against_their_schemas() -> None:
    peering = peering_crd_schemas()
    seen: set[str] = set()
    for combo, m in all_manifests():
        if m.doc["apiVersion"] in BUILTIN_GROUPS:
            continue
        # Metadata through the real ObjectMeta schema, by wrapping it in a minimal built-in object.
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": m.doc["metadata"]},
                                     K8S_VERSIONS[-1], strict=True)
        if m.kind in peering:
            assert m.doc["apiVersion"] == "kopf.dev/v1"
            jsonschema.Draft4Validator(peering[m.kind]).validate(m.doc)  # OpenAPI 3.0 ~ draft 4
        elif m.kind == "ServiceMonitor":
            assert m.doc["apiVersion"] == "monitoring.coreos.com/v1"
            jsonschema.validate(m.doc["spec"], SERVICE_MONITOR_SPEC)
        elif m.kind == "PrometheusRule":
            assert m.doc["apiVersion"] == "monitoring.coreos.com/v1"
            jsonschema.validate(m.doc["spec"], PROMETHEUS_RULE_SPEC)
        else:
            pytest.fail(f"[{combo}] no validation for {m.kind} ({m.doc['apiVersion']})")
        seen.add(m.kind)
    assert seen == {"KopfPeering", "ClusterKopfPeering", "ServiceMonitor", "PrometheusRule"}


def test_chart_crds_validate() -> None:
    files = {c["name"]: c["data"] for c in chart().crds}
    assert "crds/kopf-peering.yaml" in files
    for name, text in files.items():
        for crd in yaml.safe_load_all(text):
            if crd:
                try:
                    kubernetes_validate.validate(crd, K8S_VERSIONS[-1], strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_consistencytraining_crd_is_identical_to_crds_dir() -> None:
    source = REPO / "crds" / "consistencytraining.yaml"
    copy = CHART_DIR / "crds" / "consistencytraining.yaml"
    assert source.is_file(), f"{source.relative_to(REPO)} is missing: run `make crds`"
    assert copy.is_file(), f"{copy.relative_to(REPO)} is missing: run `make crds` (it copies the CRD)"
    assert copy.read_bytes() == source.read_bytes(), "chart CRD differs from crds/: run `make crds`"
    # Helm ships it from crds/ unrendered; the chart's loader must see exactly that file.
    shipped = {c["name"]: c["data"] for c in chart().crds}
    assert shipped.get("crds/consistencytraining.yaml") == source.read_text()
    (crd,) = [d for d in yaml.safe_load_all(source.read_text()) if d]
    assert crd["metadata"]["name"] == "consistencytrainings.consistency.dev"


def test_templates_do_not_embed_the_crd() -> None:
    # A CRD rendered from templates/ would be deleted with the release, and every campaign with it.
    for combo, m in all_manifests():
        assert m.kind != "CustomResourceDefinition", (combo, m.template)
    assert not any(Path(t["name"]).name.startswith("crd") for t in chart().templates)
