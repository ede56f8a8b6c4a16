"""Rules for editing a ConsistencyTraining's spec while its campaign runs.

* Before the first stage starts, every field may change.
* Once running, ``spec.model``, ``spec.datasets`` and ``spec.store`` are pinned: they define what
  the campaign is (which weights, which problems, where its artifacts live), and changing them
  would mix two campaigns' artifacts.  An edit to them is rejected: the condition
  ``SpecChangeRejected=True`` names the fields, a Warning Event is posted, and the campaign carries
  on with the pinned values.  Reverting the edit clears the condition.  To run with a new model or
  datasets, create a new ConsistencyTraining.
* Every other field (knobs, thresholds, retry policy, resources, budget, images) may change at any
  time and applies from the next stage the operator starts; a Job already running is never
  modified.  Lowering ``budget.maxUsd`` below the spend so far stops the campaign before its next
  stage.
* Edits to a finished (Succeeded / Failed) campaign change nothing.

The pinned values are stored in the annotation ``consistency.dev/pinned-spec`` (JSON), written when
the campaign starts, so the rule survives operator restarts.
"""

from __future__ import annotations

import json
from typing import Any

from consistency_core.spec import CampaignSpec

PINNED_ANNOTATION = "consistency.dev/pinned-spec"
PINNED_FIELDS = ("model", "datasets", "store")  # snake_case attribute names of CampaignSpec


def pinned_values(spec: CampaignSpec) -> str:
    wire = spec.to_wire()
    return json.dumps({_alias(f): wire.get(_alias(f)) for f in PINNED_FIELDS}, sort_keys=True)


def _alias(field: str) -> str:
    return CampaignSpec.model_fields[field].alias or field


def apply_pins(spec: CampaignSpec, annotations: dict[str, Any]) -> tuple[CampaignSpec, list[str]]:
    """The spec to run with (pinned fields restored) and the fields whose edits were rejected."""
    raw = annotations.get(PINNED_ANNOTATION)
    if not raw:
        return spec, []
    pinned = json.loads(raw)
    wire = spec.to_wire()
    changed = [f"spec.{_alias(f)}" for f in PINNED_FIELDS if wire.get(_alias(f)) != pinned.get(_alias(f))]
    if not changed:
        return spec, []
    restored = {**wire, **{_alias(f): pinned.get(_alias(f)) for f in PINNED_FIELDS}}
    return CampaignSpec.model_validate(restored), changed
