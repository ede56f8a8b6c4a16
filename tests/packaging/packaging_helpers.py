"""Shared helpers of the packaging tests: render the chart with Helm's Go engine, read what the
operator exports, and pick apart PromQL enough to check which metrics and labels it names.

(Deliberately not a package: `tests/packaging/__init__.py` would shadow the `packaging` library.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "consistency-operator"
DASHBOARD = CHART_DIR / "dashboards" / "consistency.json"
RELEASE = "demo"
NAMESPACE = "ops"

# Value sets other tests reuse: every watch mode, every toggle on and every toggle off.
COMBOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespace-mode": {"watch": {"mode": "namespace"}},
    "namespaces-mode-all-on": {
        "watch": {"mode": "namespaces", "namespaces": ["team-a", "team-b"]},
        "peering": {"enabled": True, "installCRDs": True},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "grafana": {"dashboards": {"label": "grafana_dashboard", "labelValue": "yes", "namespace": "monitoring"}},
        "store": {"endpoint": "http://minio.storage:9000", "secretName": "s3-creds"},
        "worker": {"serviceAccount": {"extraNamespaces": ["team-c"]}},
    },
    "cluster-peering-all-on": {
        "peering": {"enabled": True, "priority": 10},
        "replicaCount": 2,
        "metrics": {"serviceMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": True},
    },
    "all-off": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing-operator"},
        "worker": {"serviceAccount": {"create": False, "name": "existing-worker"}},
        "metrics": {"service": {"enabled": False}},
        "grafana": {"dashboards": {"enabled": False}},
        "networkPolicy": {"enabled": False},
        "tenancy": {"admissionPolicy": {"enabled": False}},
    },
    "custom-images-and-scheduling": {
        "image": {"repository": "registry.example/op", "digest": "sha256:" + "a" * 64},
        "worker": {
            "image": {"repository": "registry.example/worker", "tag": "v9"},
            "gpuResource": "amd.com/gpu",
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "cpuNodeSelector": {"pool": "cpu"},
            "cpuTolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
            "queueName": "team-gpus",
            "runtimeClassName": "gvisor",
            "hostUsers": False,
        },
        "networkPolicy": {"extraEgress": [{"to": [{"ipBlock": {"cidr": "10.0.5.10/32"}}],
                                           "ports": [{"port": 9000, "protocol": "TCP"}]}]},
        "health": {"port": 18080, "path": "/live"},
        "metrics": {"port": 19090, "service": {"port": 80}},
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "nodeSelector": {"role": "control"},
        "verbose": True,
    },
}


@dataclass(frozen=True)
class Manifest:
    template: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        return self.doc["metadata"].get("namespace")


def chart() -> helm.Chart:
    """A freshly loaded chart (about 1 ms).

    Not cached: rendering drops disabled subcharts from the loaded chart in place (Helm's
    dependency processing; helm-python-sdk 0.2.2), so a shared handle would lose the kopf-peering
    subchart after the first render with peering.installCRDs off.
    """
    return helm.Chart.load(CHART_DIR)


def render_raw(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` would produce it (NOTES included)."""
    with chart() as loaded:
        return loaded.render(values, name=RELEASE, namespace=namespace, is_install=True)


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[Manifest]:
    out: list[Manifest] = []
    for template, text in sorted(render_raw(values, namespace).items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(Manifest(template, doc))
    return out


def only(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {[(m.name, m.namespace) for m in found]}"
    return found[0]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.kind == kind]


def container_env(deployment: Manifest) -> dict[str, str]:
    container = deployment.doc["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", []) if "valueFrom" not in e}


def rule_triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules expanded to (apiGroup, resource, verb) triples."""
    out: set[tuple[str, str, str]] = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb))
    return out


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel in dashboard order, rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


# --- what the operator exports --------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str  # family name as prometheus_client reports it (counters without `_total`)
    type: str
    labels: frozenset[str]

    def series(self) -> dict[str, frozenset[str]]:
        """Scraped series names with their label names."""
        if self.type == "counter":
            return {f"{self.name}_total": self.labels, f"{self.name}_created": self.labels}
        if self.type == "histogram":
            return {f"{self.name}_bucket": self.labels | {"le"}, f"{self.name}_sum": self.labels,
                    f"{self.name}_count": self.labels, f"{self.name}_created": self.labels}
        return {self.name: self.labels}


def exported_families() -> dict[str, Family]:
    """Every family the operator's metrics module registers, read from a registry it builds."""
    from consistency_operator import metrics as operator_metrics
    from prometheus_client.metrics import MetricWrapperBase

    built = operator_metrics.build_metrics()
    collected = {f.name: f.type for f in built.registry.collect()}
    families: dict[str, Family] = {}
    for value in vars(built).values():
        if isinstance(value, MetricWrapperBase):
            # Label names are only reachable through this attribute while a metric has no children.
            labels = frozenset(value._labelnames)
            name = value._name
            families[name] = Family(name, value._type, labels)
    # The registry is the truth of what is scraped; the wrappers only add label names.
    assert set(families) == set(collected), (set(families), set(collected))
    assert all(families[n].type == t for n, t in collected.items())
    return families


def exported_series() -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for family in exported_families().values():
        out.update(family.series())
    return out


# --- PromQL ---------------------------------------------------------------------------------------

_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan", "atan2", "start", "end",
    # Aggregation operators: also followed by `by`/`without`, not only by `(`.
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r'(?P<str>"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`)'
    r"|(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]*)"
    r"|(?P<id>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<op>=~|!~|!=|==|>=|<=|[{}()\[\],=<>+\-*/%^@])"
    r"|(?P<ws>\s+)"
)


@dataclass
class PromRefs:
    metrics: set[str] = field(default_factory=set)
    matcher_labels: dict[str, set[str]] = field(default_factory=dict)  # metric -> labels matched
    grouping_labels: set[str] = field(default_factory=set)


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    # Grafana's interval macros and template variables become plain PromQL before tokenising.
    expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenise PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            yield kind, m.group()


def parse_promql(expr: str) -> PromRefs:
    """Metric names, matcher labels and grouping labels an expression uses.

    Not a full parser: enough to tell a metric name from a function, keyword, label or duration,
    and to reject unbalanced brackets.
    """
    toks = list(_tokens(expr))
    refs = PromRefs()
    stack: list[str] = []
    i = 0
    last_metric: str | None = None
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "op" and text in "([{":
            stack.append(text)
        elif kind == "op" and text in ")]}":
            opener = {")": "(", "]": "[", "}": "{"}[text]
            if not stack or stack.pop() != opener:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
        elif kind == "id":
            inside = stack[-1] if stack else ""
            if inside == "{":
                if nxt in ("=", "!=", "=~", "!~"):
                    refs.matcher_labels.setdefault(last_metric or "", set()).add(text)
            elif inside == "[":
                pass  # a duration such as 5m was tokenised as a number; anything else is a macro
            elif text.lower() in _GROUPING and nxt == "(":
                # by (a, b): collect the label list up to the closing parenthesis.
                j = i + 2
                while j < len(toks) and toks[j][1] != ")":
                    if toks[j][0] == "id":
                        refs.grouping_labels.add(toks[j][1])
                    j += 1
                i = j + 1
                continue
            elif nxt == "(" or text.lower() in _KEYWORDS:
                pass  # function, aggregation or keyword
            else:
                refs.metrics.add(text)
                last_metric = text
        i += 1
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in {expr!r}")
    return refs


def template_labels(text: str) -> set[str]:
    """Label names a Grafana legend (`{{ label }}`) or alert template (`$labels.label`) uses."""
    found = set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", text))
    found |= set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text))
    return found
