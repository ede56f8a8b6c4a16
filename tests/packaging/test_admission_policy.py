"""The chart's ValidatingAdmissionPolicy and the operator's own tenant checks (tenancy.py) say the same:
every validation expression of the rendered policy is evaluated with a CEL interpreter (cel-python) on
the same campaigns the operator judges, configured from the rendered Deployment's environment. The
CRD's own CEL rules are evaluated the same way."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from consistency_core.crd import crd
from consistency_core.names import MAX_CAMPAIGN_NAME
from consistency_core.spec import SpecError, parse_spec
from consistency_operator.config import parse_config
from consistency_operator.tenancy import violations
from packaging_helpers import container_env, of_kind, only, render

VALUES = {"store": {"secretName": "s3-creds", "allowedPrefix": "s3://campaigns/<namespace>/",
                    "endpoint": "https://minio.example:9000"},
          "tenancy": {"allowedRegistries": ["registry.example.com/ml/"]}}
BASE = {"model": {"uri": "hf://org/model"}, "store": {"uri": "s3://campaigns/team-a/run1"}}


def _evaluate(expression: str, activation: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    return bool(program.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()}))


def admitted(policy: dict[str, Any], spec: dict[str, Any], namespace: str) -> list[str]:
    """Messages of the validations that deny this object (empty: admitted)."""
    obj = {"apiVersion": "consistency.dev/v1alpha1", "kind": "ConsistencyTraining",
           "metadata": {"name": "c", "namespace": namespace}, "spec": spec}
    activation = {"object": obj, "request": {"namespace": namespace, "operation": "CREATE"}}
    return [v["message"] for v in policy["spec"]["validations"] if not _evaluate(v["expression"], activation)]


CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("plain", {}, True),
    ("allowed image", {"resources": {"workerImage": "registry.example.com/ml/worker:2"}}, True),
    ("foreign image", {"resources": {"workerImage": "docker.io/evil/miner:latest"}}, False),
    ("look-alike registry", {"resources": {"workerImage": "registry.example.com/mlx/worker:2"}}, False),
    ("service account", {"resources": {"serviceAccountName": "admin"}}, False),
    ("runtime class", {"resources": {"runtimeClassName": "runc"}}, False),
    ("keyed Exists", {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}}, True),
    ("other namespace's prefix", {"store": {"uri": "s3://campaigns/team-b/run1"}}, False),
    ("foreign bucket", {"store": {"uri": "s3://loot/run1"}}, False),
    ("foreign endpoint", {"store": {"uri": "s3://campaigns/team-a/run1", "endpoint": "https://evil.example"}},
     False),
    ("the operator's endpoint", {"store": {"uri": "s3://campaigns/team-a/x",
                                           "endpoint": "https://minio.example:9000"}}, True),
    ("own credentials anywhere", {"store": {"uri": "s3://loot/run1", "endpoint": "https://s3.example",
                                            "credentialsSecret": "mine"}}, True),
]


@pytest.mark.parametrize(("label", "patch", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_policy_and_operator_agree(label: str, patch: dict[str, Any], allowed: bool) -> None:
    manifests = render(VALUES)
    policy = only(manifests, "ValidatingAdmissionPolicy").doc
    settings = parse_config([], env=container_env(only(manifests, "Deployment")))
    spec = {**BASE, **patch}
    denied_by_policy = admitted(policy, spec, "team-a")
    denied_by_operator = violations(parse_spec(spec), settings, "team-a")
    assert (not denied_by_policy) == allowed, denied_by_policy
    assert (not denied_by_operator) == allowed, denied_by_operator


def test_a_key_less_exists_toleration_is_denied_by_policy_crd_and_model() -> None:
    policy = only(render(VALUES), "ValidatingAdmissionPolicy").doc
    for field in ("tolerations", "cpuTolerations"):
        spec = {**BASE, "resources": {field: [{"operator": "Exists"}]}}
        assert any("needs a key" in m for m in admitted(policy, spec, "team-a"))
        with pytest.raises(SpecError, match=f"spec.resources.{field}"):
            parse_spec(spec)


def test_default_policy_allows_the_chart_worker_image_and_binding_follows_the_watched_namespaces() -> None:
    manifests = render()
    policy = only(manifests, "ValidatingAdmissionPolicy").doc
    ok = {**BASE, "resources": {"workerImage": "ghcr.io/consistency-dev/consistency-worker:0.2.0"}}
    evil = {**BASE, "resources": {"workerImage": "ghcr.io/consistency-dev/consistency-worker-evil:1"}}
    assert admitted(policy, ok, "ops") == [] and admitted(policy, evil, "ops")
    # No default Secret configured: the store rule is not needed and not rendered.
    assert not any("credentialsSecret" in v["expression"] for v in policy["spec"]["validations"])
    binding = only(manifests, "ValidatingAdmissionPolicyBinding").doc
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] and "matchResources" not in binding["spec"]
    scoped = only(render({"watch": {"mode": "namespaces", "namespaces": ["team-a", "team-b"]}}),
                  "ValidatingAdmissionPolicyBinding").doc
    assert scoped["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    allowed = render({"tenancy": {"allowServiceAccountOverride": True, "allowRuntimeClassOverride": True}})
    spec = {**BASE, "resources": {"serviceAccountName": "runner", "runtimeClassName": "gvisor"}}
    assert admitted(only(allowed, "ValidatingAdmissionPolicy").doc, spec, "ops") == []
    assert not of_kind(render({"tenancy": {"admissionPolicy": {"enabled": False}}}), "ValidatingAdmissionPolicy")


def _rules(node: Any, path: str = "") -> list[tuple[str, str]]:
    found = [(path, r["rule"]) for r in node.get("x-kubernetes-validations", [])] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            found += _rules(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _rules(node["items"], f"{path}[]")
    return found


def test_the_crds_cel_rules_hold_for_valid_specs_and_catch_what_the_model_catches() -> None:
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    [name_rule] = [r for p, r in _rules(root) if p == ""]
    assert _evaluate(name_rule, {"self": {"metadata": {"name": "c" * MAX_CAMPAIGN_NAME}}})
    assert not _evaluate(name_rule, {"self": {"metadata": {"name": "c" * 100}}})
    spec_rules = [r for p, r in _rules(root) if p == ".spec"]
    defaults = parse_spec(BASE).to_wire()  # what the API server holds after defaulting
    assert all(_evaluate(r, {"self": defaults}) for r in spec_rules)
    duplicate = {**defaults, "datasets": [*defaults["datasets"], defaults["datasets"][0]]}
    too_many_epochs = {**defaults, "retry": {**defaults["retry"], "maxIterations": 20, "epochsStep": 10}}
    for bad in (duplicate, too_many_epochs):
        assert not all(_evaluate(r, {"self": bad}) for r in spec_rules)
        with pytest.raises(SpecError):
            parse_spec(bad)
    [dataset_rules] = [[r for p, r in _rules(root) if p == ".spec.datasets[]"]]
    leaky = {"name": "x", "uri": "u", "format": "gsm8k", "roles": ["eval", "train"]}
    jsonl = {"name": "x", "uri": "u", "format": "jsonl", "roles": ["eval"]}
    assert all(_evaluate(r, {"self": defaults["datasets"][0]}) for r in dataset_rules)
    assert not all(_evaluate(r, {"self": leaky}) for r in dataset_rules)
    assert not all(_evaluate(r, {"self": jsonl}) for r in dataset_rules)
