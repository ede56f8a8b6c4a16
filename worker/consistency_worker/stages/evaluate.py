"""evaluate stage: answer the evaluation sets (greedy + k samples, through the generate stage's code) with
the trained adapter (or none: baseline) and report accuracy, consistency and before/after changes.

- accuracy per domain: the greedy answer (math: exact numeric match; code: greedy pass@1 by running the
  tests; reasoning: letter match); passAt1: the unbiased pass@1 estimate from the k samples (mean c/k);
- consistency per domain: share of problems whose k samples all give the same answer: math the same
  canonical number, reasoning the same letter, code all pass or the same returned values on every test
  call; consistencyGivenCorrect: the same among problems with at least one correct sample; the headline
  consistency pools every domain; mean agreement: mean share of samples on the modal answer;
- per problem against a baseline report: a problem is a *failure* by the spec's 1B.2 criteria
  (params.failure = spec.expansion.failure: greedy answer wrong when includeWrong, or agreement below
  maxAgreement), else a success; failure -> success and success -> failure counts.

- graded consistency per problem and per domain (consistency_worker.grading.graded_measures): pairwise agreement,
  modal share, right / wrong agreement, maj@k, self-consistency gap (maj@k - pass@1); a sample cut off at
  maxNewTokens before a final-answer marker has no answer (cutOffUnanswered counts them);
- paired tests against the reference (yes/no figures: Newcombe + exact McNemar; graded: seeded paired
  bootstrap + Wilcoxon), each with a Holm-adjusted p; the declared primary endpoint
  (params.primaryEndpoint) is measured baseline -> this model and left out of the Holm family.

Outputs: report.json (summary), per_problem.jsonl (one line per problem), the generations shard file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consistency_core.endpoints import GRADED_FIELDS, domain_means, family_json, paired_family, primary_change
from consistency_core.spec import FailureCriteria, PrimaryEndpoint
from consistency_core.stage_wire import EVALUATE_REPORT, EvaluateParams, StageConfig, StageResult, join_uri

from consistency_worker.engines.answering import (
    SamplingSettings,
    generate_records,
    load_backend,
    token_metrics,
    truncated_share,
)
from consistency_worker.grading.code import code_grading_metrics
from consistency_worker.grading.graded_measures import graded_measures, self_consistency_gap
from consistency_worker.grading.voting import Outcome, aggregate, failure, majority_vote
from consistency_worker.job.context import StageContext
from consistency_worker.stages import PermanentStageError
from consistency_worker.store.facade import Store
from consistency_worker.store.generations import GenerationRecord

PER_PROBLEM = "per_problem.jsonl"


def outcome_of(record: GenerationRecord) -> Outcome:
    answers = [s.answer for s in record.samples]
    vote = majority_vote(answers, prefer=record.greedy.answer)
    graded = [s.correct for s in record.samples if s.answer == vote.answer and s.correct is not None]
    majority_correct: bool | None
    if vote.answer is None:
        majority_correct = False if record.greedy.correct is not None else None
    else:
        majority_correct = any(graded) if graded else None
    return Outcome(problem_id=record.problem_id, domain=record.domain, stratum=record.stratum, vote=vote,
                   greedy_correct=record.greedy.correct, majority_correct=majority_correct,
                   samples_correct=sum(s.correct is True for s in record.samples),
                   samples_graded=sum(s.correct is not None for s in record.samples))


def per_problem_row(outcome: Outcome, record: GenerationRecord,
                    criteria: FailureCriteria | None = None) -> dict[str, Any]:
    """One problem's line in per_problem.jsonl; ``success``: not a failure by ``criteria`` (the spec's
    expansion.failure: a wrong greedy answer when includeWrong, agreement below maxAgreement)."""
    criteria = criteria or FailureCriteria()
    greedy = outcome.greedy_correct if criteria.include_wrong else None
    verdict = failure(greedy, outcome.vote, min_agreement=criteria.max_agreement)
    graded = graded_measures([s.answer for s in record.samples], [s.correct for s in record.samples])
    cut_off = sum(c.truncated and c.answer is None for c in (record.greedy, *record.samples))
    return {
        "problemId": outcome.problem_id,
        "domain": outcome.domain,
        "stratum": outcome.stratum,
        "greedyAnswer": record.greedy.answer,
        "greedyCorrect": outcome.greedy_correct,
        "majorityAnswer": outcome.vote.answer,
        "majorityCorrect": outcome.majority_correct,
        "agreement": round(outcome.vote.agreement, 4),
        "consistent": outcome.vote.consistent,
        "samplesCorrect": outcome.samples_correct,
        "samplesGraded": outcome.samples_graded,
        "success": not verdict.failed,
        "failureReasons": list(verdict.reasons),
        **graded.as_row(),
        "selfConsistencyGap": _round(self_consistency_gap(outcome.majority_correct, outcome.samples_correct,
                                                          outcome.samples_graded)),
        "cutOffUnanswered": cut_off,
    }


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def summarise(outcomes: Sequence[Outcome], rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Headline metrics + per-domain and per-stratum tables; ``rows`` (per_problem_row) add the graded
    measures per domain and the count of cut-off answers without a final answer."""
    by_domain = aggregate(outcomes, key="domain")
    overall = by_domain.get("all", {})
    accuracy = {d: _round(row["accuracy"]) for d, row in by_domain.items()
                if d != "all" and row["accuracy"] is not None}
    table = {name: {k: _round(v) for k, v in row.items()} for name, row in by_domain.items()}
    strata = {name: {k: _round(v) for k, v in row.items()}
              for name, row in aggregate(outcomes, key="domain/stratum").items()}
    def per_domain(key: str) -> dict[str, Any]:
        return {d: _round(row[key]) for d, row in by_domain.items() if d != "all" and row[key] is not None}

    return {
        "problems": len(outcomes),
        "consistency": _round(overall.get("consistency") or 0.0),
        "meanAgreement": _round(overall.get("mean_agreement") or 0.0),
        "accuracy": accuracy,
        "consistencyByDomain": per_domain("consistency"),
        "consistencyGivenCorrect": per_domain("consistency_given_correct"),
        "passAt1": per_domain("pass_at_1"),
        "majorityAccuracy": per_domain("majority_accuracy"),
        "byDomain": table,
        "byStratum": strata,
        "graded": domain_means(rows),
        "pairwiseAgreement": {d: m["pairwiseAgreement"] for d, m in domain_means(rows).items()
                              if "pairwiseAgreement" in m},
        "cutOffUnanswered": sum(int(r.get("cutOffUnanswered") or 0) for r in rows),
    }


def compare(rows: Sequence[dict[str, Any]], baseline_rows: Sequence[dict[str, Any]],
            primary: str | None = None) -> dict[str, Any]:
    """Per-problem transitions between a baseline evaluation and this one (problems in both only), and
    every paired test ("family", Holm-adjusted except the test named ``primary``)."""
    before = {r["problemId"]: r for r in baseline_rows}
    counts = {"matched": 0, "failureToSuccess": 0, "successToFailure": 0, "stillFailure": 0, "stillSuccess": 0}
    by_domain: dict[str, dict[str, int]] = {}
    for row in rows:
        old = before.get(row["problemId"])
        if old is None:
            continue
        key = {
            (False, True): "failureToSuccess", (True, False): "successToFailure",
            (False, False): "stillFailure", (True, True): "stillSuccess",
        }[(bool(old["success"]), bool(row["success"]))]
        counts["matched"] += 1
        counts[key] += 1
        domain = by_domain.setdefault(row["domain"], {"matched": 0, "failureToSuccess": 0, "successToFailure": 0})
        domain["matched"] += 1
        if key in domain:
            domain[key] += 1
    family = family_json(paired_family(baseline_rows, rows), primary)
    return {**counts, "byDomain": by_domain, "family": family, "paired": status_figures(family)}


def status_figures(family: dict[str, Any]) -> dict[str, Any]:
    """The part of a paired family the status carries (the stage result must fit 4 KiB): per domain
    accuracy, consistency, maj@k and pairwise agreement, and success; the full family stays in report.json.
    The pooled consistency is left to the report, so the status keeps one figure per domain."""
    graded = tuple(label for label in GRADED_FIELDS if label != "pairwise agreement")
    return {name: figures for name, figures in family.items()
            if name != "consistency" and not name.endswith(graded)}


def primary_result(endpoint: PrimaryEndpoint, rows: Sequence[dict[str, Any]],
                   baseline_rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The primary endpoint, baseline -> this model, in wire form; None when the rows do not measure it."""
    change = primary_change(endpoint, baseline_rows, rows)
    if change is None:
        return None
    return {"figure": endpoint.figure, "reference": "baseline", **change.as_json()}


def read_baseline(store: Store, uri: str) -> tuple[str, list[dict[str, Any]]]:
    """Per-problem rows of an earlier evaluation, given its report.json or its output directory."""
    report_uri = uri if uri.endswith(".json") else join_uri(uri, EVALUATE_REPORT)
    if not store.is_file(report_uri):
        raise PermanentStageError(f"params.baselineReportUri: no report at {report_uri}")
    report = store.read_json(report_uri)
    rows_uri = report.get("perProblemUri") or join_uri(report_uri.rsplit("/", 1)[0], PER_PROBLEM)
    return report_uri, store.read_jsonl(rows_uri)


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, EvaluateParams):
        raise PermanentStageError(f"evaluate stage got params of kind {params.kind!r}")
    problems = ctx.read_problems(params.problems_uri)
    baseline = read_baseline(ctx.store, params.baseline_report_uri) if params.baseline_report_uri else None
    first = None
    if params.primary_baseline_uri:
        first = baseline if baseline is not None and baseline[0] == params.primary_baseline_uri else \
            read_baseline(ctx.store, params.primary_baseline_uri)
    if params.adapter_uri:
        ctx.manifest.add_input("adapter", params.adapter_uri)
    settings = SamplingSettings(params.sampling, config.seed)
    with ctx.manifest.timed("load"):
        backend = load_backend(config, ctx, params.adapter_uri)
    try:
        with ctx.manifest.timed("generate"):
            records, generations_uri = generate_records(ctx, backend, problems, settings, desc="evaluate")
    finally:
        backend.close()

    outcomes = [outcome_of(r) for r in records]
    rows = [per_problem_row(o, r, params.failure) for o, r in zip(outcomes, records, strict=True)]
    summary = summarise(outcomes, rows)
    per_problem_uri = ctx.output(PER_PROBLEM)
    ctx.manifest.add_output("perProblem", per_problem_uri, data=ctx.store.write_jsonl(per_problem_uri, rows))
    metrics: dict[str, Any] = {k: summary[k] for k in ("problems", "consistency", "meanAgreement", "accuracy",
                                                       "consistencyByDomain", "consistencyGivenCorrect", "passAt1",
                                                       "pairwiseAgreement", "cutOffUnanswered")}
    metrics["maxNewTokensHitShare"] = truncated_share(records)
    grading = code_grading_metrics(problems)
    if grading:
        ctx.logger.info("code grading: %d problems with untrusted tests, sandbox layers %s",
                        grading["testsUntrusted"], ", ".join(grading["sandboxLayers"]))
        metrics.update(grading)
    metrics.update(token_metrics(records))
    report: dict[str, Any] = {
        **summary,
        "adapterUri": params.adapter_uri,
        "model": config.model.uri,
        "backend": backend.name,
        **params.sampling.to_wire(),
        "seed": config.seed,
        "phase": config.phase,
        "iteration": config.iteration,
        "failure": params.failure.to_wire(),
        "perProblemUri": per_problem_uri,
        "generationsUri": generations_uri,
        "maxNewTokensHitShare": metrics["maxNewTokensHitShare"],
    }
    primary = primary_result(params.primary_endpoint, rows, first[1]) if first is not None else None
    if primary is not None:
        report["primaryEndpoint"] = {**primary, "baselineReportUri": first[0]}
        metrics["primary"] = primary
    if baseline is not None:
        # The primary is its own test only where it compares against the same reference (the baseline).
        same = first is not None and baseline[0] == first[0]
        comparison = compare(rows, baseline[1], params.primary_endpoint.figure if same else None)
        report["comparison"] = {"baselineReportUri": baseline[0], **comparison}
        metrics.update(failureToSuccess=comparison["failureToSuccess"],
                       successToFailure=comparison["successToFailure"], compared=comparison["matched"],
                       paired=comparison["paired"])
    report_uri = ctx.output(EVALUATE_REPORT)
    ctx.store.write_json(report_uri, report)
    ctx.manifest.add_output("report", report_uri)
    ctx.manifest.extra.update(backend=backend.name)
    accuracy = ", ".join(f"{d} {v:.3f}" for d, v in summary["accuracy"].items()) or "no graded domain"
    return StageResult(
        key=config.key,
        ok=True,
        message=f"{len(records)} problems: consistency {summary['consistency']:.3f}, "
        f"mean agreement {summary['meanAgreement']:.3f}, accuracy {accuracy}, "
        f"{summary['cutOffUnanswered']} cut-off answers without a final answer",
        metrics=metrics,
        outputs={"report": report_uri, "perProblem": per_problem_uri, "generations": generations_uri},
    )
