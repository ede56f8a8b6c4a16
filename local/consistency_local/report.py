"""The campaign report of a local run: drawn by consistency_report into <run-dir>/report/, plus the short
summary `consistency run` / `consistency report` print. The renderer itself lives in consistency_report,
which the worker's report stage shares; what stays here needs the run directory or the worker's store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consistency_report.data import ReportData, gather
from consistency_report.markdown import before_after_lines, render_markdown
from consistency_report.plots import draw_all
from consistency_report.text import duration

from consistency_local.rundir import RunDir, atomic_write

REPORT_FILE = "report.md"


def open_campaign_store(spec: Any) -> Any:
    try:
        from consistency_worker.store.facade import open_store
    except ImportError:
        return None
    return open_store(spec.store)


def write_report(run_dir: RunDir, name: str, namespace: str, spec: Any, status: Any,
                 store: Any = None) -> tuple[Path, ReportData]:
    data = gather(name, namespace, spec, status, store if store is not None else open_campaign_store(spec))
    figures = draw_all(data, run_dir.report_dir)
    path = run_dir.report_dir / REPORT_FILE
    atomic_write(path, render_markdown(data, figures))
    return path, data


def terminal_summary(data: ReportData, path: Path) -> str:
    st = data.status
    lines = [f"Campaign {data.namespace}/{data.name}: {st.phase.value} ({st.message})",
             *before_after_lines(data),
             f"Stage time {duration(data.total_seconds)}, cost ${st.cost.usd:.2f}.",
             f"Report: {path}"]
    return "\n".join(lines)
