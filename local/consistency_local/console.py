"""Terminal output of the local runner: a live status line per running stage, events as they happen,
and `consistency status`, laid out like `kubectl get ct -o wide`."""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from consistency_core.names import parse_rfc3339
from consistency_core.statemachine import Event
from consistency_core.status import CampaignStatus, EventType
from consistency_report.text import duration, paired_text

from consistency_local.rundir import RunDir
from consistency_local.stage_process import Tick

PLAIN_INTERVAL_S = 15.0


def _progress_text(progress: dict | None) -> str:
    if not progress:
        return "starting"
    done, total = progress.get("done", 0), progress.get("total")
    text = f"{progress.get('desc') or 'working'} {done}/{total}" if total else f"{progress.get('desc')} {done}"
    if total:
        text += f" ({100.0 * done / total:.0f}%)"
    eta = progress.get("etaSeconds")
    if eta is not None:
        text += f" eta {duration(eta)}"
    return text


def tick_line(tick: Tick) -> str:
    r = tick.record
    return (f"[{r.phase.value} i{r.iteration}] {r.stage.value:<8} {r.key} attempt {r.attempt}: "
            f"{_progress_text(tick.progress)}, {duration(tick.elapsed)} elapsed")


class LiveConsole:
    """One redrawn line on a terminal; a line every ~15 s elsewhere (CI logs stay readable)."""

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._drawn = False
        self._last_plain = 0.0

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False

    def tick(self, tick: Tick) -> None:
        line = tick_line(tick)
        if self.interactive:
            width = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r\x1b[2K" + line[: width - 1])
            self._drawn = True
            self.stream.flush()
        elif time.monotonic() - self._last_plain >= PLAIN_INTERVAL_S:
            self._last_plain = time.monotonic()
            self.stream.write(line + "\n")
            self.stream.flush()

    def event(self, event: Event) -> None:
        self._clear()
        mark = "!" if event.type == EventType.warning else "-"
        self.stream.write(f"{datetime.now(UTC):%H:%M:%S} {mark} {event.reason}: {event.message}\n")
        self.stream.flush()

    def close(self) -> None:
        self._clear()
        self.stream.flush()


# --- `consistency status` ---------------------------------------------------------------------------

COLUMNS = ("NAME", "STATUS", "PHASE", "ITERATION", "STAGE", "PROGRESS", "CONSISTENCY", "MATH", "MATH-CHANGE",
           "PRIMARY (BASELINE -> LATEST)", "COST", "AGE", "MESSAGE")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def primary_text(status: CampaignStatus) -> str:
    """The declared primary endpoint of the latest evaluation that measured it, baseline -> that model."""
    measured = [e.primary for e in status.evaluations if e.primary]
    if not measured:
        return ""
    primary = measured[-1]
    return f"{primary.get('figure', 'primary')} {paired_text(primary)}"


def _last_change(status: CampaignStatus, figure: str) -> dict | None:
    changes = [e.paired[figure] for e in status.evaluations if figure in e.paired]
    return changes[-1] if changes else None


def status_row(name: str, namespace: str, status: CampaignStatus, now: datetime,
               progress: dict | None = None) -> list[str]:
    starts = [parse_rfc3339(s.start_time) for s in status.stages if s.start_time]
    age = duration((now - min(starts)).total_seconds()) if starts else ""
    return [
        f"{namespace}/{name}", status.phase.value,
        status.training_phase.value if status.training_phase else "",
        str(status.iteration or ""), status.stage or "",
        _progress_text(progress) if status.current() is not None else "",
        _pct(status.consistency), _pct(status.math_accuracy), paired_text(_last_change(status, "math accuracy")),
        primary_text(status), f"${status.cost.usd:.2f}", age,
        status.message[:60],
    ]


def table(rows: list[list[str]], header: tuple[str, ...] = COLUMNS) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    return "\n".join("   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
                     for row in [list(header), *rows])


def stage_rows(status: CampaignStatus, now: datetime) -> list[list[str]]:
    rows = []
    for s in status.stages:
        if s.start_time:
            end = parse_rfc3339(s.end_time) if s.end_time else now
            took = duration((end - parse_rfc3339(s.start_time)).total_seconds())
        else:
            took = ""
        rows.append([s.key, s.phase.value, str(s.iteration), str(s.attempt), s.outcome.value, took,
                     f"{s.gpu_hours:.3f}", s.message[:70]])
    return rows


STAGE_COLUMNS = ("STAGE", "PHASE", "ITER", "ATTEMPT", "OUTCOME", "DURATION", "GPU-H", "MESSAGE")
CHANGE_COLUMNS = ("EVALUATION", "FIGURE", "CHANGE (95% CI, p)", "HOLM P", "BETTER", "WORSE", "PAIRS")


def change_rows(status: CampaignStatus) -> list[list[str]]:
    """Every paired before/after figure of every evaluation that had a reference to compare with: the
    primary endpoint first (baseline -> that model), then the rest with their Holm-adjusted p. Graded
    figures (Wilcoxon p) have no better/worse counts."""
    rows = []
    for e in status.evaluations:
        label = f"{getattr(e.phase, 'value', e.phase)} i{e.iteration}"
        if e.primary:
            rows.append([label, f"PRIMARY {e.primary.get('figure', '')} (baseline)", paired_text(e.primary), "",
                         "", "", str(int(e.primary.get("n", 0)))])
        for figure, change in sorted(e.paired.items()):
            holm = f"{change['pHolm']:.2g}" if "pHolm" in change else ""
            counts = [str(int(change[k])) if k in change else "" for k in ("better", "worse")]
            rows.append([label, figure, paired_text(change), holm, *counts, str(int(change.get("n", 0)))])
    return rows


def find_runs(root: Path) -> list[RunDir]:
    """A run directory itself, or every run directory under a runs/ folder."""
    if (root / "status.json").is_file():
        return [RunDir(root)]
    return [RunDir(p.parent) for p in sorted(root.glob("*/status.json"))]


def render_status(root: Path, *, stages: bool = False, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    runs = find_runs(root)
    if not runs:
        return f"No campaigns found under {root}."
    rows, details = [], []
    for rd in runs:
        info = rd.read_run() or {}
        status = rd.load_status()
        if status is None:
            continue
        name, namespace = info.get("name", rd.root.name), info.get("namespace", "default")
        running = status.current()
        rows.append(status_row(name, namespace, status, now, rd.progress(running) if running else None))
        if stages:
            details.append(f"\n{namespace}/{name} ({rd.root}):\n" + table(stage_rows(status, now), STAGE_COLUMNS))
            changes = change_rows(status)
            if changes:
                details.append("\n" + table(changes, CHANGE_COLUMNS))
    return table(rows) + "".join(details)
