"""The chart grants the operator exactly what it calls: REQUIRED_PERMISSIONS, the list the operator
maintains in consistency_operator/rbac.py (and checks against its own API requests), compared with
the rendered Role/ClusterRole rules both ways, for every watch mode, with and without peering."""

from __future__ import annotations

from typing import Any

import pytest
from consistency_operator.rbac import REQUIRED_PERMISSIONS
from packaging_helpers import NAMESPACE, Manifest, of_kind, render, rule_triples

Triple = tuple[str, str, str]
REQUIRED = set(REQUIRED_PERMISSIONS)
# The operator's list is the union over modes; which part applies depends on how it runs.
PEERING = {p for p in REQUIRED if p[0] == "kopf.dev"}
NAMESPACE_WATCH = {p for p in REQUIRED if p[:2] == ("", "namespaces")}
ALWAYS = REQUIRED - PEERING - NAMESPACE_WATCH

MODES: dict[str, dict[str, Any]] = {
    "cluster": {"watch": {"mode": "cluster"}},
    "namespace": {"watch": {"mode": "namespace"}},
    "namespaces": {"watch": {"mode": "namespaces", "namespaces": ["team-a", "team-b"]}},
}


def expected(mode: str, peering: bool) -> set[Triple]:
    out = set(ALWAYS)
    if mode != "cluster":
        out |= NAMESPACE_WATCH
    if peering:
        peering_resource = "clusterkopfpeerings" if mode == "cluster" else "kopfpeerings"
        out |= {p for p in PEERING if p[1] == peering_resource}
    return out


def bound_rules(manifests: list[Manifest]) -> dict[str | None, set[Triple]]:
    """Effective permissions of the operator's ServiceAccount: None = cluster-wide, else per namespace."""
    roles = {(m.kind, m.namespace, m.name): m.doc.get("rules", []) for m in manifests
             if m.kind in ("Role", "ClusterRole")}
    grants: dict[str | None, set[Triple]] = {}
    for binding in of_kind(manifests, "RoleBinding") + of_kind(manifests, "ClusterRoleBinding"):
        assert binding.doc["subjects"] == [{"kind": "ServiceAccount", "name": "demo-consistency-operator",
                                            "namespace": NAMESPACE}]
        ref = binding.doc["roleRef"]
        role_ns = binding.namespace if ref["kind"] == "Role" else None
        rules = roles[(ref["kind"], role_ns, ref["name"])]
        grants.setdefault(binding.namespace, set()).update(rule_triples(rules))
    return grants


def test_required_permissions_are_split_the_way_the_chart_assumes() -> None:
    assert ALWAYS, "REQUIRED_PERMISSIONS lists no campaign permissions"
    assert {p[1] for p in PEERING} <= {"kopfpeerings", "clusterkopfpeerings"}
    for _group, resource, verb in REQUIRED:
        assert verb in {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}, verb
        assert resource != "secrets", "the operator must not read Secrets (the kubelet resolves secretKeyRef)"


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_rendered_rules_equal_required_permissions(mode: str, peering: bool) -> None:
    values = {**MODES[mode], "peering": {"enabled": peering}}
    grants = bound_rules(render(values))
    want = expected(mode, peering)
    if mode == "cluster":
        assert set(grants) == {None}
        got = grants[None]
    else:
        watched = {"namespace": {NAMESPACE}, "namespaces": {"team-a", "team-b"}}[mode]
        # Namespaced installs get one cluster-scoped rule set (namespace listing) and a Role per namespace.
        assert set(grants) == watched | {None}
        assert grants[None] == NAMESPACE_WATCH
        for ns in watched:
            got = grants[ns] | grants[None]
            assert got == want, f"{ns}: missing {sorted(want - got)}, extra {sorted(got - want)}"
    assert got == want, f"missing {sorted(want - got)}, extra {sorted(got - want)}"


def test_every_required_permission_is_granted_in_some_mode() -> None:
    granted: set[Triple] = set()
    for mode in MODES:
        for peering in (False, True):
            for rules in bound_rules(render({**MODES[mode], "peering": {"enabled": peering}})).values():
                granted |= rules
    assert granted == REQUIRED, (
        f"never granted: {sorted(REQUIRED - granted)}, never required: {sorted(granted - REQUIRED)}"
    )


def test_no_wildcards_or_resource_names() -> None:
    for mode in MODES:
        for m in render({**MODES[mode], "peering": {"enabled": True}}):
            for rule in m.doc.get("rules", []):
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], (mode, m.name, rule)
                assert "nonResourceURLs" not in rule
