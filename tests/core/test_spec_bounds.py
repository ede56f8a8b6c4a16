"""Every field is bounded at validation, in the model and in the CRD: the inputs an attacker or a careless
user tried (issue 21) are refused with an error naming the field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from consistency_core import bounds
from consistency_core.crd import crd
from consistency_core.names import LONGEST_JOB_SUFFIX, MAX_CAMPAIGN_NAME, MAX_JOB_NAME, campaign_name_problem, job_name
from consistency_core.plan import BASELINE_KEY, plan
from consistency_core.spec import RetryPolicy, SpecError, parse_spec
from consistency_core.status import TrainingPhase

BASE: dict[str, Any] = {"model": {"uri": "hf://org/model"}, "store": {"uri": "s3://bucket/campaigns"}}


def _refused(**section: Any) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, **section})
    return str(err.value)


@pytest.mark.parametrize(("section", "field"), [
    ({"resources": {"stages": {"train": {"cpu": "-3"}}}}, "spec.resources.stages.train.cpu"),
    ({"resources": {"stages": {"train": {"memory": "lots"}}}}, "spec.resources.stages.train.memory"),
    ({"resources": {"stages": {"train": {"memory": "0"}}}}, "spec.resources.stages.train.memory"),
    ({"resources": {"stages": {"prepare": {"ephemeralStorage": "1 Gi"}}}},
     "spec.resources.stages.prepare.ephemeralStorage"),
    ({"resources": {"stages": {"generate": {"deadlineSeconds": 1e20}}}},
     "spec.resources.stages.generate.deadlineSeconds"),
    ({"resources": {"stages": {"generate": {"deadlineSeconds": 10**20}}}},
     "spec.resources.stages.generate.deadlineSeconds"),
    ({"seed": 2**80}, "spec.seed"),
    ({"seed": 2**32}, "spec.seed"),
    ({"quickFix": {"maxNewTokens": 10**12}}, "spec.quickFix.maxNewTokens"),
    ({"quickFix": {"maxNewTokens": 1e12}}, "spec.quickFix.maxNewTokens"),
    ({"quickFix": {"samples": True}}, "spec.quickFix.samples"),
    ({"evaluation": {"baseline": 1}}, "spec.evaluation.baseline"),
    ({"quickFix": {"epochs": "3"}}, "spec.quickFix.epochs"),
    ({"store": {"uri": "gopher://example.org/campaigns"}}, "spec.store.uri"),
    ({"store": {"uri": "http://example.org/campaigns"}}, "spec.store.uri"),
    ({"store": {"uri": "s3://b/" + "x" * 3000}}, "spec.store.uri"),
    ({"store": {"uri": "s3://b/p", "endpoint": "gopher://evil"}}, "spec.store.endpoint"),
    ({"resources": {"workerImage": "evil.example/img:tag; rm -rf /"}}, "spec.resources.workerImage"),
    ({"resources": {"nodeSelector": {"bad key!": "x"}}}, "spec.resources.nodeSelector"),
    ({"resources": {"tolerations": [{"operator": "Exists"}]}}, "spec.resources.tolerations[0]"),
    ({"resources": {"serviceAccountName": "Not_A_Name"}}, "spec.resources.serviceAccountName"),
    ({"model": {"uri": "hf://org/model", "maxModelLen": 10**9}}, "spec.model.maxModelLen"),
    ({"quickFix": {"batchSize": 10**6}}, "spec.quickFix.batchSize"),
])
def test_unbounded_or_mistyped_values_are_refused_naming_the_field(section: dict[str, Any], field: str) -> None:
    assert field in _refused(**section)


def test_the_bounds_still_take_ordinary_values() -> None:
    spec = parse_spec({**BASE, "seed": 2**32 - 1, "resources": {
        "workerImage": "registry.example:5000/team/worker:1.2@sha256:" + "a" * 64,
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "stages": {"train": {"cpu": "500m", "memory": "1.5Gi", "ephemeralStorage": "100G"}}},
        "store": {"uri": "file:///data/runs", "endpoint": "https://minio.example:9000"}})
    assert spec.seed == 2**32 - 1 and spec.resources.stages.train.cpu == "500m"
    assert parse_spec({**BASE, "store": {"uri": "relative/runs"}}).store.uri == "relative/runs"


def test_a_float_is_refused_for_an_integer_even_when_whole() -> None:
    assert "spec.quickFix.samples" in _refused(quickFix={"samples": 5.0})


def test_every_derived_job_name_of_a_longest_name_is_readable_and_fits() -> None:
    name = "c" * MAX_CAMPAIGN_NAME
    spec = parse_spec(BASE)
    keys = {BASELINE_KEY, "report"} | {s.key for phase in TrainingPhase for it in (1, 20)
                                       for s in plan(spec, phase, it)}
    last_attempt = RetryPolicy.model_fields["stage_retries"].metadata[-1].le + 1
    assert f"-{BASELINE_KEY}-a{last_attempt}" == LONGEST_JOB_SUFFIX
    for key in keys:
        for attempt in (1, last_attempt):
            derived = job_name(name, key, attempt)
            assert derived.startswith(name + "-") and len(derived) <= MAX_JOB_NAME, derived  # no hash needed
    assert campaign_name_problem(name) is None
    assert "at most 30" in campaign_name_problem("c" * 100)
    assert "DNS label" in campaign_name_problem("Upper")


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                found += _walk(node[key], f"{path}[]")
    return found


def test_the_crd_carries_the_bounds_and_cross_field_rules() -> None:
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert {"rule": f"size(self.metadata.name) <= {MAX_CAMPAIGN_NAME}"}.items() <= \
        root["x-kubernetes-validations"][0].items()
    schema = dict(_walk(root["properties"]["spec"], "spec"))
    assert schema["spec.seed"]["maximum"] == 2**32 - 1
    assert schema["spec.quickFix.maxNewTokens"]["maximum"] == bounds.MAX_NEW_TOKENS
    assert schema["spec.resources.stages.train.cpu"]["pattern"] and \
        not re.match(schema["spec.resources.stages.train.cpu"]["pattern"], "-3")
    assert not re.match(schema["spec.store.uri"]["pattern"], "gopher://x")
    assert schema["spec.datasets"]["maxItems"] == bounds.MAX_DATASETS
    rules = [r["rule"] for r in schema["spec"]["x-kubernetes-validations"]]
    assert any("exists_one" in r for r in rules) and any("epochsStep" in r for r in rules)
    toleration = schema["spec.resources.tolerations[]"]
    assert "has(self.key)" in toleration["x-kubernetes-validations"][0]["rule"]
    # Every string has a bound, so CEL cost estimates and stored objects stay small.
    unbounded = [p for p, node in schema.items() if node.get("type") == "string" and "enum" not in node
                 and "maxLength" not in node]
    assert unbounded == []
    # Structural schemas have no propertyNames/patternProperties.
    assert not any("propertyNames" in n or "patternProperties" in n for n in schema.values())


def test_pattern_errors_say_what_is_expected() -> None:
    message = _refused(resources={"stages": {"train": {"cpu": "-3"}}}, store={"uri": "gopher://x/y"})
    assert "spec.resources.stages.train.cpu: must be a Kubernetes quantity such as 4, 500m" in message
    assert "got '-3'" in message and "should match pattern" not in message
    assert "spec.store.uri: must be s3://bucket/prefix, file:///path or a plain path" in message
