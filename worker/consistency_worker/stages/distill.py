"""distill (CPU): turn generation records into chat-format training JSONL.

mode `consistent` (1B.1): majority vote per problem; keep problems whose agreement reaches
min_agreement; targets are the correct samples where a gold answer exists (rejection sampling), else
the samples on the modal answer.
mode `failures` (1B.2): keep only failed problems (wrong greedy answer when include_wrong, or agreement
below failure.max_agreement); targets are correct samples (gold), modal-answer samples with agreement >=
min_agreement (no gold), else the problem's reference solution (use_reference_solutions).
filter.targets `majority` (label-free): every record is treated as having no gold answer (the graded
`correct` flags are never read), a failure is a low-agreement problem only, and no reference solution is
used: the output depends on the sampled answers alone.

Besides train.jsonl (SFT targets) distill writes pairs.jsonl, what objective preference trains on: per kept
problem one (chosen, rejected) pair, chosen a target as above, rejected a sample of the least-voted other
answer (a sample with no answer is a class of one vote), weight = (chosen's votes - rejected's votes) / k.

Both modes: targets chosen in a seeded order per problem, deduplicated by normalised text, capped per
problem, then capped in total (max_examples) spread evenly over domain/stratum groups. With replay_uri
(1B.2: the passing 1B.1 iteration's training data), a seeded sample of those lines is appended so they make
up replay_fraction of the output (limits forgetting); problems with new examples are not replayed. Every drop is
counted with its reason, per domain and stratum, in stats.json and the result's metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from consistency_core.stage_wire import (
    DISTILL_PAIRS,
    DISTILL_TRAIN,
    DistillMode,
    DistillParams,
    StageConfig,
    StageResult,
)

from consistency_worker.data.problems import Problem
from consistency_worker.grading.selection import (
    OVER_MAX_EXAMPLES,
    Decision,
    Example,
    Pair,
    cap_total,
    decide_consistent,
    decide_failure,
)
from consistency_worker.job.context import StageContext
from consistency_worker.runtime.seeds import derive_rng
from consistency_worker.stages import PermanentStageError

STATS = "stats.json"


@dataclass
class Stats:
    """Counts per domain/stratum: problems seen, kept, examples (by source), drops by reason."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _group(self, domain: str, stratum: str) -> dict[str, Any]:
        return self.groups.setdefault(f"{domain}/{stratum}", {
            "problems": 0, "problemsKept": 0, "failures": 0, "examples": 0, "fromSamples": 0,
            "fromReference": 0, "agreementSum": 0.0, "droppedProblems": Counter(), "droppedCandidates": Counter(),
        })

    def add(self, decision: Decision) -> None:
        g = self._group(decision.record.domain, decision.record.stratum)
        g["problems"] += 1
        g["agreementSum"] += decision.agreement
        g["failures"] += bool(decision.failed)
        g["droppedCandidates"].update(decision.dropped)
        if decision.reason:
            g["droppedProblems"][decision.reason] += 1

    def add_examples(self, kept: Iterable[Example], capped: Iterable[Example]) -> None:
        problems_with_examples: set[str] = set()
        for ex in kept:
            g = self._group(ex.domain, ex.stratum)
            g["examples"] += 1
            g["fromSamples" if ex.source == "sample" else "fromReference"] += 1
            if ex.problem_id not in problems_with_examples:
                problems_with_examples.add(ex.problem_id)
                g["problemsKept"] += 1
        for ex in capped:
            self._group(ex.domain, ex.stratum)["droppedCandidates"][OVER_MAX_EXAMPLES] += 1

    def total(self, key: str) -> Any:
        values = [g[key] for g in self.groups.values()]
        if values and isinstance(values[0], Counter):
            return dict(sorted(sum(values, Counter()).items()))
        return sum(values)

    def as_json(self) -> dict[str, Any]:
        out = {}
        for name, g in sorted(self.groups.items()):
            row = {k: v for k, v in g.items() if k != "agreementSum"}
            row["meanAgreement"] = round(g["agreementSum"] / g["problems"], 4) if g["problems"] else None
            row["droppedProblems"] = dict(sorted(g["droppedProblems"].items()))
            row["droppedCandidates"] = dict(sorted(g["droppedCandidates"].items()))
            out[name] = row
        return out


def _training_line(problem: Problem, example: Example) -> dict[str, Any]:
    from consistency_worker.data.prompts import build_messages

    messages = [*build_messages(problem), {"role": "assistant", "content": example.completion}]
    return {"messages": messages, "problemId": example.problem_id, "source": example.source}


def _pair_line(problem: Problem, pair: Pair) -> dict[str, Any]:
    """A pair as engines/training.py reads it: the chosen transcript as `messages`, the rejected answer beside it."""
    from consistency_worker.data.prompts import build_messages

    messages = [*build_messages(problem), {"role": "assistant", "content": pair.chosen}]
    return {"messages": messages, "rejected": pair.rejected, "weight": pair.weight, "problemId": pair.problem_id,
            "source": "pair"}


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, DistillParams):
        raise PermanentStageError(f"distill got params of kind {params.kind!r}")
    from consistency_worker.store.generations import GenerationsError, read_generations

    with ctx.manifest.timed("read"):
        problems = {p.id: p for p in ctx.read_problems(params.problems_uri)}
        try:
            records = read_generations(ctx.store, params.generations_uri)
        except GenerationsError as exc:
            raise PermanentStageError(str(exc)) from None
    ctx.manifest.add_input("generations", params.generations_uri)
    unknown = [r.problem_id for r in records if r.problem_id not in problems]
    if unknown:
        raise PermanentStageError(
            f"{len(unknown)} generation record(s) name problems missing from {params.problems_uri}, "
            f"e.g. {unknown[:3]}"
        )

    stats = Stats()
    examples: list[Example] = []
    pairs: list[Pair] = []
    with ctx.manifest.timed("filter"), ctx.progress(len(records), "distill") as progress:
        for record in records:
            if params.failures is None:
                decision = decide_consistent(record, params.filter, config.seed)
            else:
                decision = decide_failure(record, problems[record.problem_id], params.filter, params.failures,
                                          config.seed)
            stats.add(decision)
            examples.extend(decision.examples)
            if decision.pair is not None:
                pairs.append(decision.pair)
            progress.update()
    kept, capped = cap_total(examples, params.failures.max_examples if params.failures else None, config.seed)
    stats.add_examples(kept, capped)
    replay, replay_pool = _replay_lines(ctx, params, kept, config.seed)

    train_uri = ctx.output(DISTILL_TRAIN)
    pairs_uri = ctx.output(DISTILL_PAIRS)
    stats_uri = ctx.output(STATS)
    with ctx.manifest.timed("write"):
        lines = [*(_training_line(problems[ex.problem_id], ex) for ex in kept), *replay]
        data = ctx.store.write_jsonl(train_uri, lines)
        ctx.manifest.add_output("train", train_uri, data=data)
        pair_data = ctx.store.write_jsonl(pairs_uri, (_pair_line(problems[p.problem_id], p) for p in pairs))
        ctx.manifest.add_output("pairs", pairs_uri, data=pair_data)
        summary = {
            "mode": params.mode,
            "targets": params.filter.targets,
            "records": len(records),
            "examples": len(kept),
            "pairs": len(pairs),
            "replayed": len(replay),
            "replayAvailable": replay_pool,
            "groups": stats.as_json(),
        }
        ctx.store.write_json(stats_uri, summary)
        ctx.manifest.add_output("stats", stats_uri)

    if not kept:
        # An empty training set would make train fail later with a less useful message.
        raise PermanentStageError(
            f"distill produced no training examples from {len(records)} problems "
            f"(dropped: {stats.total('droppedProblems')}); see {stats_uri}"
        )
    metrics: dict[str, Any] = {
        "examples": len(kept) + len(replay),
        "newExamples": len(kept),
        "pairs": len(pairs),
        "targets": params.filter.targets,
        "replayed": len(replay),
        "problems": len(records),
        "problemsKept": stats.total("problemsKept"),
        "dropped": stats.total("droppedProblems"),
        "droppedCandidates": stats.total("droppedCandidates"),
        "perDomain": _per_domain(kept),
    }
    if params.mode == DistillMode.failures:
        metrics.update(failures=stats.total("failures"), fromSamples=stats.total("fromSamples"),
                       fromReference=stats.total("fromReference"))
    replayed = f" + {len(replay)} replayed from {params.replay_uri}" if replay else ""
    return StageResult(key=config.key, ok=True, metrics=metrics,
                       outputs={"train": train_uri, "pairs": pairs_uri, "stats": stats_uri},
                       message=f"{len(kept)} training examples from {metrics['problemsKept']} problems{replayed}")


def replay_count(new: int, fraction: float, available: int) -> int:
    """Replayed lines so that they make up ``fraction`` of new + replayed (fewer if fewer exist)."""
    if fraction <= 0 or new <= 0:
        return 0
    return min(available, round(new * fraction / (1.0 - fraction)))


def _replay_lines(ctx: StageContext, params: DistillParams, kept: list[Example],
                  seed: int) -> tuple[list[dict[str, Any]], int]:
    """A seeded sample of an earlier distill's training lines (1B.1's, for 1B.2) to mix back in, none for a
    problem that has new examples here (its new targets replace the old). Returns (lines, pool size)."""
    fraction = params.failures.replay_fraction if params.failures is not None else 0.0
    if not params.replay_uri or fraction <= 0:
        return [], 0
    if not ctx.store.is_file(params.replay_uri):
        raise PermanentStageError(f"params.replayUri: no training data at {params.replay_uri}")
    ctx.manifest.add_input("replay", params.replay_uri)
    fresh = {ex.problem_id for ex in kept}
    pool = [row for row in ctx.store.read_jsonl(params.replay_uri) if row.get("problemId") not in fresh]
    n = replay_count(len(kept), fraction, len(pool))
    rng = derive_rng(seed, "distill-replay")
    chosen = sorted(rng.sample(range(len(pool)), n))
    return [{**pool[i], "source": "replay"} for i in chosen], len(pool)


def _per_domain(examples: list[Example]) -> dict[str, int]:
    return dict(sorted(Counter(ex.domain for ex in examples).items()))
