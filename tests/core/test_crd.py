from pathlib import Path

import yaml
from consistency_core import crd

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_is_fresh():
    assert crd.main(["--check", str(ROOT / "crds" / "consistencytraining.yaml")]) == 0, "run `make crds`"


def test_stale_crd_is_detected(tmp_path):
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render().replace("Peak learning rate.", "Learning rate."))
    assert crd.main(["--check", str(stale)]) == 1


def _walk(node, path=""):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_documented():
    doc = yaml.safe_load(crd.render())
    version = doc["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "const"):
            assert banned not in node, f"{path} uses {banned}"
        if path.startswith(".spec.") and path.count(".") == 2:
            assert node.get("description"), f"{path} lacks a description (kubectl explain)"
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["model", "store"]
    assert spec["properties"]["quickFix"]["properties"]["samples"]["default"] == 5
    assert spec["properties"]["thresholds"]["properties"]["accuracy"]["default"] == {"math": 0.55}
    assert spec["properties"]["datasets"]["items"]["properties"]["format"]["enum"] == [
        "gsm8k", "mbpp", "humaneval", "mmlu", "jsonl"]
    stages = spec["properties"]["resources"]["properties"]["stages"]["properties"]
    for cpu_stage in ("prepare", "distill", "report"):
        props = stages[cpu_stage]["properties"]
        assert (props["gpus"]["default"], props["cpu"]["default"], props["memory"]["default"],
                props["deadlineSeconds"]["default"]) == (0, "2", "8Gi", 3600), cpu_stage
    assert stages["train"]["properties"]["gpus"]["default"] == 1
    assert spec["properties"]["export"]["properties"]["merged"]["default"] is False
    outputs = schema["properties"]["status"]["properties"]["outputs"]["properties"]
    assert set(outputs) == {"adapter", "report", "modelCard", "merged"}
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Consistency"] == ".status.consistency" and columns["Cost USD"] == ".status.cost.usd"
    assert {"Status", "Phase", "Iteration", "Math", "Age"} <= set(columns)
    assert doc["spec"]["names"]["shortNames"] == ["ct"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]["items"]
    assert set(conditions["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


def test_readme_configuration_reference_is_fresh():
    from consistency_core import reference

    assert reference.main([str(ROOT / "README.md"), "--check"]) == 0, "run `make docs`"
