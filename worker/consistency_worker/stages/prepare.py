"""prepare (CPU): load datasets, normalise them to problem records, draw the 1B.1 selection, collect the
1B.2 scan set and the evaluation set, refuse leakage, report malformed rows.

Outputs in the stage's directory: selection.jsonl, scan.jsonl, eval.jsonl (Problem JSONL), report.json
(per-dataset counts, strata, malformed rows with reasons), manifest.json, result.json."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, is_dataclass
from typing import Any

from consistency_core.spec import DatasetRole, DatasetSpec
from consistency_core.stage_wire import (
    PREPARE_EVAL,
    PREPARE_SCAN,
    PREPARE_SELECTION,
    TERMINATION_MESSAGE_LIMIT,
    PrepareParams,
    StageConfig,
    StageResult,
)

from consistency_worker.data.leakage import NGRAM, Overlap, find_overlaps, find_skeleton_overlaps, normalise_text
from consistency_worker.data.problems import Problem
from consistency_worker.job.context import StageContext
from consistency_worker.runtime.seeds import rng_seed
from consistency_worker.stages import PermanentStageError

REPORT = "report.json"
MALFORMED_IN_REPORT = 50  # first rows with reasons kept in report.json
MALFORMED_IN_METRICS = 3  # ... and in the <= 4 KiB result
LEAK_EXAMPLES = 5
OVERLAP_IN_REPORT = 50


def _malformed_rows(items: list[Any], limit: int, reason_chars: int) -> list[dict[str, Any]]:
    """First malformed rows as small dicts, whatever shape the loader reports them in."""
    rows = []
    for item in items[:limit]:
        if hasattr(item, "model_dump"):
            row = item.model_dump()
        elif is_dataclass(item) and not isinstance(item, type):
            row = asdict(item)
        elif isinstance(item, dict):
            row = dict(item)
        elif isinstance(item, tuple) and len(item) == 2:
            row = {"row": item[0], "reason": item[1]}
        else:
            row = {"reason": str(item)}
        rows.append({k: (v[:reason_chars] if isinstance(v, str) else v) for k, v in row.items()})
    return rows


def _needed(params: PrepareParams) -> list[DatasetSpec]:
    """Datasets the stage must load: referenced ones, plus every eval-role one (the leakage guard
    checks against all evaluation data the campaign knows, not only what this run evaluates on)."""
    by_name = {ds.name: ds for ds in params.datasets}
    refs = [
        *((f"params.selection[{i}].dataset", s.dataset, DatasetRole.train) for i, s in enumerate(params.selection)),
        *((f"params.scanDatasets[{i}]", n, DatasetRole.scan) for i, n in enumerate(params.scan_datasets)),
        *((f"params.evalDatasets[{i}]", n, DatasetRole.eval) for i, n in enumerate(params.eval_datasets)),
    ]
    problems = []
    for path, name, role in refs:
        if name not in by_name:
            problems.append(f"{path}: unknown dataset {name!r} (known: {sorted(by_name)})")
        elif role not in by_name[name].roles:
            problems.append(f"{path}: dataset {name!r} lacks role {role.value!r}")
    if problems:
        raise PermanentStageError("; ".join(problems))
    names = {name for _, name, _ in refs} | {ds.name for ds in params.datasets if DatasetRole.eval in ds.roles}
    return [ds for ds in params.datasets if ds.name in names]


def _load_all(specs: list[DatasetSpec], ctx: StageContext,
              seed: int) -> tuple[dict[str, list[Problem]], dict[str, Any], list[dict[str, Any]]]:
    from consistency_worker.data.loaders import load_problems

    problems: dict[str, list[Problem]] = {}
    per_dataset: dict[str, Any] = {}
    malformed: list[dict[str, Any]] = []
    with ctx.progress(len(specs), "datasets") as progress:
        for spec in specs:
            with ctx.manifest.timed(f"load:{spec.name}"):
                try:
                    report = load_problems(spec, seed=rng_seed(seed, f"limit:{spec.name}"))
                except FileNotFoundError as exc:
                    raise PermanentStageError(f"dataset {spec.name!r} ({spec.uri}): not found: {exc}") from None
            loaded = list(report.problems)
            if spec.limit is not None:
                loaded = loaded[: spec.limit]
            problems[spec.name] = loaded
            ctx.manifest.add_input(spec.name, spec.uri)
            per_dataset[spec.name] = {
                "rows": report.rows_read,
                "problems": len(loaded),
                "malformed": len(report.malformed),
                "strata": dict(sorted(Counter(p.stratum for p in loaded).items())),
            }
            for row in _malformed_rows(list(report.malformed), MALFORMED_IN_REPORT, 300):
                malformed.append({"dataset": spec.name, **row})
            if report.malformed:
                ctx.logger.warning("%s: %d malformed row(s), e.g. %s", spec.name, len(report.malformed),
                                   malformed[-1])
            progress.update()
    return problems, per_dataset, malformed


def _select(params: PrepareParams, problems: dict[str, list[Problem]], seed: int) -> list[Problem]:
    from consistency_worker.data.strata import stratified_sample

    selection: list[Problem] = []
    for i, sel in enumerate(params.selection):
        pool = problems[sel.dataset]
        weights = sel.strata.model_dump() if sel.strata is not None else None
        try:
            # Each selection gets its own seed stream, so adding a dataset leaves the others unchanged.
            drawn = stratified_sample(pool, sel.count, weights, seed=rng_seed(seed, sel.dataset))
        except ValueError as exc:
            raise PermanentStageError(
                f"params.selection[{i}] ({sel.dataset}, count {sel.count}): {exc}"
            ) from None
        selection.extend(drawn)
    return selection


def _unique(problems: list[Problem], what: str) -> list[Problem]:
    seen: dict[str, Problem] = {}
    for p in problems:
        if p.id in seen:
            raise PermanentStageError(f"{what}: duplicate problem id {p.id!r} (from {p.source or '?'})")
        seen[p.id] = p
    return problems


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, PrepareParams):
        raise PermanentStageError(f"prepare got params of kind {params.kind!r}")
    from consistency_worker.data.leakage import LeakageError, check_leakage

    problems, per_dataset, malformed = _load_all(_needed(params), ctx, config.seed)
    eval_names = [ds.name for ds in params.datasets if DatasetRole.eval in ds.roles and ds.name in problems]
    with ctx.manifest.timed("overlap"):
        overlaps = _drop_overlaps(params, problems, [p for n in eval_names for p in problems[n]], per_dataset)
    if overlaps:
        ctx.logger.warning("left out %d train/scan problem(s) sharing a %d-gram with an evaluation problem, "
                           "e.g. %s", len(overlaps), NGRAM, overlaps[0].as_json())
    with ctx.manifest.timed("select"):
        selection = _unique(_select(params, problems, config.seed), "selection")
        scan = _unique([p for name in params.scan_datasets for p in problems[name]], "scan")
        evaluation = _unique([p for name in params.eval_datasets for p in problems[name]], "eval")
    eval_role = [p for name in eval_names for p in problems[name]]

    with ctx.manifest.timed("leakage"):
        seen: set[str] = set()
        train_like = [p for p in [*selection, *scan] if not (p.id in seen or seen.add(p.id))]
        try:
            check_leakage(train_like, eval_role, max_examples=LEAK_EXAMPLES)
        except LeakageError as exc:
            raise PermanentStageError(str(exc)) from None
        # Reported, not refused: real datasets (GSM8K train/test) may share a few short templates; the
        # generated efficacy and demo sets are split by skeleton, so theirs must read 0.
        skeletons = find_skeleton_overlaps(train_like, eval_role)
    if skeletons:
        ctx.logger.warning("%d train/scan problem(s) share a question skeleton (names and numbers masked) with "
                           "an evaluation problem, e.g. %s", len(skeletons), skeletons[0].as_json())

    outputs = {
        "selection": ctx.output(PREPARE_SELECTION),
        "scan": ctx.output(PREPARE_SCAN),
        "eval": ctx.output(PREPARE_EVAL),
    }
    with ctx.manifest.timed("write"):
        for name, rows in (("selection", selection), ("scan", scan), ("eval", evaluation)):
            data = ctx.store.write_jsonl(outputs[name], (p.model_dump(mode="json") for p in rows))
            ctx.manifest.add_output(name, outputs[name], data=data)

    strata = {
        "selection": _strata_counts(selection),
        "scan": _strata_counts(scan),
        "eval": _strata_counts(evaluation),
    }
    total_malformed = sum(d["malformed"] for d in per_dataset.values())
    report = {
        "counts": {"selection": len(selection), "scan": len(scan), "eval": len(evaluation),
                   "malformed": total_malformed},
        "perDataset": per_dataset,
        "strata": strata,
        "malformed": malformed,
        "ngramOverlap": {"n": NGRAM, "count": len(overlaps),
                         "examples": [o.as_json() for o in overlaps[:OVERLAP_IN_REPORT]]},
        "skeletonOverlap": {"count": len(skeletons),
                            "examples": [o.as_json() for o in skeletons[:OVERLAP_IN_REPORT]]},
    }
    outputs["report"] = ctx.output(REPORT)
    ctx.store.write_json(outputs["report"], report)
    ctx.manifest.add_output("report", outputs["report"])

    metrics: dict[str, Any] = {
        "selection": len(selection),
        "scan": len(scan),
        "eval": len(evaluation),
        "malformed": total_malformed,
        "perDataset": {name: {k: v for k, v in d.items() if k != "strata"} for name, d in per_dataset.items()},
        "strata": strata["selection"],
        "ngramOverlap": {"count": len(overlaps), "examples": [o.as_json() for o in overlaps[:LEAK_EXAMPLES]]},
        "skeletonOverlap": {"count": len(skeletons),
                            "examples": [o.as_json() for o in skeletons[:LEAK_EXAMPLES]]},
    }
    if malformed:
        metrics["malformedExamples"] = _malformed_rows(malformed, MALFORMED_IN_METRICS, 120)
    result = StageResult(key=config.key, ok=True, metrics=metrics, outputs=outputs,
                         message=f"{len(selection)} selected, {len(scan)} scan, {len(evaluation)} eval problems")
    # The termination message drops all metrics when too big; shed the detail (kept in report.json)
    # first so the counts the control plane reads always arrive.
    for detail in ("malformedExamples", "perDataset", "strata", "skeletonExamples", "overlapExamples"):
        if len(json.dumps(result.to_wire()).encode()) <= TERMINATION_MESSAGE_LIMIT:
            break
        if detail == "skeletonExamples":
            result.metrics["skeletonOverlap"]["examples"] = []
        elif detail == "overlapExamples":
            result.metrics["ngramOverlap"]["examples"] = [
                {k: v[:60] for k, v in e.items()} for e in result.metrics["ngramOverlap"]["examples"][:2]]
        else:
            result.metrics.pop(detail, None)
    return result


def _drop_overlaps(params: PrepareParams, problems: dict[str, list[Problem]], eval_role: list[Problem],
                   per_dataset: dict[str, Any]) -> list[Overlap]:
    """Leave train/scan problems that share a 13-gram with an evaluation problem out of the pools (before
    the selection is drawn, so counts stay exact) and return what was left out. Exact copies stay in:
    the exact check refuses the campaign for those, with their ids."""
    exact = {normalise_text(p.prompt) for p in eval_role}
    names = [n for n in dict.fromkeys([*(s.dataset for s in params.selection), *params.scan_datasets])
             if n in problems]
    candidates = {p.id: p for n in names for p in problems[n]}
    overlaps = [o for o in find_overlaps(candidates.values(), eval_role)
                if normalise_text(candidates[o.train_id].prompt) not in exact]
    dropped = {o.train_id for o in overlaps}
    for name in names:
        kept = [p for p in problems[name] if p.id not in dropped]
        per_dataset[name]["overlapExcluded"] = len(problems[name]) - len(kept)
        problems[name] = kept
    return overlaps


def _strata_counts(problems: list[Problem]) -> dict[str, dict[str, int]]:
    """{domain: {stratum: n}}"""
    counts: dict[str, Counter[str]] = {}
    for p in problems:
        counts.setdefault(p.domain, Counter())[p.stratum] += 1
    return {d: dict(sorted(c.items())) for d, c in sorted(counts.items())}
