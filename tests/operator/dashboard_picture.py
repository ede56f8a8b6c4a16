"""Draw a Grafana dashboard's panels, filled with live query results, as one PNG (matplotlib).

Not a Grafana screenshot: no Grafana server runs here. Panels sit where the dashboard's gridPos puts them
(24 columns), with their titles, in dashboard order; time series as lines, stats as numbers, tables as
tables, bar gauges as bars. Values are formatted by the panel's unit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display in tests or CI
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from prometheus_server import Series

HIDDEN_LABELS = {"__name__", "job", "instance"}
ROW_PX, WIDTH_IN, DPI = 34, 18.0, 100


@dataclass
class PanelData:
    """A panel with each target's result: (target, series) pairs in target order."""

    panel: dict[str, Any]
    results: list[tuple[dict[str, Any], list[Series]]] = field(default_factory=list)


def legend(fmt: str | None, labels: dict[str, str]) -> str:
    if not fmt:
        shown = {k: v for k, v in labels.items() if k not in HIDDEN_LABELS}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def fmt_value(value: float, unit: str | None) -> str:
    if value != value:  # NaN
        return "NaN"
    if unit == "s":
        for size, name in ((86400, "d"), (3600, "h"), (60, "min")):
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} s"
    if unit == "percentunit":
        return f"{value * 100:.0f}%" if abs(value) >= 0.1 else f"{value * 100:.1f}%"
    if unit and unit.startswith("currency"):
        return f"${value:,.2f}"
    if abs(value) < 1 and value != 0:
        return f"{value:.2f}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _unit(panel: dict[str, Any]) -> str | None:
    return panel.get("fieldConfig", {}).get("defaults", {}).get("unit")


def _organize(panel: dict[str, Any]) -> dict[str, Any]:
    for t in panel.get("transformations", []):
        if t["id"] == "organize":
            return dict(t.get("options", {}))
    return {}


def _timeseries(ax: Axes, data: PanelData, t0: float) -> None:
    unit = _unit(data.panel)
    lines = 0
    for target, series in data.results:
        for s in series:
            xs = [t - t0 for t, _ in s.values]
            ys = [v for _, v in s.values]
            ax.plot(xs, ys, linewidth=1.2, label=legend(target.get("legendFormat"), s.labels))
            lines += 1
    ax.set_xlabel("seconds into the test run", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_value(v, unit)))
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                  ncol=1 if lines <= 12 else 2)


def _points(data: PanelData) -> list[tuple[str, float]]:
    """(legend, last value) per series, as stats and bar gauges show them (lastNotNull)."""
    out = []
    for target, series in data.results:
        for s in series:
            finite = s.finite()
            out.append((legend(target.get("legendFormat"), s.labels), finite[-1] if finite else float("nan")))
    return out


def _stat(ax: Axes, data: PanelData) -> None:
    ax.axis("off")
    points = _points(data)
    for i, (name, value) in enumerate(points):
        x = (i + 0.5) / max(len(points), 1)
        ax.text(x, 0.55, fmt_value(value, _unit(data.panel)), ha="center", va="center", fontsize=20,
                weight="bold", color="#1f77b4" if value else "#888888")
        ax.text(x, 0.2, name, ha="center", va="center", fontsize=8)


def _bargauge(ax: Axes, data: PanelData) -> None:
    points = sorted(_points(data), key=lambda p: p[0])
    names = [n for n, _ in points]
    values = [v if v == v else 0.0 for _, v in points]
    ax.barh(range(len(points)), values, color="#2ca02c")
    ax.set_yticks(range(len(points)), names, fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    top = max(values, default=0) or 1
    for i, (_, v) in enumerate(points):
        ax.text(v if v == v else 0, i, " " + fmt_value(v, _unit(data.panel)), va="center", fontsize=7)
    ax.set_xlim(0, top * 1.25)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_value(v, _unit(data.panel))))


def _table(ax: Axes, data: PanelData) -> None:
    """Rows merged on their labels (Grafana's `merge` transformation), one value column per target."""
    ax.axis("off")
    org = _organize(data.panel)
    hidden = {k for k, v in org.get("excludeByName", {}).items() if v} | HIDDEN_LABELS
    rename = org.get("renameByName", {})
    unit = _unit(data.panel)
    many = len(data.results) > 1
    rows: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    label_cols: list[str] = []
    value_cols: list[str] = []
    for target, series in data.results:
        raw = f"Value #{target['refId']}" if many else "Value"
        col = rename.get(raw, target.get("legendFormat") or raw)
        if raw not in hidden:
            value_cols.append(col)
        for s in series:
            labels = {k: v for k, v in s.labels.items() if k not in hidden}
            for k in labels:
                if k not in label_cols:
                    label_cols.append(k)
            row = rows.setdefault(tuple(sorted(labels.items())), dict(labels))
            finite = s.finite()
            row[col] = fmt_value(finite[-1], unit) if finite else "NaN"
    columns = label_cols + value_cols
    if not rows or not columns:
        return
    cells = [[row.get(c, "") for c in columns] for row in rows.values()]
    fits = max(int(data.panel["gridPos"]["h"] * 1.5) - 3, 1)  # rows that fit the panel's height
    if len(cells) > fits:
        more = len(cells) - fits + 1
        cells = [*cells[:fits - 1], [f"... {more} more rows", *[""] * (len(columns) - 1)]]
    table = ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 1.15)


def render(board: dict[str, Any], panels: Iterable[PanelData], path: Path, t0: float, note: str) -> Path:
    """Draw ``panels`` (dashboard order) at their grid positions into ``path``."""
    items = list(panels)
    bottom = max(p.panel["gridPos"]["y"] + p.panel["gridPos"]["h"] for p in items)
    height_in = bottom * ROW_PX / DPI + 0.9
    fig = plt.figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    fig.suptitle(f"{board['title']}: {note}", fontsize=13, y=1 - 0.25 / height_in)
    top_margin = 0.6 / height_in  # room for the figure title

    def rect(grid: dict[str, int], pad: float = 0.0) -> tuple[float, float, float, float]:
        usable = 1 - top_margin
        x0 = grid["x"] / 24 + 0.008
        w = grid["w"] / 24 - 0.016
        h = grid["h"] / bottom * usable
        y0 = 1 - top_margin - (grid["y"] + grid["h"]) / bottom * usable
        return x0, y0 + pad * h, w, h * (1 - 2 * pad)

    for data in items:
        panel = data.panel
        if panel["type"] == "row":
            ax = fig.add_axes(rect(panel["gridPos"]))
            ax.axis("off")
            ax.text(0, 0.35, panel["title"], fontsize=12, weight="bold", va="center")
            ax.axhline(0.05, color="#999999", linewidth=0.8)
            continue
        x0, y0, w, h = rect(panel["gridPos"])
        h -= 0.3 / height_in  # the title sits inside the panel's cell, above its frame
        frame = fig.add_axes((x0, y0, w, h))
        frame.set_xticks([])
        frame.set_yticks([])
        frame.set_facecolor("#fafafa")
        frame.set_title(panel["title"], fontsize=9, loc="left", weight="bold")
        # Leave room inside the frame for axis labels and the legend (time series put it on the right).
        right = 0.3 if panel["type"] == "timeseries" else 0.0
        left = 0.12 if panel["type"] in ("timeseries", "bargauge") else 0.02
        if panel["type"] == "bargauge":
            left = 0.3
        inner = fig.add_axes((x0 + w * left, y0 + h * 0.2, w * (1 - left - right - 0.02), h * 0.72))
        draw = {"timeseries": lambda a, d: _timeseries(a, d, t0), "stat": _stat, "table": _table,
                "bargauge": _bargauge}.get(panel["type"])
        if draw is None:
            inner.axis("off")
            inner.text(0.5, 0.5, f"({panel['type']} panel)", ha="center")
        else:
            draw(inner, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
