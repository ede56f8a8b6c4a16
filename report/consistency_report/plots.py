"""The report's figures (matplotlib, PNG). Each function writes one file and returns its name, or
None when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

from consistency_core.stats import Rate
from consistency_core.status import StageOutcome

from consistency_report.data import ReportData


def _plt():  # headless: never needs a display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(rates: list[Rate | None]) -> tuple[list[float], list[list[float]]]:
    values, low, high = [], [], []
    for r in rates:
        if r is None or not r.total:
            values.append(float("nan"))
            low.append(0.0)
            high.append(0.0)
        else:
            values.append(r.value)
            low.append(r.value - r.low)
            high.append(r.high - r.value)
    return values, [low, high]


def metrics_over_time(data: ReportData, out: Path) -> str | None:
    """Consistency and accuracy per evaluation (baseline, each 1B.1 iteration, 1B.2), 95% CIs."""
    evals = [e for e in data.evaluations if e.consistency is not None]
    if not evals:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = list(range(len(evals)))
    series: dict[str, list[Rate | None]] = {"consistency": [e.consistency for e in evals]}
    for domain in sorted({d for e in evals for d in e.accuracy}):
        series[f"{domain} accuracy"] = [e.accuracy.get(domain) for e in evals]
    width = 0.8 / len(series)
    for i, (name, rates) in enumerate(series.items()):
        values, err = _err(rates)
        ax.errorbar([x + (i - (len(series) - 1) / 2) * width for x in xs], values, yerr=err, marker="o",
                    capsize=4, label=name)
    thresholds = data.spec.thresholds
    if thresholds.consistency is not None:
        ax.axhline(thresholds.consistency, color="gray", linestyle=":", linewidth=1, label="consistency gate")
    for domain, value in thresholds.accuracy.items():
        ax.axhline(value, color="gray", linestyle="--", linewidth=1, label=f"{domain} gate")
    ax.set_xticks(xs, [e.label for e in evals])
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate on the held-out split (95% CI)")
    ax.set_title("Consistency and accuracy per evaluation")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    return "metrics.png"


def strata(data: ReportData, out: Path) -> str | None:
    """Accuracy and consistency per domain/stratum, before (baseline) vs after (final model)."""
    pair = [e for e in (data.before, data.after) if e is not None and e.strata]
    if not pair:
        return None
    plt = _plt()
    keys = sorted({k for e in pair for k in e.strata})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    width = 0.8 / len(pair)
    for ax, metric in zip(axes, ("accuracy", "consistency"), strict=True):
        for i, view in enumerate(pair):
            values, err = _err([view.strata.get(k, {}).get(metric) for k in keys])
            ax.bar([x + (i - (len(pair) - 1) / 2) * width for x in range(len(keys))], values, width, yerr=err,
                   capsize=3, label=view.label)
        ax.set_xticks(range(len(keys)), keys, rotation=20)
        ax.set_title(metric)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("rate (95% CI)")
    axes[1].legend(fontsize=8)
    fig.suptitle("Per domain and difficulty stratum")
    fig.tight_layout()
    fig.savefig(out / "strata.png", dpi=110)
    plt.close(fig)
    return "strata.png"


def transitions(data: ReportData, out: Path) -> str | None:
    """Per-problem failure -> success counts of each evaluation against its reference."""
    evals = [e for e in data.evaluations if e.comparison]
    if not evals:
        return None
    plt = _plt()
    parts = [("failureToSuccess", "failure -> success", "tab:green"),
             ("successToFailure", "success -> failure", "tab:red"),
             ("stillFailure", "still failure", "tab:gray"),
             ("stillSuccess", "still success", "tab:blue")]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0] * len(evals)
    for key, label, color in parts:
        values = [int(e.comparison.get(key, 0)) for e in evals]
        ax.bar([e.label for e in evals], values, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("problems")
    ax.set_title("Per-problem transitions vs the reference evaluation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "transitions.png", dpi=110)
    plt.close(fig)
    return "transitions.png"


def stage_times(data: ReportData, out: Path) -> str | None:
    """Wall time per stage attempt, annotated with its cost."""
    stages = [s for s in data.stages if s.seconds is not None]
    if not stages:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(stages) + 1.5))
    labels = [s.key if s.attempt == 1 else f"{s.key} (a{s.attempt})" for s in stages]
    colors = ["tab:blue" if s.outcome == StageOutcome.succeeded else "tab:red" for s in stages]
    ax.barh(labels, [s.seconds for s in stages], color=colors)
    for i, s in enumerate(stages):
        ax.text(s.seconds, i, f" {s.seconds:.0f}s ${s.usd:.2f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (label: duration, cost)")
    ax.set_title("Time and cost per stage")
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=110)
    plt.close(fig)
    return "stages.png"


def draw_all(data: ReportData, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    drawn = [f(data, out) for f in (metrics_over_time, strata, transitions, stage_times)]
    return [d for d in drawn if d]
