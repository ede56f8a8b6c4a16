"""Prometheus' own linter on what we ship: `promtool check metrics` on a real HTTP scrape of the
operator's registry (every family with a sample), `promtool check rules` on the PrometheusRule the chart
renders, and `promtool test rules` proving each alert fires on series named as the operator exports them.

promtool comes from the Debian package `prometheus` (`make test` installs it when it runs as root with
apt-get); without it these tests skip and say so.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_helpers import COMBOS, exported_series, only, parse_promql, render

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; `make test` installs it as root with apt-get)")

pytest.importorskip("aiohttp")
from consistency_operator.metrics import FAMILY_NAMES, Metrics, build_metrics  # noqa: E402
from consistency_operator.server import Endpoints  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.metrics import MetricWrapperBase  # noqa: E402


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


# --- metrics --------------------------------------------------------------------------------------


def fill(metrics: Metrics) -> None:
    """One sample in every family: an unlabelled-child family is absent from a scrape, so unchecked."""
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        child = value.labels(**{name: "x" for name in value._labelnames}) if value._labelnames else value
        if isinstance(child, Histogram):
            child.observe(90.0)
        elif isinstance(child, Counter):
            child.inc(2)
        else:
            child.set(1.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(metrics: Metrics) -> bytes:
    """GET /metrics from the operator's real endpoint, as Prometheus would."""

    async def run() -> bytes:
        endpoints = Endpoints(metrics)
        port = free_port()
        await endpoints.start(port, host="127.0.0.1")
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
        finally:
            await endpoints.stop()

    return asyncio.run(run())


def check_metrics(body: bytes) -> str:
    """promtool's complaints about a scrape ('' when clean)."""
    proc = promtool("check", "metrics", stdin=body)
    return (proc.stdout + proc.stderr).strip() if proc.returncode else ""


def test_operator_scrape_passes_promtool_check_metrics() -> None:
    metrics = build_metrics()
    fill(metrics)
    body = scrape(metrics)
    lines = body.decode().splitlines()
    samples = {line.split("{")[0].split()[0] for line in lines if line and not line.startswith("#")}
    # Every family of the contract has a sample in the scrape, so promtool saw all of them.
    missing = [n for n in FAMILY_NAMES if not {n, f"{n}_bucket"} & samples]
    assert not missing, missing
    assert check_metrics(body) == ""


@pytest.mark.parametrize(("make", "complaint"), [
    (lambda r: Gauge("consistency_campaign_gpu_hours", "h", registry=r).set(1), 'base unit "seconds"'),
    (lambda r: Histogram("consistency_stage_duration_milliseconds", "h", registry=r).observe(1),
     'base unit "seconds"'),
    (lambda r: Gauge("consistency_jobs_total", "h", registry=r).set(1), "non-counter metrics should not"),
], ids=["hours", "milliseconds", "gauge_total"])
def test_metrics_check_catches_bad_names(make: Any, complaint: str) -> None:
    """Control: the same scrape-and-check path fails on a name against Prometheus conventions."""
    metrics = build_metrics(CollectorRegistry())
    fill(metrics)
    make(metrics.registry)
    assert complaint in check_metrics(scrape(metrics))


# --- alert rules ----------------------------------------------------------------------------------

SEVERITY = "warning"  # values.yaml default
CAMPAIGN = {"namespace": "team-a", "campaign": "c1"}


def rendered_rules() -> dict[str, Any]:
    """The PrometheusRule's spec is a Prometheus rule file as is (`groups:`)."""
    return only(render({**COMBOS["cluster-peering-all-on"]}), "PrometheusRule").doc["spec"]


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    selector = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def alert(name: str, at: str, labels: dict[str, str] | None) -> dict[str, Any]:
    expected = [] if labels is None else [{"exp_labels": {**labels, "severity": SEVERITY}}]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


PRIMARY_FELL = {**CAMPAIGN, "phase": "1B.1", "iteration": "1", "endpoint": "math pairwise agreement", "bound": "high"}
TRAINED_MATH = {**CAMPAIGN, "phase": "1B.1", "iteration": "1", "domain": "math"}
# Input series named exactly as the operator exports them (checked below), one scenario per alert;
# each alert also has a time at which it must not fire yet.
INPUT = [
    # c1 turns Failed at 3m; c2 never does.
    series("consistency_campaign_phase", {**CAMPAIGN, "phase": "Failed"}, "0 0 0 1x30"),
    series("consistency_campaign_phase", {**CAMPAIGN, "campaign": "c2", "phase": "Failed"}, "0x30"),
    series("consistency_stage_start_timestamp_seconds", {**CAMPAIGN, "stage": "1b2-generate"}, "0x40"),
    series("consistency_stage_deadline_seconds", {**CAMPAIGN, "stage": "1b2-generate"}, "600x40"),
    series("consistency_job_outcomes_total", {"stage": "train", "outcome": "failed"}, "0+1x60"),
    series("consistency_job_outcomes_total", {"stage": "train", "outcome": "succeeded"}, "0+5x60"),
    series("consistency_campaign_cost_usd", CAMPAIGN, "0+10x20"),
    series("consistency_campaign_budget_usd", CAMPAIGN, "50x20"),
    series("consistency_reconcile_errors_total", {"kind": "api"}, "0+1x40"),
    # primary endpoint: the upper bound of its interval drops below 0 from minute 6 on
    series("consistency_evaluation_primary_endpoint_change_ratio", PRIMARY_FELL, "0.02x5 -0.01x10"),
    # wrong agreement is meant to fall: its drop never alerts
    series("consistency_evaluation_primary_endpoint_change_ratio",
           {**PRIMARY_FELL, "phase": "1B.2", "endpoint": "math wrong agreement"}, "-0.05x15"),
    # pairwise agreement: the trained model's falls 0.10 below the base model's from minute 6 on
    series("consistency_evaluation_pairwise_agreement_ratio",
           {**CAMPAIGN, "phase": "baseline", "iteration": "0", "domain": "math"}, "0.40x15"),
    series("consistency_evaluation_pairwise_agreement_ratio", TRAINED_MATH, "0.38x5 0.30x10"),
]
ALERTS = [
    alert("ConsistencyCampaignFailed", "1m", None),
    alert("ConsistencyCampaignFailed", "5m", {**CAMPAIGN, "phase": "Failed"}),
    # Failed for more than 10 minutes: a campaign kept for the record no longer alerts.
    alert("ConsistencyCampaignFailed", "14m", None),
    # Past the 600 s deadline from 11m on; fires once it stayed there for overDeadlineFor (5m).
    alert("ConsistencyStageOverDeadline", "12m", None),
    alert("ConsistencyStageOverDeadline", "20m", {**CAMPAIGN, "stage": "1b2-generate"}),
    alert("ConsistencyJobFailuresRising", "2m", None),
    alert("ConsistencyJobFailuresRising", "30m", {"stage": "train"}),
    alert("ConsistencyCampaignOverBudget", "5m", None),
    alert("ConsistencyCampaignOverBudget", "10m", CAMPAIGN),
    alert("ConsistencyOperatorReconcileErrors", "10m", None),
    alert("ConsistencyOperatorReconcileErrors", "30m", {"kind": "api"}),
    alert("ConsistencyPrimaryEndpointFell", "3m", None),
    alert("ConsistencyPrimaryEndpointFell", "8m", PRIMARY_FELL),
    alert("ConsistencyAgreementBelowBaseline", "3m", None),
    alert("ConsistencyAgreementBelowBaseline", "8m", TRAINED_MATH),
]


def without_annotations(rules: dict[str, Any]) -> dict[str, Any]:
    # Unit tests compare annotations verbatim; their templates are validated by `check rules` instead.
    groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
              for g in rules["groups"]]
    return {"groups": groups}


def test_rendered_prometheusrule_passes_promtool_check_rules(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.yaml", rendered_rules())
    proc = promtool("check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


def test_check_rules_catches_bad_names(tmp_path: Path) -> None:
    """Control: invalid recording-rule and label names in the rendered rules fail the check."""
    spec = rendered_rules()
    spec["groups"][0]["rules"].append({"record": "consistency:cost-usd", "expr": "consistency_campaign_cost_usd"})
    spec["groups"][1]["rules"][0]["labels"]["bad-label"] = "x"
    proc = promtool("check", "rules", str(write(tmp_path / "rules.yaml", spec)))
    assert proc.returncode != 0
    assert "invalid recording rule name" in proc.stderr and "invalid label name" in proc.stderr


def run_rule_tests(tmp_path: Path, rules: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    write(tmp_path / "rules.yaml", without_annotations(rules))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": INPUT, "alert_rule_test": ALERTS}]}
    return promtool("test", "rules", str(write(tmp_path / "tests.yaml", tests)))


def test_every_alert_fires_on_the_operators_series(tmp_path: Path) -> None:
    exported = exported_series()
    for s in INPUT:
        assert parse_promql(s["series"]).metrics <= set(exported), f"{s['series']} is not what the operator exports"
    tested = {a["alertname"] for a in ALERTS}
    defined = {r["alert"] for g in rendered_rules()["groups"] for r in g["rules"]}
    assert tested == defined
    proc = run_rule_tests(tmp_path, rendered_rules())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_tests_catch_a_misnamed_metric(tmp_path: Path) -> None:
    """Control: an alert querying a name the operator does not export never fires, and the test says so."""
    text = yaml.safe_dump(rendered_rules()).replace("campaign_cost_usd", "campaign_cost_dollars")
    proc = run_rule_tests(tmp_path, yaml.safe_load(text))
    assert proc.returncode != 0
    assert "ConsistencyCampaignOverBudget" in proc.stdout + proc.stderr
