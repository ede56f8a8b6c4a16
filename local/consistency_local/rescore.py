"""Re-score a finished run's evaluations with the current grader and measures: no generation, no knob
changes. Reads the run's status, each evaluation's config, report and generations (read only) and writes
the re-scored per-problem rows and a before/after table of the figures to another directory.

    python -m consistency_local.rescore RUN_DIR OUT_DIR

"Before" is every figure recomputed from the answers stored at generation time (the grader of then),
"after" the same figures with each completion graded again (math and multiple choice; code keeps its
stored test-outcome signature, its grading runs programs and is not what changed), a completion that
stopped at maxNewTokens graded as cut off."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consistency_core.endpoints import adjusted, paired_family, primary_change
from consistency_core.spec import PrimaryEndpoint
from consistency_core.stage_wire import EvaluateParams, StageConfig
from consistency_core.status import EvaluationRecord, StageOutcome
from consistency_report.data import label_of
from consistency_worker.data.problems import Problem, parse_problems
from consistency_worker.grading.grade import grade
from consistency_worker.stages.evaluate import outcome_of, per_problem_row, summarise
from consistency_worker.store.facade import Store, open_store
from consistency_worker.store.generations import Completion, GenerationRecord, read_generations

from consistency_local.rundir import RunDir, atomic_write

# Figures of an evaluation summary compared before/after (per domain where the summary has domains).
FIGURES = ("accuracy", "consistencyByDomain", "majorityAccuracy", "passAt1", "pairwiseAgreement")
GRADED = ("modalShare", "rightAgreement", "wrongAgreement", "selfConsistencyGap")


def regrade(record: GenerationRecord, problem: Problem) -> GenerationRecord:
    """The record with every math / multiple-choice completion graded again (cut off when it stopped at
    maxNewTokens); code completions keep their stored verdicts."""
    if record.domain == "code":
        return record

    def again(c: Completion) -> Completion:
        g = grade(problem, c.text, cut_off=c.truncated)
        return Completion(text=c.text, answer=g.answer, correct=g.correct, truncated=c.truncated)

    return record.model_copy(update={"greedy": again(record.greedy), "samples": [again(s) for s in record.samples]})


def scored(records: Sequence[GenerationRecord], params: EvaluateParams) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-problem rows, summary) of graded records, as the evaluate stage computes them."""
    outcomes = [outcome_of(r) for r in records]
    rows = [per_problem_row(o, r, params.failure) for o, r in zip(outcomes, records, strict=True)]
    return rows, summarise(outcomes, rows)


def _evaluate_config(rd: RunDir, record: EvaluationRecord, spec_status: Any) -> StageConfig:
    """The config of the evaluate attempt that wrote this evaluation's report."""
    for stage in reversed(spec_status.stages):
        if stage.stage.value == "evaluate" and stage.outcome == StageOutcome.succeeded and \
                stage.artifacts.get("report") == record.report:
            return StageConfig.model_validate_json(rd.config_path(stage).read_text())
    for stage in reversed(spec_status.stages):  # a result without artifacts: match the output directory
        if stage.stage.value == "evaluate" and stage.outcome == StageOutcome.succeeded:
            config = StageConfig.model_validate_json(rd.config_path(stage).read_text())
            if record.report and record.report.startswith(config.output_uri):
                return config
    raise ValueError(f"no succeeded evaluate stage wrote {record.report}")


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"consistency": summary["consistency"], "meanAgreement": summary["meanAgreement"],
                           "cutOffUnanswered": summary["cutOffUnanswered"]}
    for key in FIGURES:
        out[key] = summary.get(key, {})
    for key in GRADED:
        out[key] = {d: m[key] for d, m in summary.get("graded", {}).items() if key in m}
    return out


def _paired(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]],
            endpoint: PrimaryEndpoint) -> dict[str, Any]:
    family = paired_family(before, after)
    change = primary_change(endpoint, before, after)
    holm = adjusted(family, endpoint.figure)
    return {"primary": {"figure": endpoint.figure, **change.as_json()} if change else None,
            "family": {name: {**c.as_json(), **({"pHolm": round(holm[name], 6)} if name in holm else {})}
                       for name, c in family.items()}}


def rescore_run(run_dir: Path, out_dir: Path, store: Store | None = None,
                primary: PrimaryEndpoint | None = None) -> dict[str, Any]:
    """Re-score every evaluation of the run in ``run_dir``; write rows and the comparison under ``out_dir``.
    ``primary``: the endpoint to headline (default: the spec's default, math pairwise agreement)."""
    rd = RunDir(run_dir)
    status = rd.load_status()
    if status is None:
        raise ValueError(f"{run_dir}: no status.json")
    evaluations: list[dict[str, Any]] = []
    rows_by_label: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for record in status.evaluations:
        if not record.report:
            continue
        config = _evaluate_config(rd, record, status)
        params = config.params
        if not isinstance(params, EvaluateParams):
            raise ValueError(f"{record.report}: not an evaluate config")
        st = store or open_store(config.store)
        report = st.read_json(record.report)
        problems = {p.id: p for p in parse_problems(st.read_text(params.problems_uri), params.problems_uri)}
        records = read_generations(st, report["generationsUri"])
        missing = sorted({r.problem_id for r in records} - set(problems))
        if missing:
            raise ValueError(f"{report['generationsUri']}: problems {missing[:5]} not in {params.problems_uri}")
        regraded = [regrade(r, problems[r.problem_id]) for r in records]
        old_rows, old = scored(records, params)
        new_rows, new = scored(regraded, params)
        label = label_of(record)
        rows_by_label[label] = (old_rows, new_rows)
        target = out_dir / label.replace(" ", "-")
        target.mkdir(parents=True, exist_ok=True)
        atomic_write(target / "per_problem.jsonl", "".join(json.dumps(r) + "\n" for r in new_rows))
        answers = [c for r in records for c in (r.greedy, *r.samples)]
        evaluations.append({
            "evaluation": label, "report": record.report, "problems": len(records), "answers": len(answers),
            "truncated": sum(c.truncated for c in answers),
            "stored": {"consistency": report.get("consistency"), "accuracy": report.get("accuracy")},
            "before": _figures(old), "after": _figures(new),
            "answersChanged": sum(a.answer != b.answer for r, n in zip(records, regraded, strict=True)
                                  for a, b in zip((r.greedy, *r.samples), (n.greedy, *n.samples), strict=True)),
        })
    endpoint = primary or PrimaryEndpoint()
    comparison = None
    labels = list(rows_by_label)
    if len(labels) >= 2 and labels[0] == "baseline":
        (b_old, b_new), (f_old, f_new) = rows_by_label[labels[0]], rows_by_label[labels[-1]]
        comparison = {"from": labels[0], "to": labels[-1], "before": _paired(b_old, f_old, endpoint),
                      "after": _paired(b_new, f_new, endpoint)}
    result = {"runDir": str(run_dir), "evaluations": evaluations, "baselineToFinal": comparison}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "rescore.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out_dir / "rescore.md", render(result))
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render(result: dict[str, Any]) -> str:
    """Markdown: per evaluation and figure, the value with the grader of then and re-scored."""
    lines = [f"# Re-score of {result['runDir']}", "",
             "Same generations, no knob changes: *before* = the answers graded at generation time, *after* = "
             "graded again (first number after a final-answer marker; a cut-off completion without a marker "
             "has no answer).", "",
             "| evaluation | figure | domain | before | after |", "|---|---|---|---|---|"]
    for ev in result["evaluations"]:
        b, a = ev["before"], ev["after"]
        lines.append(f"| {ev['evaluation']} | answers changed by the grader | | | {ev['answersChanged']} of "
                     f"{ev['answers']} ({ev['truncated']} cut off) |")
        for key in ("consistency", "meanAgreement", "cutOffUnanswered"):
            lines.append(f"| {ev['evaluation']} | {key} | all | {_cell(b[key])} | {_cell(a[key])} |")
        for key in (*FIGURES, *GRADED):
            for domain in sorted(set(b.get(key, {})) | set(a.get(key, {}))):
                lines.append(f"| {ev['evaluation']} | {key} | {domain} | {_cell(b[key].get(domain))} | "
                             f"{_cell(a[key].get(domain))} |")
    comparison = result.get("baselineToFinal")
    if comparison:
        lines += ["", f"## Paired, {comparison['from']} -> {comparison['to']}", "",
                  "| figure | before: change [95% CI] p (Holm p) | after: change [95% CI] p (Holm p) |",
                  "|---|---|---|"]
        b, a = comparison["before"]["primary"], comparison["after"]["primary"]
        name = (a or b or {}).get("figure", "primary")
        lines.append(f"| PRIMARY {name} | {_change(b)} | {_change(a)} |")
        names = list(dict.fromkeys([*comparison["before"]["family"], *comparison["after"]["family"]]))
        for name in names:
            lines.append(f"| {name} | {_change(comparison['before']['family'].get(name))} | "
                         f"{_change(comparison['after']['family'].get(name))} |")
    return "\n".join(lines) + "\n"


def _change(c: dict[str, Any] | None) -> str:
    if not c or not c.get("n"):
        return "n/a"
    holm = f" ({c['pHolm']:.3g})" if "pHolm" in c else ""
    return f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] p={c['pValue']:.3g}{holm}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consistency_local.rescore", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    if args.out_dir.resolve().is_relative_to(args.run_dir.resolve()):
        parser.error("OUT_DIR must be outside the run directory (a re-score never writes into the run)")
    result = rescore_run(args.run_dir, args.out_dir)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
