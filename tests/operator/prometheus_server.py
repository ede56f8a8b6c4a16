"""A real Prometheus server for the live observability test: scrapes one target, evaluates a rule file,
and answers the HTTP API the way Grafana and Alertmanager see it.

The binary comes from the Debian package `prometheus` (`make tools` installs it with promtool).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from kmock_cluster import wait_for
from operator_harness import answers, free_port, stop_child

PROMETHEUS = shutil.which("prometheus")
SKIP_REASON = "prometheus not installed (Debian package `prometheus`; `make test` installs it as root with apt-get)"


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    values: list[tuple[float, float]]  # (unix time, value); one pair for an instant query

    def finite(self) -> list[float]:
        return [v for _, v in self.values if math.isfinite(v)]


class PrometheusServer:
    """`prometheus` as a child process on a free localhost port; every interval is one second."""

    def __init__(self, workdir: Path, target: str, rules: dict[str, Any], job: str = "consistency-operator") -> None:
        self.workdir, self.job = workdir, job
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> PrometheusServer:
        assert PROMETHEUS is not None, SKIP_REASON
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.started_at = time.time()
        wait_for("prometheus readiness", self._ready, timeout=30, interval=0.1)
        return self

    def _ready(self) -> bool:
        return answers(self.proc, f"{self.url}/-/ready", self.logs)

    def stop(self) -> None:
        stop_child(self.proc)

    def logs(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    # ---- HTTP API ---------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> Any:
        resp = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"prometheus /api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._get("query", params)
        if data["resultType"] == "scalar":
            return [Series({}, [(float(data["result"][0]), float(data["result"][1]))])]
        return [Series(r["metric"], [(float(r["value"][0]), float(r["value"][1]))]) for r in data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[Series]:
        data = self._get("query_range", {"query": expr, "start": start, "end": end, "step": step})
        return [Series(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]]

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        """What Grafana's `label_values(match, label)` variable query asks for."""
        return sorted(self._get(f"label/{label}/values", [("match[]", match), ("start", start), ("end", end)]))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("alerts", {})["alerts"])

    def firing(self) -> set[tuple[str, ...]]:
        """(alertname, then the alert's identifying labels) of every firing alert."""
        out: set[tuple[str, ...]] = set()
        for alert in self.alerts():
            if alert["state"] != "firing":
                continue
            labels = alert["labels"]
            keys = ("namespace", "campaign", "stage", "kind", "domain")
            ident = tuple(f"{k}={labels[k]}" for k in keys if k in labels)
            out.add((labels["alertname"], *ident))
        return out
