"""The comparison table of the three efficacy arms (docs/efficacy-protocol.md, "Reporting").

Pure figures from the evaluate stage's per-problem rows: the shared baseline evaluation against each arm's
final evaluation, paired over the held-out math problems. The primary endpoint (math pairwise agreement)
gets its paired bootstrap interval (10,000 resamples, seed 20, as the protocol fixes them) and Wilcoxon p;
the secondary measures are Holm-adjusted as one family per arm. `write_tables` reads an arms run directory
(consistency_local.arms) and writes arms.json and arms.md there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from consistency_core.graded_stats import GradedPaired, graded_paired, holm
from consistency_core.stats import Paired, paired_from_rows

RESAMPLES, SEED = 10_000, 20
DOMAIN = "math"
# Protocol secondary measures: name -> how it is taken (a per-problem yes/no flag or a graded value).
GRADED = {"pass@1": None, "self-consistency gap": "selfConsistencyGap",
          "right agreement": "rightAgreement", "wrong agreement": "wrongAgreement"}
YES_NO = {"accuracy": "math accuracy", "maj@k": "math maj@k", "unanimity": "math consistency",
          "failure -> success": "success"}
SECONDARY = ("accuracy", "maj@k", "pass@1", "self-consistency gap", "right agreement", "wrong agreement",
             "unanimity", "failure -> success")
STAGE_ORDER = ("1b1-i1-distill", "1b1-i1-train", "1b1-i1-evaluate", "1b2-generate", "1b2-distill", "1b2-train",
               "1b2-evaluate")


def pass_at_1(row: Mapping[str, Any]) -> float | None:
    graded = row.get("samplesGraded")
    return row["samplesCorrect"] / graded if graded else None


def values(rows: Sequence[Mapping[str, Any]], field: str | None) -> dict[str, float]:
    """{problemId: value} of a graded per-problem field (None: pass@1) where the row defines it."""
    out = {}
    for row in rows:
        value = pass_at_1(row) if field is None else row.get(field)
        if value is not None:
            out[row["problemId"]] = float(value)
    return out


def graded_change(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
                  field: str | None) -> GradedPaired:
    old, new = values(before, field), values(after, field)
    pairs = [(old[pid], new[pid]) for pid in old if pid in new]
    return graded_paired(pairs, resamples=RESAMPLES, seed=SEED)


def math_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("domain") == DOMAIN]


def compare(baseline: Sequence[Mapping[str, Any]], final: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The protocol's figures of one arm: primary endpoint, secondary measures with raw and Holm p, levels
    before and after, and the share of the baseline self-consistency gap the arm closed."""
    base, last = math_rows(baseline), math_rows(final)
    if not base or not last:
        raise ValueError("no math problems in the evaluations compared")
    primary = graded_change(base, last, "pairwiseAgreement")
    yes_no = paired_from_rows(list(base), list(last))
    changes: dict[str, Paired | GradedPaired] = {}
    for name in SECONDARY:
        changes[name] = graded_change(base, last, GRADED[name]) if name in GRADED else yes_no[YES_NO[name]]
    adjusted = holm({name: c.p_value for name, c in changes.items()})
    gap_before, gap_after = changes["self-consistency gap"].before, changes["self-consistency gap"].after
    return {
        "n": primary.n,
        "primary": {"figure": "math pairwise agreement", **primary.as_json()},
        "secondary": {name: {**c.as_json(), "pHolm": round(adjusted[name], 6)} for name, c in changes.items()},
        "levels": {name: level(base, last, name) for name in ("accuracy", "maj@k")},
        "gapClosed": (gap_before - gap_after) / gap_before if gap_before > 0 else None,
    }


def level(base: Sequence[Mapping[str, Any]], last: Sequence[Mapping[str, Any]], name: str) -> dict[str, float]:
    flag = {"accuracy": "greedyCorrect", "maj@k": "majorityCorrect"}[name]
    return {"before": mean_flag(base, flag), "after": mean_flag(last, flag)}


def mean_flag(rows: Sequence[Mapping[str, Any]], flag: str) -> float:
    values = [bool(r[flag]) for r in rows if r.get(flag) is not None]
    return sum(values) / len(values) if values else float("nan")


# ---- reading an arms run directory -------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stage_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{stage key: result} of the last attempt of every stage in a run directory."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((run_dir / "results").glob("*-a*.json"), key=lambda p: int(p.stem.rsplit("-a", 1)[1])):
        out[path.stem.rsplit("-a", 1)[0]] = json.loads(path.read_text(encoding="utf-8"))
    return out


def final_evaluation(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The key of the arm's last evaluation: after 1B.2, else after the last 1B.1 iteration."""
    keys = [k for k in results if k.endswith("-evaluate") and k != "baseline-evaluate"]
    if not keys:
        raise ValueError("the arm has no evaluation after training")
    return "1b2-evaluate" if "1b2-evaluate" in keys else sorted(keys)[-1]


def arm_summary(store: Path, run_dir: Path, name: str, wall: float | None) -> dict[str, Any]:
    results = stage_results(run_dir)
    final = final_evaluation(results)
    root = store / "default" / name
    figures = compare(read_rows(root / "baseline-evaluate" / "per_problem.jsonl"),
                      read_rows(root / final / "per_problem.jsonl"))
    metrics = {key: results[key]["metrics"] for key in (final, "baseline-evaluate")}
    return {
        **figures,
        "final": final,
        "cutOff": {key: {"unanswered": m.get("cutOffUnanswered"), "hitBudgetShare": m.get("maxNewTokensHitShare")}
                   for key, m in metrics.items()},
        "training": {key: {f: results[key]["metrics"].get(f) for f in ("steps", "examples", "tokens", "finalLoss",
                                                                       "objective")}
                     for key in sorted(results) if key.endswith("-train")},
        "distill": {key: {f: results[key]["metrics"].get(f) for f in ("examples", "pairs", "targets", "problemsKept")}
                    for key in sorted(results) if key.endswith("-distill")},
        "stageSeconds": {key: round(results[key].get("seconds") or 0.0, 1) for key in STAGE_ORDER if key in results},
        "sharedSeconds": {key: round(results[key].get("seconds") or 0.0, 1)
                          for key in ("baseline-evaluate", "1b1-i1-generate") if key in results},
        "wallSeconds": None if wall is None else round(wall, 1),
    }


def p_text(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.2g}"


def fmt_change(change: Mapping[str, Any], scale: float, unit: str) -> str:
    return (f"{change['difference'] * scale:+.3g}{unit} [{change['low'] * scale:+.3g}, "
            f"{change['high'] * scale:+.3g}]")


def secondary_text(change: Mapping[str, Any]) -> str:
    counts = f", {change['better']} up / {change['worse']} down" if "better" in change else ""
    return (f"{fmt_change(change, 100, ' pp')}, p={p_text(change['pValue'])} (Holm {p_text(change['pHolm'])})"
            + counts)


def markdown(model: str, summaries: Mapping[str, Mapping[str, Any]]) -> str:
    arms = list(summaries)
    first = summaries[arms[0]]
    lines = [f"### Efficacy arms: {model} ({first['n']} held-out math problems, baseline -> final)", "",
             "| measure | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(summaries[a]) for a in arms) + " |")

    row("**primary: math pairwise agreement**", lambda s: f"{s['primary']['before']:.3f} -> "
        f"{s['primary']['after']:.3f}, {fmt_change(s['primary'], 1, '')}, "
        f"Wilcoxon p={p_text(s['primary']['pValue'])}")
    for name in SECONDARY:
        row(name, lambda s, n=name: secondary_text(s["secondary"][n]))
    for name in ("accuracy", "maj@k"):
        row(f"{name} (level)", lambda s, n=name: f"{s['levels'][n]['before']:.1%} -> {s['levels'][n]['after']:.1%}")
    row("self-consistency gap", lambda s: f"{s['secondary']['self-consistency gap']['before']:.3f} -> "
        f"{s['secondary']['self-consistency gap']['after']:.3f} (closed "
        + ("n/a" if s["gapClosed"] is None else f"{s['gapClosed']:.0%}") + ")")
    row("cut off (hit budget) base / final", lambda s: " / ".join(
        f"{c['hitBudgetShare']:.1%}" for c in (s["cutOff"]["baseline-evaluate"], s["cutOff"][s["final"]])))
    row("1B.1 / 1B.2 training data", lambda s: " / ".join(
        f"{d['examples']} ex, {d['pairs']} pairs" for d in s["distill"].values()))
    row("1B.1 / 1B.2 steps (tokens)", lambda s: " / ".join(
        f"{t['steps']} ({t['tokens']})" for t in s["training"].values()))
    row("stage times (s)", lambda s: ", ".join(f"{k.replace('-i1', '')} {v:.0f}" for k, v in s["stageSeconds"].items()))
    row("arm wall time", lambda s: "n/a" if s["wallSeconds"] is None else f"{s['wallSeconds'] / 60:.1f} min")
    shared = first["sharedSeconds"]
    lines += ["", "Shared by every arm (computed once): " + ", ".join(f"{k} {v:.0f} s" for k, v in shared.items())
              + ". Secondary p-values: raw, and Holm-adjusted over the arm's 8 tests."]
    return "\n".join(lines) + "\n"


def write_tables(out: Path, model: str, arms: Sequence[str], walls: Mapping[str, float] | None = None) -> str:
    walls = walls or {}
    summaries = {arm: arm_summary(out / "store", out / arm, f"{model}-{arm}", walls.get(arm)) for arm in arms}
    (out / "arms.json").write_text(json.dumps(summaries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    text = markdown(model, summaries)
    (out / "arms.md").write_text(text, encoding="utf-8")
    return text
