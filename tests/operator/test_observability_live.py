"""Observability proven live: a real Prometheus scrapes the real operator while it drives campaigns
against the emulator, evaluates the chart's rendered alert rules, and answers every dashboard query.

Scenario (one operator, one Prometheus, everything at 1 s intervals):

* `succeeds` runs 1B.1 and 1B.2 to Succeeded; it must raise no alert, ever;
* `fails-gate` fails its 1B.1 gate (one iteration allowed) -> ConsistencyCampaignFailed; its trained model
  also agrees less than the base model (math pairwise agreement 0.31 -> 0.20) and its primary endpoint's
  interval lies below zero -> ConsistencyAgreementBelowBaseline and ConsistencyPrimaryEndpointFell;
* `over-budget` spends more than its budget on the baseline evaluation (its Job ran two hours on a
  $5 budget), then the operator refuses the next stage -> ConsistencyCampaignOverBudget and Failed;
* `job-fails` has its prepare Job fail for good -> Failed and ConsistencyJobFailuresRising;
* `late-stage` runs into 1B.2 and its running stage is backdated past the Job's deadline (we cannot
  wait six hours) -> ConsistencyStageOverDeadline, and not before the backdating;
* `invalid-spec` is rejected -> ConsistencyOperatorReconcileErrors (kind invalid_spec).

The rules are the chart's PrometheusRule rendered with short `for:` durations and a zero Job-failure
threshold (chart values; the shipped defaults are untouched). Every dashboard target, found by walking
the dashboard JSON (new panels are covered without touching this file), is sent to Prometheus with its
template variables substituted the way Grafana does it, once as "All" (`.*`) and once with one real
value each, and must return a series with a finite, non-zero value.

`CONSISTENCY_DASHBOARD_PNG=<path>` also writes the rendered panel grid there (`make dashboard-png`
refreshes the picture in the chart's docs).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_server import PROMETHEUS, SKIP_REASON, PrometheusServer, Series

pytestmark = [pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON), pytest.mark.timeout(120)]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packaging"))
from consistency_core.names import parse_rfc3339, rfc3339  # noqa: E402
from dashboard_picture import PanelData, render  # noqa: E402
from kmock_cluster import EmulatedCluster, wait_for  # noqa: E402
from operator_harness import (  # noqa: E402
    CT,
    CTS,
    FAILING,
    PASSING,
    PREPARE,
    TRAIN,
    JobController,
    OperatorProcess,
    campaign_body,
    get_ct,
    run_quick_fix,
    wait_status,
)
from packaging_helpers import COMBOS, dashboard, only, panels  # noqa: E402
from packaging_helpers import render as render_chart  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

NS = "default"
SUCCEEDS, FAILS_GATE, OVER_BUDGET, JOB_FAILS, LATE, INVALID = (
    "succeeds", "fails-gate", "over-budget", "job-fails", "late-stage", "invalid-spec")
CAMPAIGNS = (SUCCEEDS, FAILS_GATE, OVER_BUDGET, JOB_FAILS, LATE, INVALID)

# Chart values for the test's rule file: alerts fire after 2 s instead of minutes.
RULE_VALUES = {"prometheusRule": {"enabled": True, "overDeadlineFor": "2s", "jobFailuresFor": "2s",
                                  "reconcileErrorsFor": "2s", "jobFailuresPerHour": 0}}

# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval): 4 s with 1 s
# scrapes and a 1 s step, the step the range queries here use.
RATE_INTERVAL, STEP = "4s", 1.0
# "One real value" per variable: the late campaign has a row in every panel (evaluations, examples,
# cost, budget and a running stage).
REAL_VALUES = {"namespace": NS, "campaign": LATE, "domain": "math"}
# What the variables' label_values queries must list after the scenario.
VARIABLE_VALUES = {"namespace": {NS}, "campaign": set(CAMPAIGNS), "domain": {"math", "code"}}


@dataclass(frozen=True)
class LiveRun:
    prom: PrometheusServer
    operator: OperatorProcess
    start: float  # when Prometheus started: the dashboard's time range begins here
    backdated: float  # when the late stage was moved past its deadline
    end: float

    @property
    def range_s(self) -> int:
        return math.ceil(self.end - self.start)


def rules() -> dict[str, Any]:
    return only(render_chart({**COMBOS["cluster-peering-all-on"], **RULE_VALUES}), "PrometheusRule").doc["spec"]


def run_expansion(jobs: JobController, name: str) -> None:
    """1B.2 (scan generate, distill, train, evaluate) and the final report of a promoted campaign."""
    out = f"s3://campaigns/runs/{NS}/{name}"
    for key, metrics, outputs in (
            ("1b2-generate", {"problems": 4400, "completions": 26400}, {}),
            ("1b2-distill", {"examples": 2500}, {}),
            ("1b2-train", TRAIN, {"adapter": f"{out}/1b2-train/adapter"}),
            ("1b2-evaluate", {**PASSING, "consistency": 0.71}, {"report": f"{out}/1b2-evaluate/r.json"}),
            ("report", {"figures": 4}, {"report": f"{out}/report/report.md", "adapter": f"{out}/report/adapter"})):
        jobs.succeed(jobs.wait_job(NS, name, key), metrics, outputs)


def scraped_since(cluster: EmulatedCluster, prom: PrometheusServer, moment: float) -> None:
    """Wait until Prometheus has scraped the operator after ``moment``.

    Waits here never name an operator metric or label: when one is renamed, the scenario still runs and
    the tests below say which panels and alerts lost their data."""
    def probe() -> bool:
        # timestamp() of a bare selector is the scrape's time (of any other expression: the query's).
        samples = prom.query(f'timestamp(up{{job="{prom.job}"}})')
        return bool(samples) and samples[0].values[-1][1] > moment and bool(prom.query(f'up{{job="{prom.job}"}} == 1'))
    cluster.wait_for(f"a scrape after {moment:.1f}", probe)


def drive(cluster: EmulatedCluster, jobs: JobController, operator: OperatorProcess, prom: PrometheusServer
          ) -> float:
    """Run the scenario of the module docstring; returns when the late stage was backdated."""
    # Prometheus must hold the zeros of the counters before anything counts.
    scraped_since(cluster, prom, time.time())
    cluster.create(CT, CTS, campaign_body(SUCCEEDS), namespace=NS)
    cluster.create(CT, CTS, campaign_body(FAILS_GATE, retry={"maxIterations": 1, "stageRetries": 1}), namespace=NS)
    cluster.create(CT, CTS, campaign_body(OVER_BUDGET, budget={"gpuHourUsd": 3.0, "maxUsd": 5.0}), namespace=NS)
    cluster.create(CT, CTS, campaign_body(JOB_FAILS), namespace=NS)
    cluster.create(CT, CTS, campaign_body(LATE), namespace=NS)
    cluster.create(CT, CTS, campaign_body(INVALID, thresholds={"consistency": 1.5}), namespace=NS)
    # Each campaign's own counters start at zero when the operator first sees it; they must be scraped.
    cluster.wait_for("every campaign in the operator's metrics",
                     lambda: all(f'="{name}"' in operator.scrape() for name in CAMPAIGNS))
    scraped_since(cluster, prom, time.time())

    # A scrape after each step, so the series show the steps one by one (as they would over hours).
    run_quick_fix(jobs, SUCCEEDS, PASSING)
    scraped_since(cluster, prom, time.time())
    run_expansion(jobs, SUCCEEDS)
    scraped_since(cluster, prom, time.time())
    run_quick_fix(jobs, FAILS_GATE, FELL)
    scraped_since(cluster, prom, time.time())
    jobs.succeed(jobs.wait_job(NS, OVER_BUDGET, "prepare"), PREPARE)
    # The baseline evaluation was forecast under the budget but ran 2 GPU-hours: $6 of a $5 budget.
    jobs.succeed(jobs.wait_job(NS, OVER_BUDGET, "baseline-evaluate"), {**PASSING, "consistency": 0.1},
                 seconds=7200.0)
    scraped_since(cluster, prom, time.time())
    verdict = '{"key": "prepare", "ok": false, "retryable": false, "message": "datasets[0]: row 3: no question"}'
    jobs.fail(jobs.wait_job(NS, JOB_FAILS, "prepare"), exit_code=2, message=verdict, reason="PodFailurePolicy")
    scraped_since(cluster, prom, time.time())
    run_quick_fix(jobs, LATE, PASSING)
    for name, reason in ((SUCCEEDS, None), (FAILS_GATE, "GateFailed"), (OVER_BUDGET, "BudgetExceeded"),
                         (JOB_FAILS, "StageFailed")):
        obj = wait_status(cluster, NS, name, "finished", lambda s: s["phase"] in ("Succeeded", "Failed"))
        failed = next((c for c in obj["status"]["conditions"] if c["type"] == "Failed"), None)
        assert (failed or {}).get("reason") == reason, (name, obj["status"]["conditions"])
    assert get_ct(cluster, NS, OVER_BUDGET)["status"]["cost"]["usd"] > 5.0

    # The late stage: its Job started "deadline + 10 minutes" ago. The status is where the operator keeps
    # the start time; the resync (1 s here) re-reads it like after a restart.
    wait_status(cluster, NS, LATE, "1B.2 generate running", lambda s: s["stage"] == "1b2-generate")
    job = jobs.wait_job(NS, LATE, "1b2-generate")
    deadline = int(job["spec"]["activeDeadlineSeconds"])
    backdated = time.time()
    stages = get_ct(cluster, NS, LATE)["status"]["stages"]
    stages[-1]["startTime"] = rfc3339(datetime.now(UTC) - timedelta(seconds=deadline + 600))
    cluster.patch(CT, CTS, NS, LATE, {"status": {"stages": stages}}, sub="status")
    started = parse_rfc3339(stages[-1]["startTime"]).timestamp()
    cluster.wait_for("the backdated start in the operator's metrics", lambda: any(
        sample.value == started for family in text_string_to_metric_families(operator.scrape())
        for sample in family.samples))
    scraped_since(cluster, prom, time.time())
    return backdated


# The gate-failing evaluation, trained into less agreement than the base model's (BASELINE: math 0.31).
FELL = {**FAILING, "pairwiseAgreement": {"math": 0.20, "code": 0.41},
        "primary": {"figure": "math pairwise agreement", "reference": "baseline", "difference": -0.11,
                    "low": -0.16, "high": -0.06, "pValue": 0.001, "n": 1319}}
EXPECTED_ALERTS = {
    ("ConsistencyCampaignFailed", f"namespace={NS}", f"campaign={FAILS_GATE}"),
    ("ConsistencyAgreementBelowBaseline", f"namespace={NS}", f"campaign={FAILS_GATE}", "domain=math"),
    ("ConsistencyPrimaryEndpointFell", f"namespace={NS}", f"campaign={FAILS_GATE}"),
    ("ConsistencyCampaignFailed", f"namespace={NS}", f"campaign={OVER_BUDGET}"),
    ("ConsistencyCampaignFailed", f"namespace={NS}", f"campaign={JOB_FAILS}"),
    ("ConsistencyCampaignOverBudget", f"namespace={NS}", f"campaign={OVER_BUDGET}"),
    ("ConsistencyStageOverDeadline", f"namespace={NS}", f"campaign={LATE}", "stage=1b2-generate"),
    ("ConsistencyJobFailuresRising", "stage=prepare"),
    ("ConsistencyOperatorReconcileErrors", "kind=invalid_spec"),
}


@pytest.fixture(scope="module")
def live(cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    workdir = tmp_path_factory.mktemp("live")
    operator = OperatorProcess(cluster.write_kubeconfig(workdir / "kubeconfig"), workdir, NS,
                               extra_env={"CONSISTENCY_RESYNC_SECONDS": "1"}).start()
    prom = PrometheusServer(workdir, f"127.0.0.1:{operator.metrics_port}", rules())
    try:
        prom.start()
        backdated = drive(cluster, JobController(cluster), operator, prom)
        yield LiveRun(prom, operator, prom.started_at, backdated, time.time())
    finally:
        prom.stop()
        operator.stop()
        if os.environ.get("CONSISTENCY_TEST_SHOW_LOGS"):
            print(operator.logs(), prom.logs())


# ---- template variables, as Grafana substitutes them --------------------------------------------------

def query_variables() -> list[dict[str, Any]]:
    return [v for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def variable_query(var: dict[str, Any]) -> tuple[str, str]:
    """(series selector, label) of a `label_values(selector, label)` variable."""
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
    assert m, f"variable {var['name']}: unsupported query {query!r}"
    return m.group(1), m.group(2)


def substitute(expr: str, values: dict[str, str], range_s: int) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{range_s}s")
    expr = expr.replace("$__interval", f"{STEP:.0f}s")
    for name, value in values.items():
        expr = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, expr)
    left = re.findall(r"\$\{?\w+", expr)
    assert not left, f"unsubstituted variables {left} in {expr}"
    return expr


def all_values() -> dict[str, str]:
    return {v["name"]: v.get("allValue") or ".*" for v in query_variables()}


def real_values() -> dict[str, str]:
    missing = [v["name"] for v in query_variables() if v["name"] not in REAL_VALUES]
    assert not missing, f"pick a real value for the new variable(s) {missing} in REAL_VALUES"
    # Grafana escapes regex characters in a single value; these plain names need none.
    assert all(re.fullmatch(r"[\w-]+", v) for v in REAL_VALUES.values())
    return dict(REAL_VALUES)


def run_target(run: LiveRun, target: dict[str, Any], values: dict[str, str]) -> list[Series]:
    """An instant target at the end of the range, any other over the whole range (as Grafana queries)."""
    expr = substitute(target["expr"], values, run.range_s)
    if target.get("instant"):
        return run.prom.query(expr, at=run.end)
    return run.prom.query_range(expr, run.start, run.end, STEP)


def data_panels() -> list[dict[str, Any]]:
    return [p for p in panels(dashboard()) if p["type"] != "row"]


# ---- the tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", ["all", "one"])
@pytest.mark.parametrize("panel", data_panels(), ids=lambda p: p["title"])
def test_every_panel_query_returns_data(live: LiveRun, panel: dict[str, Any], values: str) -> None:
    substitution = all_values() if values == "all" else real_values()
    assert panel.get("targets"), f"panel {panel['title']!r} has no query"
    for target in panel["targets"]:
        series = run_target(live, target, substitution)
        shown = [s for s in series if any(v != 0 for v in s.finite())]
        assert shown, (f"panel {panel['title']!r} ({values} of {sorted(substitution)}): "
                       f"{substitute(target['expr'], substitution, live.range_s)} returned "
                       f"{len(series)} series, none with a finite non-zero value: "
                       f"{[(s.labels, s.values[-3:]) for s in series][:5]}")


def test_variables_list_the_campaigns_that_ran(live: LiveRun) -> None:
    assert query_variables(), "the dashboard has no query variables"
    for var in query_variables():
        selector, label = variable_query(var)
        found = live.prom.label_values(label, substitute(selector, all_values(), live.range_s), live.start, live.end)
        assert found, f"variable {var['name']!r}: {selector} lists no {label}"
        if var["name"] in VARIABLE_VALUES:  # a variable added later must at least list something
            assert set(found) == VARIABLE_VALUES[var["name"]], f"variable {var['name']!r} lists {found}"


def test_alerts_fire_for_the_right_campaigns_only(live: LiveRun) -> None:
    with contextlib.suppress(TimeoutError):  # the assertion below names what is missing
        wait_for("the expected alerts firing", lambda: live.prom.firing() >= EXPECTED_ALERTS, timeout=20)
    firing = live.prom.firing()
    assert firing >= EXPECTED_ALERTS, f"not firing: {sorted(EXPECTED_ALERTS - firing)}"
    end = time.time()
    # Nothing else fires: not for the successful campaign, not for the wrong stage or error kind.
    assert firing == EXPECTED_ALERTS, sorted(firing - EXPECTED_ALERTS)
    # ... and nothing did earlier: ALERTS (pending or firing) over the whole run.
    ever = live.prom.query_range(f'ALERTS{{campaign="{SUCCEEDS}"}}', live.start, end, STEP)
    assert ever == [], [s.labels for s in ever]
    before = live.prom.query_range('ALERTS{alertname="ConsistencyStageOverDeadline"}', live.start,
                                   live.backdated - 0.5, STEP)
    assert before == [], "the deadline alert fired before the stage was late"
    # Every alert the chart defines was exercised.
    defined = {r["alert"] for g in rules()["groups"] for r in g["rules"]}
    assert {a[0] for a in EXPECTED_ALERTS} == defined


def test_dashboard_picture(live: LiveRun, tmp_path: Path) -> None:
    """The panels' live results drawn as a grid in dashboard order (a rendering, not a screenshot)."""
    board = dashboard()
    items = []
    for panel in panels(board):
        data = PanelData(panel)
        for target in panel.get("targets", []):
            data.results.append((target, run_target(live, target, all_values())))
        items.append(data)
    note = "live query results of the operator test run, rendered with matplotlib (not a Grafana screenshot)"
    targets = [tmp_path / "dashboard.png"]
    if os.environ.get("CONSISTENCY_DASHBOARD_PNG"):
        targets.append(Path(os.environ["CONSISTENCY_DASHBOARD_PNG"]))
    for path in targets:
        render(board, items, path, live.start, note)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
