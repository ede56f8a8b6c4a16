"""The Grafana dashboard and the alert rules query only what the operator really exports: metric
names and label names are checked against a registry built by consistency_operator.metrics."""

from __future__ import annotations

import re
from typing import Any

import pytest
from consistency_operator.metrics import FAMILY_NAMES
from packaging_helpers import (
    COMBOS,
    PromRefs,
    dashboard,
    exported_families,
    exported_series,
    only,
    panels,
    parse_promql,
    render,
    template_labels,
)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every panel target and templating query."""
    out = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target["expr"], target.get("legendFormat", "")))
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]\w*)\)", query)
            assert m, f"variable {var['name']}: unsupported query {query!r}"
            out.append((f"variable {var['name']!r}", m.group(1), "{{" + m.group(2) + "}}"))
    return out


def alert_rules() -> list[dict[str, Any]]:
    rule = only(render(COMBOS["cluster-peering-all-on"]), "PrometheusRule").doc
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def check_refs(where: str, expr: str, refs: PromRefs, output_labels: set[str]) -> None:
    series = exported_series()
    unknown = sorted(refs.metrics - set(series))
    assert not unknown, f"{where}: queries {unknown}, which the operator does not export ({expr})"
    assert refs.metrics, f"{where}: names no metric ({expr})"
    available = set().union(*(series[m] for m in refs.metrics))
    for metric, labels in refs.matcher_labels.items():
        missing = labels - series.get(metric, available)
        assert not missing, f"{where}: {metric} has no label(s) {sorted(missing)} ({expr})"
    missing = refs.grouping_labels - available
    assert not missing, f"{where}: groups by unknown label(s) {sorted(missing)} ({expr})"
    # After an aggregation only the grouping labels survive.
    visible = refs.grouping_labels if refs.grouping_labels else available
    missing = output_labels - visible
    assert not missing, f"{where}: shows label(s) {sorted(missing)} the result does not carry ({expr})"


def test_families_match_the_metrics_contract() -> None:
    families = exported_families()
    scraped = {f"{f.name}_total" if f.type == "counter" else f.name for f in families.values()}
    assert scraped == set(FAMILY_NAMES)


def test_dashboard_is_valid_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= variables, f"panel {panel['title']!r} uses undefined variables {used - variables}"
    # Panels must not overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area


@pytest.mark.parametrize(("where", "expr", "legend"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_dashboard_queries_name_exported_metrics_and_labels(where: str, expr: str, legend: str) -> None:
    check_refs(where, expr, parse_promql(expr), template_labels(legend))


def test_dashboard_covers_the_requested_views() -> None:
    titles = " | ".join(p["title"].lower() for p in panels(dashboard()))
    for view in ("campaigns by phase", "stage duration", "consistency", "accuracy per iteration and domain",
                 "cost per campaign", "job failures", "reconcile errors"):
        assert view in titles, f"dashboard lacks a {view!r} panel"


def test_alert_rules_query_exported_metrics() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"ConsistencyCampaignFailed", "ConsistencyStageOverDeadline", "ConsistencyJobFailuresRising"} <= names
    for rule in rules:
        assert rule["labels"]["severity"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        labels = set().union(*(template_labels(text) for text in rule["annotations"].values()))
        check_refs(f"alert {rule['alert']}", rule["expr"], parse_promql(rule["expr"]), labels)


def test_alert_thresholds_follow_values() -> None:
    values = {**COMBOS["cluster-peering-all-on"],
              "prometheusRule": {"enabled": True, "jobFailuresPerHour": 7, "overDeadlineFor": "20m",
                                 "agreementDropBelowBaseline": 0.12}}
    rules = {r["alert"]: r for group in only(render(values), "PrometheusRule").doc["spec"]["groups"]
             for r in group["rules"]}
    assert rules["ConsistencyJobFailuresRising"]["expr"].endswith("> 7")
    assert "(threshold 7)" in rules["ConsistencyJobFailuresRising"]["annotations"]["description"]
    assert rules["ConsistencyStageOverDeadline"]["for"] == "20m"
    assert rules["ConsistencyAgreementBelowBaseline"]["expr"].endswith("< -0.12")
    assert "(threshold 0.12)" in rules["ConsistencyAgreementBelowBaseline"]["annotations"]["description"]


def test_every_exported_family_is_shown_or_alerted_on() -> None:
    used: set[str] = set()
    for _, expr, _ in dashboard_queries():
        used |= parse_promql(expr).metrics
    for rule in alert_rules():
        used |= parse_promql(rule["expr"]).metrics
    families = exported_families().values()
    unused = sorted(f.name for f in families if not set(f.series()) & used)
    assert not unused, f"exported but neither on the dashboard nor in an alert: {unused}"


@pytest.mark.parametrize(("expr", "problem"), [
    ("sum by (phase) (consistency_campaign)", "does not export"),
    ('consistency_campaign_cost_usd{stage="x"}', "has no label"),
    ("sum by (domain) (consistency_campaign_cost_usd)", "groups by unknown"),
    ("sum(rate(consistency_job_outcomes_total[5m])", "unclosed"),
])
def test_checker_catches_bad_queries(expr: str, problem: str) -> None:
    """Control: the checks above do fail on a wrong name, label or bracket."""
    with pytest.raises((AssertionError, ValueError), match=problem):
        check_refs("control", expr, parse_promql(expr), set())


def test_legend_check_catches_aggregated_away_label() -> None:
    expr = "sum by (phase) (consistency_campaigns)"
    with pytest.raises(AssertionError, match="does not carry"):
        check_refs("control", expr, parse_promql(expr), {"namespace"})
