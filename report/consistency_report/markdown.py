"""The campaign report a person reads, as Markdown (report.md; its PNG figures come from `plots`). Numbers
are printed as measured, each rate with its Wilson 95% interval. The local runner writes it into
<run-dir>/report/ (consistency_local.report), the worker's report stage into its output."""

from __future__ import annotations

from typing import Any

from consistency_core.endpoints import adjusted
from consistency_core.forecast import forecast_checks
from consistency_core.stats import Rate
from consistency_core.status import ConditionType

from consistency_report.data import EvalView, ReportData
from consistency_report.text import duration, paired_text


def _rate(rate: Rate | None, fallback: float | None = None) -> str:
    if rate is not None and rate.total:
        return rate.text()
    return "n/a" if fallback is None else f"{fallback:.1%} (no per-problem data)"


def headline(view: EvalView) -> dict[str, str]:
    """One evaluation's headline figures by name (consistency, then per domain), each as printed text; the
    report's before/after lines and the model card's table share it so both print the same numbers."""
    row = {"consistency": _rate(view.consistency, view.record.consistency)}
    domains = sorted(set(view.accuracy) | set(view.record.accuracy))
    for d in domains:
        row[f"{d} accuracy"] = _rate(view.accuracy.get(d), view.record.accuracy.get(d))
        pass1 = view.pass_at_1.get(d, view.record.pass_at_1.get(d))
        if pass1 is not None:
            row[f"{d} pass@1 (k)"] = f"{pass1:.1%}"
        if d in view.domain_consistency or d in view.record.consistency_by_domain:
            row[f"{d} consistency"] = _rate(view.domain_consistency.get(d), view.record.consistency_by_domain.get(d))
    return row


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table's lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def before_after_lines(data: ReportData) -> list[str]:
    before, after = data.before, data.after
    if after is None:
        if before is None:
            return ["No evaluation finished."]
        return [f"{k:<18} baseline {v}" for k, v in headline(before).items()] + ["No trained model was evaluated."]
    lines = []
    b = headline(before) if before else {}
    a = headline(after)
    for metric in dict.fromkeys([*b, *a]):
        lines.append(f"{metric:<18} before {b.get(metric, 'n/a'):<34} after ({after.label}) {a.get(metric, 'n/a')}")
    changes = data.paired_changes()
    if changes:
        primary = data.primary_figure
        change = changes.get(primary)
        lines.append(f"Primary endpoint (evaluation.primaryEndpoint): {primary}, baseline -> {after.label}: "
                     f"{change.text() if change is not None and change.n else 'not measured'}")
        holm = adjusted(changes, primary)
        lines.append(f"paired change, baseline -> {after.label} (same problems; 95% CI; yes/no figures exact "
                     "McNemar p, graded figures Wilcoxon p; Holm p: adjusted over these tests):")
        lines += [f"  {figure:<28} {c.text()}" + (f", Holm p={holm[figure]:.3g}" if figure in holm else "")
                  for figure, c in changes.items() if figure != primary]
    moves = data.before_after()
    if moves:
        lines.append(f"per problem, baseline -> {after.label}: {moves['failureToSuccess']} failure -> success, "
                     f"{moves['successToFailure']} success -> failure, {moves['stillFailure']} still failing "
                     f"(of {moves['matched']})")
    return lines


GRADED_COLUMNS = (("pairwiseAgreement", "pairwise agreement"), ("modalShare", "modal share"),
                  ("rightAgreement", "right agreement"), ("wrongAgreement", "wrong agreement"),
                  ("majorityAccuracy", "maj@k"), ("selfConsistencyGap", "self-consistency gap"))


def graded_section(data: ReportData) -> list[str]:
    """Graded consistency per evaluation and domain (means over problems)."""
    rows = []
    for e in data.evaluations:
        for domain, figures in e.graded.items():
            values = [f"{figures[k]:.3f}" if k in figures else "n/a" for k, _ in GRADED_COLUMNS]
            pass1 = e.pass_at_1.get(domain)
            rows.append([e.label, domain, *values, f"{pass1:.3f}" if pass1 is not None else "n/a",
                         int(figures.get("cutOffUnanswered", 0))])
    if not rows:
        return []
    return ["## Graded consistency", "",
            "Per problem, over its k samples: pairwise agreement (share of sample pairs giving the same answer), "
            "modal share (share on the most common answer), right / wrong agreement (pairwise agreement on a "
            "right / a wrong answer), maj@k (the majority answer is right), self-consistency gap (maj@k - "
            "pass@1); means over problems. Cut off: answers stopped at maxNewTokens before a final-answer "
            "marker, graded as no answer.", "",
            *md_table(["evaluation", "domain", *[label for _, label in GRADED_COLUMNS], "pass@1 (k)", "cut off"],
                       rows), ""]


def render_markdown(data: ReportData, figures: list[str]) -> str:
    st = data.status
    n_eval = data.after.record.problems if data.after else 0
    md = [f"# Campaign report: {data.namespace}/{data.name}", "",
          f"**Outcome:** {st.phase.value}: {st.message}", "",
          f"Total stage time {duration(data.total_seconds)}; cost ${st.cost.usd:.2f} "
          f"({st.cost.gpu_hours:.3f} GPU-hours at ${data.spec.budget.gpu_hour_usd}/h); "
          f"model `{data.spec.model.uri}`.", "",
          f"## Before / after on the held-out split ({n_eval} problems)", "",
          "Rates with Wilson 95% confidence intervals and counts. Consistency: share of problems whose "
          f"{data.spec.evaluation.samples} samples at temperature {data.spec.evaluation.temperature} all "
          "agree (math: the same number; reasoning: the same letter; code: all pass, or the same values "
          "returned on every test call); accuracy: the greedy answer is right; pass@1 (k): the unbiased "
          "pass@1 estimate from the k samples (mean share of correct samples). Both evaluations answer the "
          "same problems with the same "
          "seeds, so each change is also given paired: the difference with Newcombe's 95% interval for paired "
          "proportions and the exact McNemar p-value on the problems that changed; graded measures with a "
          "seeded paired bootstrap 95% interval and the Wilcoxon signed-rank p-value. The primary endpoint "
          f"({data.primary_figure}, baseline -> final) was declared in the spec; every other test is also "
          "given with its Holm-adjusted p-value (many tests: one p < 0.05 among them means little).", "", "```",
          *before_after_lines(data), "```", ""]
    md += graded_section(data)
    if "metrics.png" in figures:
        md += ["![consistency and accuracy per evaluation](metrics.png)", ""]

    md += ["## Every evaluation", ""]
    domains = sorted({d for e in data.evaluations for d in (e.accuracy or e.record.accuracy)})
    rows = []
    for e in data.evaluations:
        gate = {True: "passed", False: "failed", None: ""}[e.record.gate_passed]
        rows.append([e.label, e.record.problems, _rate(e.consistency, e.record.consistency),
                     f"{e.record.mean_agreement:.3f}" if e.record.mean_agreement is not None else "n/a",
                     *[_rate(e.accuracy.get(d), e.record.accuracy.get(d)) for d in domains], gate])
    md += md_table(["evaluation", "problems", "consistency", "mean agreement",
                     *[f"{d} accuracy" for d in domains], "gate"], rows)
    gate = st.condition(ConditionType.gate_passed)
    if gate:
        md += ["", f"Gate: {gate.message}"]
    md += [""]

    pair = [e for e in (data.before, data.after) if e is not None and e.strata]
    if pair:
        md += ["## Per domain and difficulty stratum", ""]
        keys = sorted({k for e in pair for k in e.strata})
        header = ["domain/stratum"] + [f"{e.label} {m}" for e in pair for m in ("accuracy", "consistency")]
        rows = [[k] + [_rate(e.strata.get(k, {}).get(m)) for e in pair for m in ("accuracy", "consistency")]
                for k in keys]
        md += [*md_table(header, rows), ""]
        if "strata.png" in figures:
            md += ["![per stratum](strata.png)", ""]

    comps = [e for e in data.evaluations if e.comparison]
    if comps:
        rule = data.spec.expansion.failure
        wrong = "its greedy answer is wrong or " if rule.include_wrong else ""
        md += ["## Failure -> success", "",
               f"A problem fails when {wrong}fewer than {rule.max_agreement:.0%} of its samples agree on one answer "
               "(spec.expansion.failure).", ""]
        keys = ("matched", "failureToSuccess", "successToFailure", "stillFailure", "stillSuccess")
        rows = [[e.label, *(e.comparison.get(k, 0) for k in keys),
                 paired_text((e.comparison.get("paired") or {}).get("success"))] for e in comps]
        header = ["evaluation", "matched", "failure -> success", "success -> failure", "still failure",
                  "still success", "success change (95% CI, McNemar p)"]
        md += [*md_table(header, rows), ""]
        if "transitions.png" in figures:
            md += ["![transitions](transitions.png)", ""]

    md += ["## Time and cost per stage", ""]
    rows = [[s.key, s.attempt, s.outcome, duration(s.seconds) if s.seconds is not None else "",
             f"{s.gpu_hours:.4f}", f"${s.usd:.2f}", s.message.replace("|", "/")[:120]] for s in data.stages]
    md += [*md_table(["stage", "attempt", "outcome", "duration", "GPU-hours", "cost", "message"], rows), ""]
    if "stages.png" in figures:
        md += ["![stages](stages.png)", ""]
    md += forecast_lines(data)
    errors = [f"- {e.label}: {e.error}" for e in data.evaluations if e.error]
    if errors:
        md += ["## Missing data", "", *errors, ""]
    return "\n".join(md)


def forecast_lines(data: ReportData) -> list[str]:
    """Forecast against actual per finished stage: before learning (the spec's throughput figures) and after
    (what the campaign's earlier stages measured), with the signed error of each."""
    checks = forecast_checks(data.spec, data.status)
    if not checks:
        return []
    rows = [[c.key, c.attempt, duration(c.seconds), duration(c.prior_seconds), f"{c.prior_error:+.0%}",
             duration(c.expected_seconds), f"{c.expected_error:+.0%}", f"${c.bound_usd:.2f}",
             f"${c.expected_usd:.2f}", f"${c.usd:.2f}"] for c in checks]
    header = ["stage", "attempt", "took", "forecast (spec figures)", "error", "forecast (learned)", "error",
              "upper bound", "expected cost", "cost"]
    return ["## Forecast against actual", "",
            "Each stage's wall time as forecast when it started: from the spec's throughput figures "
            "(spec.budget.throughput, every answer at its whole token budget) and from what the campaign's "
            "earlier stages measured (tokens per second, mean answer length); error = (forecast - took) / took. "
            "The budget stop checks the upper bound (measured speed, whole token budgets).", "",
            *md_table(header, rows), ""]
