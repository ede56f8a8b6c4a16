from pathlib import Path

import pytest
import yaml
from consistency_core.spec import parse_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert any("cluster" in p.name for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_campaigns_are_valid(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "ConsistencyTraining":
            assert doc["apiVersion"] == "consistency.dev/v1alpha1"
            parse_spec(doc["spec"])
