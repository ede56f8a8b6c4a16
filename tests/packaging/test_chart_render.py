"""The Helm chart renders what each combination of values promises, lints clean, and its
values.schema.json rejects bad values with a message naming the key."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
from packaging_helpers import (
    CHART_DIR,
    COMBOS,
    NAMESPACE,
    Manifest,
    chart,
    container_env,
    of_kind,
    only,
    render,
    render_raw,
)


def kinds(manifests: list[Manifest]) -> list[tuple[str, str | None]]:
    return sorted((m.kind, m.namespace) for m in manifests)


def test_chart_version_matches_project() -> None:
    import tomllib

    from packaging_helpers import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    # `make images` tags with the project version; the chart's default image tag is appVersion.
    assert helm.Chart.load(CHART_DIR).metadata["appVersion"] == project


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_helm_lint_is_clean(combo: str) -> None:
    report = helm.lint(CHART_DIR, COMBOS[combo], strict=True, namespace=NAMESPACE, with_subcharts=True)
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings (2) and errors (3) fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_default_render_is_cluster_wide_with_service_and_dashboard() -> None:
    manifests = render()
    assert kinds(manifests) == sorted([
        ("ClusterRole", None), ("ClusterRoleBinding", None), ("ConfigMap", NAMESPACE),
        ("Deployment", NAMESPACE), ("NetworkPolicy", NAMESPACE), ("Service", NAMESPACE),
        ("ServiceAccount", NAMESPACE), ("ServiceAccount", NAMESPACE),
        ("ValidatingAdmissionPolicy", None), ("ValidatingAdmissionPolicyBinding", None),
    ])
    env = container_env(only(manifests, "Deployment"))
    assert env["CONSISTENCY_WATCH_NAMESPACES"] == ""
    assert env["CONSISTENCY_PEERING"] == ""


def test_deployment_shape_and_security() -> None:
    dep = only(render(), "Deployment").doc
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"] and container["resources"]["requests"]
    # /tmp is the only writable path, backed by an emptyDir.
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and "emptyDir" in volume
    # The selector must match the pod labels or the Deployment is rejected.
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_ports_and_probes_follow_values() -> None:
    manifests = render(COMBOS["custom-images-and-scheduling"])
    container = only(manifests, "Deployment").doc["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 18080, "metrics": 19090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/live", "port": "health"}
    env = container_env(only(manifests, "Deployment"))
    assert env["CONSISTENCY_HEALTH_PORT"] == "18080"
    assert env["CONSISTENCY_METRICS_PORT"] == "19090"
    service = only(manifests, "Service").doc
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 80, "targetPort": "metrics", "protocol": "TCP"}]


def test_default_probes_hit_kopf_liveness_endpoint() -> None:
    container = only(render(), "Deployment").doc["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_environment() -> None:
    manifests = render(COMBOS["custom-images-and-scheduling"])
    env = container_env(only(manifests, "Deployment"))
    assert env["CONSISTENCY_WORKER_IMAGE"] == "registry.example/worker:v9"
    assert env["CONSISTENCY_GPU_RESOURCE"] == "amd.com/gpu"
    assert env["CONSISTENCY_WORKER_SERVICE_ACCOUNT"] == "demo-consistency-operator-worker"
    assert env["CONSISTENCY_WORKER_NODE_SELECTOR"] == '{"gpu":"h100"}'
    assert env["CONSISTENCY_WORKER_TOLERATIONS"] == '[{"effect":"NoSchedule","key":"gpu","operator":"Exists"}]'
    assert env["CONSISTENCY_WORKER_CPU_NODE_SELECTOR"] == '{"pool":"cpu"}'
    assert env["CONSISTENCY_QUEUE_NAME"] == "team-gpus"
    assert env["CONSISTENCY_WORKER_RUNTIME_CLASS"] == "gvisor"
    assert env["CONSISTENCY_WORKER_HOST_USERS"] == "false"
    assert env["CONSISTENCY_WORKER_CPU_TOLERATIONS"] == '[{"effect":"NoSchedule","key":"spot","operator":"Exists"}]'
    assert env["CONSISTENCY_VERBOSE"] == "1"
    assert env["EXTRA"] == "1"
    image = only(manifests, "Deployment").doc["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example/op@sha256:" + "a" * 64

    default_env = container_env(only(render(), "Deployment"))
    assert default_env["CONSISTENCY_WORKER_IMAGE"] == "ghcr.io/consistency-dev/consistency-worker:0.1.0"
    assert default_env["CONSISTENCY_STORE_ENDPOINT"] == ""
    assert default_env["CONSISTENCY_STORE_SECRET"] == ""
    assert default_env["CONSISTENCY_VERBOSE"] == ""
    assert default_env["CONSISTENCY_QUEUE_NAME"] == ""
    assert default_env["CONSISTENCY_WORKER_RUNTIME_CLASS"] == ""
    assert default_env["CONSISTENCY_WORKER_HOST_USERS"] == "true"


def test_every_operator_setting_env_is_read_by_the_operator() -> None:
    """A CONSISTENCY_* variable the chart sets but the operator never reads is dead configuration."""
    from packaging_helpers import REPO

    source = "\n".join(p.read_text() for p in (REPO / "operator" / "consistency_operator").glob("*.py"))
    env = container_env(only(render(COMBOS["custom-images-and-scheduling"]), "Deployment"))
    unread = sorted(name for name in env if name.startswith("CONSISTENCY_") and f'"{name}"' not in source)
    assert unread == [], f"chart sets env vars the operator does not read: {unread}"


def test_namespace_mode_binds_only_the_release_namespace() -> None:
    manifests = render(COMBOS["namespace-mode"])
    # The only cluster-scoped grant of a namespaced install: listing namespaces (see test_rbac.py).
    assert only(manifests, "ClusterRole").name == "demo-consistency-operator-namespaces"
    assert only(manifests, "ClusterRoleBinding").doc["roleRef"]["name"] == "demo-consistency-operator-namespaces"
    role, binding = only(manifests, "Role"), only(manifests, "RoleBinding")
    assert role.namespace == binding.namespace == NAMESPACE
    assert container_env(only(manifests, "Deployment"))["CONSISTENCY_WATCH_NAMESPACES"] == NAMESPACE


def test_namespaces_mode_has_one_role_binding_and_worker_account_per_namespace() -> None:
    manifests = render(COMBOS["namespaces-mode-all-on"])
    assert only(manifests, "ClusterRole").name == "demo-consistency-operator-namespaces"
    roles = {m.namespace: m for m in of_kind(manifests, "Role")}
    bindings = {m.namespace: m for m in of_kind(manifests, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, binding in bindings.items():
        assert binding.doc["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                          "name": roles[ns].name}
        assert binding.doc["subjects"] == [{"kind": "ServiceAccount", "name": "demo-consistency-operator",
                                            "namespace": NAMESPACE}]
    env = container_env(only(manifests, "Deployment"))
    assert env["CONSISTENCY_WATCH_NAMESPACES"] == "team-a,team-b"
    assert env["CONSISTENCY_PEERING"] == "consistency-operator"
    assert env["CONSISTENCY_STORE_ENDPOINT"] == "http://minio.storage:9000"
    assert env["CONSISTENCY_STORE_SECRET"] == "s3-creds"
    workers = [m for m in of_kind(manifests, "ServiceAccount") if m.name.endswith("-worker")]
    assert sorted(m.namespace for m in workers) == ["team-a", "team-b", "team-c"]
    peerings = of_kind(manifests, "KopfPeering")
    assert sorted(m.namespace for m in peerings) == ["team-a", "team-b"]
    assert not of_kind(manifests, "ClusterKopfPeering")


def test_cluster_mode_binds_the_operator_account() -> None:
    manifests = render(COMBOS["cluster-peering-all-on"])
    role, binding = only(manifests, "ClusterRole"), only(manifests, "ClusterRoleBinding")
    assert binding.doc["roleRef"]["name"] == role.name
    assert binding.doc["subjects"] == [{"kind": "ServiceAccount", "name": "demo-consistency-operator",
                                        "namespace": NAMESPACE}]
    assert only(manifests, "ClusterKopfPeering").name == "consistency-operator"
    dep = only(manifests, "Deployment")
    assert dep.doc["spec"]["replicas"] == 2
    assert container_env(dep)["CONSISTENCY_PRIORITY"] == "10"


def test_worker_account_has_no_token_and_no_binding() -> None:
    for combo in ("defaults", "namespaces-mode-all-on", "cluster-peering-all-on"):
        manifests = render(COMBOS[combo])
        workers = [m for m in of_kind(manifests, "ServiceAccount") if m.name.endswith("-worker")]
        assert workers, combo
        for sa in workers:
            assert sa.doc["automountServiceAccountToken"] is False
        bound = {s["name"] for m in manifests if m.kind.endswith("Binding") for s in m.doc.get("subjects", [])}
        assert not bound & {sa.name for sa in workers}, combo


def test_all_off_renders_only_the_deployment() -> None:
    manifests = render(COMBOS["all-off"])
    assert [m.kind for m in manifests] == ["Deployment"]
    pod = manifests[0].doc["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-operator"
    assert container_env(manifests[0])["CONSISTENCY_WORKER_SERVICE_ACCOUNT"] == "existing-worker"


def test_monitoring_toggles() -> None:
    off = render()
    assert not of_kind(off, "ServiceMonitor") and not of_kind(off, "PrometheusRule")
    on = render(COMBOS["namespaces-mode-all-on"])
    monitor = only(on, "ServiceMonitor").doc
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = only(on, "Service").doc
    # The ServiceMonitor must select the metrics Service.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert only(on, "PrometheusRule").doc["metadata"]["labels"]["release"] == "kube-prometheus"


def test_dashboard_configmap_uses_the_sidecar_label() -> None:
    default_cm = only(render(), "ConfigMap").doc
    assert default_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    custom = only(render(COMBOS["namespaces-mode-all-on"]), "ConfigMap")
    assert custom.doc["metadata"]["labels"]["grafana_dashboard"] == "yes"
    assert custom.namespace == "monitoring"
    shipped = (CHART_DIR / "dashboards" / "consistency.json").read_text()
    assert custom.doc["data"]["consistency.json"].strip() == shipped.strip()


def test_service_monitor_without_service_fails_with_reason() -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(helm.HelmRenderError, match=r"needs metrics\.service\.enabled"):
        render(values)


def test_notes_tell_the_user_what_to_do_next() -> None:
    notes = render_raw({"store": {"secretName": "s3-creds"}})["consistency-operator/templates/NOTES.txt"]
    assert "kubectl get ct" in notes
    assert "kind: ConsistencyTraining" in notes
    assert "credentialsSecret: s3-creds" in notes
    assert "create secret generic s3-creds" in notes


def test_notes_example_campaign_is_valid() -> None:
    """The campaign NOTES suggests must pass the CRD's schema and the operator's spec model."""
    import jsonschema
    import yaml
    from consistency_core.spec import parse_spec

    notes = render_raw({"store": {"secretName": "s3-creds"}})["consistency-operator/templates/NOTES.txt"]
    block = re.search(r"<<EOF\n(.*?)\n\s*EOF", notes, re.S)
    assert block, "NOTES has no example campaign"
    campaign = yaml.safe_load(block.group(1))
    crd = yaml.safe_load((CHART_DIR / "crds" / "consistencytraining.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    assert campaign["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert campaign["kind"] == crd["spec"]["names"]["kind"]
    # openAPIV3Schema is OpenAPI 3.0 (boolean exclusiveMinimum): draft 4 semantics.
    jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"]).validate(campaign)
    spec = parse_spec(campaign["spec"])
    assert spec.store.credentials_secret == "s3-creds"


BAD_VALUES = [
    ({"watch": {"mode": "everywhere"}}, "at '/watch/mode': value must be one of 'namespace', 'namespaces', 'cluster'"),
    ({"watch": {"mode": "namespaces"}}, "at '/watch/namespaces': minItems: got 0, want 1"),
    ({"watch": {"mode": "namespaces", "namespaces": ["Team_A"]}}, "at '/watch/namespaces/0'"),
    ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum: got 70,000, want 65,535"),
    ({"health": {"port": "8080"}}, "at '/health/port': got string, want integer"),
    ({"replicaCount": 2}, "at '/replicaCount': maximum: got 2, want 1"),
    ({"imag": {"tag": "x"}}, "additional properties 'imag' not allowed"),
    ({"image": {"digest": "latest"}}, "at '/image/digest'"),
    ({"worker": {"gpuResource": "NVIDIA GPU"}}, "at '/worker/gpuResource'"),
    ({"store": {"endpoint": "minio:9000"}}, "at '/store/endpoint'"),
    ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "at '/metrics/serviceMonitor/interval'"),
    ({"worker": {"tolerations": [{"key": "gpu", "effect": "Sometimes"}]}}, "at '/worker/tolerations/0/effect'"),
    ({"worker": {"cpuNodeSelector": {"pool": 1}}}, "at '/worker/cpuNodeSelector/pool'"),
    ({"worker": {"queueName": "Team Queue"}}, "at '/worker/queueName'"),
    ({"worker": {"hostUsers": "no"}}, "at '/worker/hostUsers'"),
    ({"networkPolicy": {"internet": {"except": ["169.254.169.254"]}}}, "at '/networkPolicy/internet/except/0'"),
    ({"networkPolicy": {"internet": {"ports": [0]}}}, "at '/networkPolicy/internet/ports/0'"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m.split(":")[0] for _, m in BAD_VALUES])
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    assert message in str(caught.value)


def test_schema_accepts_every_combo() -> None:
    for values in COMBOS.values():
        chart().validate_schema(chart().merge_values(values))


def leaf_keys(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node and prefix not in ("resources",):
        return set().union(*(leaf_keys(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items()))
    return {prefix}


def test_readme_values_table_lists_every_value() -> None:
    import yaml

    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    readme = (CHART_DIR / "README.md").read_text().split("\n## Values\n")[1]
    table = set(re.findall(r"^\| `([\w.-]+)` \|", readme, re.M))
    keys = leaf_keys(values)
    assert keys - table == set(), "values missing from the README table"
    assert table - keys == set(), "README table documents values that do not exist"


# ---- stage pods' NetworkPolicy ------------------------------------------------------------------------

def _peer_allows(peer: dict[str, Any], ip: str) -> bool:
    import ipaddress

    block = peer.get("ipBlock")
    if block is None:
        return False  # pod/namespace selectors never match an external address
    address = ipaddress.ip_address(ip)
    cidr = ipaddress.ip_network(block["cidr"])
    if address.version != cidr.version or address not in cidr:
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))


def egress_allowed(policy: dict[str, Any], ip: str, port: int, protocol: str = "TCP") -> bool:
    """NetworkPolicy egress semantics for one destination: allowed iff some rule matches both its peers
    (no `to` = any destination) and its ports (no `ports` = any port)."""
    for rule in policy["spec"].get("egress") or []:
        ports = rule.get("ports")
        if ports and not any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports):
            continue
        if "to" not in rule or any(_peer_allows(peer, ip) for peer in rule["to"]):
            return True
    return False


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """matchLabels semantics (the chart uses no matchExpressions); an absent selector is no restriction."""
    return selector is None or (selector.get("matchLabels") or {}).items() <= labels.items()


def egress_allowed_to_pod(policy: dict[str, Any], pod: dict[str, dict[str, str]], port: int,
                          protocol: str = "TCP") -> bool:
    """Like egress_allowed, for a pod in the cluster ({"namespace": its namespace's labels, "pod": its labels}):
    a peer matches when its namespaceSelector and podSelector both select it (a podSelector alone means the
    policy's own namespace, which these checks never use)."""
    for rule in policy["spec"].get("egress") or []:
        ports = rule.get("ports")
        if ports and not any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports):
            continue
        if "to" not in rule:
            return True
        for peer in rule["to"]:
            if "namespaceSelector" in peer and _selects(peer["namespaceSelector"], pod["namespace"]) \
                    and _selects(peer.get("podSelector"), pod["pod"]):
                return True
    return False


def test_network_policy_default_denies_metadata_and_cluster_ranges_allows_dns_and_https() -> None:
    [policy] = of_kind(render(), "NetworkPolicy")
    assert policy.namespace == NAMESPACE
    spec = policy.doc["spec"]
    # Exactly the operator's stage pods (the labels jobs.py puts on every pod template).
    from consistency_operator.jobs import LABEL_MANAGED_BY, MANAGED_BY

    assert spec["podSelector"]["matchLabels"] == {LABEL_MANAGED_BY: MANAGED_BY,
                                                  "app.kubernetes.io/name": "consistency-worker"}
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    doc = policy.doc
    for ip, port in [("169.254.169.254", 80), ("169.254.169.254", 443), ("fd00:ec2::254", 80),
                     ("10.96.0.1", 443), ("10.244.3.7", 443), ("172.20.0.10", 443), ("192.168.1.5", 443),
                     ("100.64.0.10", 443), ("52.216.8.1", 22), ("52.216.8.1", 9000)]:
        assert not egress_allowed(doc, ip, port), (ip, port)
    for ip, port, proto in [("52.216.8.1", 443, "TCP"), ("2600:1f18::1", 443, "TCP")]:
        assert egress_allowed(doc, ip, port, proto), (ip, port, proto)
    # DNS only to the cluster DNS pods: no resolver on the internet or elsewhere in the cluster.
    for ip, port, proto in [("8.8.8.8", 53, "UDP"), ("8.8.8.8", 53, "TCP"), ("10.96.0.10", 53, "UDP"),
                            ("169.254.20.10", 53, "UDP")]:
        assert not egress_allowed(doc, ip, port, proto), (ip, port, proto)
    dns_pod = {"namespace": {"kubernetes.io/metadata.name": "kube-system"}, "pod": {"k8s-app": "kube-dns"}}
    assert egress_allowed_to_pod(doc, dns_pod, 53, "UDP") and egress_allowed_to_pod(doc, dns_pod, 53, "TCP")
    other = {"namespace": {"kubernetes.io/metadata.name": "team-x"}, "pod": {"k8s-app": "kube-dns"}}
    assert not egress_allowed_to_pod(doc, other, 53, "UDP")
    assert not egress_allowed_to_pod(doc, {**dns_pod, "pod": {"app": "evil-dns"}}, 53, "UDP")


def test_network_policy_per_stage_namespace_extra_egress_and_toggles() -> None:
    manifests = render(COMBOS["namespaces-mode-all-on"])
    assert sorted(m.namespace for m in of_kind(manifests, "NetworkPolicy")) == ["team-a", "team-b", "team-c"]
    [policy] = of_kind(render(COMBOS["custom-images-and-scheduling"]), "NetworkPolicy")
    assert egress_allowed(policy.doc, "10.0.5.10", 9000)  # the explicitly allowed in-network store
    assert not egress_allowed(policy.doc, "10.0.5.11", 9000)
    values = {"networkPolicy": {"internet": {"ports": [443, 8443], "ipv6": False,
                                             "except": ["169.254.169.254/32", "10.0.0.0/8"]}}}
    [policy] = of_kind(render(values), "NetworkPolicy")
    assert egress_allowed(policy.doc, "52.216.8.1", 8443) and egress_allowed(policy.doc, "169.254.169.1", 443)
    assert not egress_allowed(policy.doc, "169.254.169.254", 443) and not egress_allowed(policy.doc, "2600::1", 443)
    [policy] = of_kind(render({"networkPolicy": {"dns": {"enabled": False}, "internet": {"enabled": False}}}),
                       "NetworkPolicy")
    assert policy.doc["spec"]["egress"] == [] and not egress_allowed(policy.doc, "8.8.8.8", 53, "UDP")
    assert of_kind(render(COMBOS["all-off"]), "NetworkPolicy") == []


def test_notes_warn_that_a_private_store_needs_an_egress_rule() -> None:
    notes = render_raw({"store": {"endpoint": "http://minio.storage:9000"}})["consistency-operator/templates/NOTES.txt"]
    assert "networkPolicy.extraEgress" in notes and "TCP 443" in notes
    notes = render_raw({"networkPolicy": {"enabled": False}})["consistency-operator/templates/NOTES.txt"]
    assert "extraEgress" not in notes


def test_network_policy_dns_target_and_egress_cidrs_are_configurable() -> None:
    values = {"networkPolicy": {"dns": {"namespace": "dns", "podSelector": {"k8s-app": "coredns"},
                                        "extraPeers": [{"ipBlock": {"cidr": "169.254.20.10/32"}}]},
                                "egressCIDRs": ["52.216.0.0/15", "2600:1f18::/32"]}}
    [policy] = of_kind(render(values), "NetworkPolicy")
    doc = policy.doc
    coredns = {"namespace": {"kubernetes.io/metadata.name": "dns"}, "pod": {"k8s-app": "coredns"}}
    assert egress_allowed_to_pod(doc, coredns, 53, "UDP")
    assert egress_allowed(doc, "169.254.20.10", 53, "UDP") and not egress_allowed(doc, "8.8.8.8", 53, "UDP")
    # 443 only to the listed ranges now; everything else on the internet is closed.
    assert egress_allowed(doc, "52.217.1.1", 443) and egress_allowed(doc, "2600:1f18::1", 443)
    assert not egress_allowed(doc, "140.82.112.3", 443) and not egress_allowed(doc, "52.216.8.1", 80)

