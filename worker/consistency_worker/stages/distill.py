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

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from consistency_core.spec import AgreementFilter, FailureExamples
from consistency_core.stage_wire import (
    DISTILL_PAIRS,
    DISTILL_TRAIN,
    DistillMode,
    DistillParams,
    StageConfig,
    StageResult,
)

from consistency_worker.generations import Completion, GenerationRecord
from consistency_worker.grading import extract_code
from consistency_worker.problems import Problem
from consistency_worker.seeds import derive_rng
from consistency_worker.stages import PermanentStageError
from consistency_worker.stages.context import StageContext
from consistency_worker.voting import Vote, failure, majority_vote, normalise_code

STATS = "stats.json"
Source = Literal["sample", "reference"]

# Problem-level outcomes (why a problem yields no example).
NO_SAMPLES = "no_samples"
NO_ANSWER = "no_answer"
LOW_AGREEMENT = "low_agreement"
NO_CORRECT_SAMPLE = "no_correct_sample"
NOT_FAILURE = "not_failure"
NO_TARGET = "no_target"
# Candidate-level drops (why a completion is not a target).
WRONG = "wrong"
NOT_MODAL = "not_modal"
EMPTY = "empty"
DUPLICATE = "duplicate"
OVER_PER_PROBLEM = "over_per_problem"
OVER_MAX_EXAMPLES = "over_max_examples"

_SPACE = re.compile(r"\s+")


def normalise_completion(text: str) -> str:
    """Dedupe key: whitespace-insensitive, so reflowed copies of one answer count once."""
    return _SPACE.sub(" ", text).strip()


@dataclass
class Example:
    problem_id: str
    domain: str
    stratum: str
    completion: str
    source: Source
    rank: int  # position among this problem's targets (0 = first choice)


@dataclass
class Pair:
    problem_id: str
    chosen: str
    rejected: str
    weight: float  # vote margin / k, in (0, 1]


@dataclass
class Decision:
    """What distill made of one problem."""

    record: GenerationRecord
    agreement: float
    modal: str | None
    examples: list[Example] = field(default_factory=list)
    reason: str | None = None  # set when the problem yields no example
    failed: bool | None = None  # failures mode: did the problem count as a failure
    dropped: Counter[str] = field(default_factory=Counter)  # candidate-level drops
    pair: Pair | None = None


def _vote(record: GenerationRecord) -> Vote:
    # Ties go to the greedy answer, then to the first seen: the vote depends only on the record.
    return majority_vote([s.answer for s in record.samples], prefer=record.greedy.answer)


def dedupe_key(domain: str, text: str) -> str:
    """Two programs that differ only in prose, comments or layout are one target."""
    if domain == "code":
        return "code:" + normalise_code(extract_code(text))
    return normalise_completion(text)


def _has_gold(record: GenerationRecord, rule: AgreementFilter) -> bool:
    """Whether targets come from gold verdicts: never under targets majority (label-free)."""
    if rule.targets == "majority":
        return False
    return any(c.correct is not None for c in [record.greedy, *record.samples])


def make_pair(record: GenerationRecord, candidates: list[Completion], seed: int) -> Pair | None:
    """One preference pair: a seeded choice among the chosen candidates (samples only), against a sample of
    the least-voted answer other than the chosen one's; None when every sample gives the chosen answer or
    the margin is not positive."""
    samples = [c for c in candidates if any(c is s for s in record.samples)]
    if not samples or not record.samples:
        return None
    votes = Counter(s.answer for s in record.samples if s.answer is not None)
    rng = derive_rng(seed, "distill-pair", record.problem_id)
    chosen = samples[rng.randrange(len(samples))]
    chosen_votes = votes[chosen.answer] if chosen.answer is not None else 1

    def weight(c: Completion) -> int:
        return votes[c.answer] if c.answer is not None else 1  # no answer: a class of its own

    others = [s for s in record.samples if s.text.strip() and (s.answer is None or s.answer != chosen.answer)]
    if not others:
        return None
    fewest = min(weight(c) for c in others)
    least = [c for c in others if weight(c) == fewest]
    rejected = least[rng.randrange(len(least))]
    margin = chosen_votes - fewest
    if margin <= 0:
        return None
    return Pair(record.problem_id, chosen.text, rejected.text, round(margin / len(record.samples), 6))


def _filter_candidates(record: GenerationRecord, modal: str | None, gold: bool,
                       dropped: Counter[str]) -> list[Completion]:
    """Candidate targets among the samples (and the greedy answer, which votes but is a fine target)."""
    kept = []
    for c in [*record.samples, record.greedy]:
        if not c.text.strip():
            dropped[EMPTY] += 1
        elif gold and c.correct is not True:
            dropped[WRONG] += 1
        elif not gold and (c.answer is None or c.answer != modal):
            dropped[NOT_MODAL] += 1
        else:
            kept.append(c)
    return kept


def _choose(texts: list[tuple[str, Source]], record: GenerationRecord, limit: int, seed: int,
            dropped: Counter[str]) -> list[Example]:
    """Seeded order, then dedupe by normalised text, then the per-problem cap."""
    # Per-problem stream: the choice for one problem is independent of record order and sharding.
    derive_rng(seed, "distill", record.problem_id).shuffle(texts)
    chosen: list[Example] = []
    seen: set[str] = set()
    for text, source in texts:
        key = dedupe_key(record.domain, text)
        if key in seen:
            dropped[DUPLICATE] += 1
        elif len(chosen) >= limit:
            dropped[OVER_PER_PROBLEM] += 1
        else:
            seen.add(key)
            chosen.append(Example(record.problem_id, record.domain, record.stratum, text, source, len(chosen)))
    return chosen


def decide_consistent(record: GenerationRecord, rule: AgreementFilter, seed: int) -> Decision:
    if not record.samples:
        return Decision(record, 0.0, None, reason=NO_SAMPLES)
    vote = _vote(record)
    modal, agreement = vote.answer, vote.agreement
    decision = Decision(record, agreement, modal)
    if modal is None:
        decision.reason = NO_ANSWER
    elif agreement < rule.min_agreement:
        decision.reason = LOW_AGREEMENT
    else:
        gold = _has_gold(record, rule)
        candidates = _filter_candidates(record, modal, gold, decision.dropped)
        if not candidates:
            decision.reason = NO_CORRECT_SAMPLE if gold else NO_TARGET
        else:
            texts: list[tuple[str, Source]] = [(c.text, "sample") for c in candidates]
            decision.examples = _choose(texts, record, rule.max_per_problem, seed, decision.dropped)
            decision.pair = make_pair(record, candidates, seed)
    return decision


def format_reference(problem: Problem) -> str | None:
    """The dataset's reference solution, in the answer format the prompt asks for
    (math: worked solution ending `#### N`; code: one ```python block; reasoning: `Answer: X`)."""
    solution = (problem.solution or "").strip()
    if problem.domain == "code":
        if not solution:
            return None
        return f"```python\n{solution}\n```"
    if not problem.answer:
        return None
    if problem.domain == "math":
        body = solution.rsplit("####", 1)[0].rstrip() if solution else ""
        return f"{body}\n#### {problem.answer}" if body else f"#### {problem.answer}"
    if problem.domain == "reasoning":
        body = re.sub(r"(?im)^\s*answer\s*:.*$", "", solution).rstrip() if solution else ""
        return f"{body}\nAnswer: {problem.answer}" if body else f"Answer: {problem.answer}"
    return None


def decide_failure(record: GenerationRecord, problem: Problem | None, rule: AgreementFilter,
                   failures: FailureExamples, seed: int) -> Decision:
    criteria = failures.failure
    vote = _vote(record)
    modal, agreement = vote.answer, vote.agreement
    decision = Decision(record, agreement, modal)
    label_free = rule.targets == "majority"
    # Label-free: a failure is a low-agreement problem; the greedy answer's gold verdict is never read.
    greedy_correct = record.greedy.correct if criteria.include_wrong and not label_free else None
    # No samples: agreement 0, so the problem counts as a failure (the model gave nothing usable).
    decision.failed = failure(greedy_correct, vote, min_agreement=criteria.max_agreement).failed
    if not decision.failed:
        decision.reason = NOT_FAILURE
        return decision

    gold = _has_gold(record, rule)
    texts: list[tuple[str, Source]] = []
    candidates: list[Completion] = []
    if gold or (modal is not None and agreement >= rule.min_agreement):
        candidates = _filter_candidates(record, modal, gold, decision.dropped)
        texts = [(c.text, "sample") for c in candidates]
    elif record.samples:
        decision.dropped[NOT_MODAL] += len(record.samples)
    if texts:
        decision.examples = _choose(texts, record, rule.max_per_problem, seed, decision.dropped)
        decision.pair = make_pair(record, candidates, seed)
        return decision
    use_reference = failures.use_reference_solutions and problem is not None and not label_free
    reference = format_reference(problem) if use_reference and problem is not None else None
    if reference is not None:
        decision.examples = [Example(record.problem_id, record.domain, record.stratum, reference, "reference", 0)]
    else:
        decision.reason = NO_CORRECT_SAMPLE if gold else NO_TARGET
    return decision


def cap_total(examples: list[Example], max_examples: int | None, seed: int) -> tuple[list[Example], list[Example]]:
    """At most max_examples, spread across (domain, stratum) groups: round-robin over the groups, each
    group in a seeded order that takes every problem's first target before any second one.
    Returns (kept, dropped), kept in the input order."""
    if max_examples is None or len(examples) <= max_examples:
        return examples, []
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[(ex.domain, ex.stratum)].append(i)
    rng = derive_rng(seed, "distill-cap")
    queues: list[list[int]] = []
    for key in sorted(groups):
        problems = sorted({examples[i].problem_id for i in groups[key]})
        rng.shuffle(problems)
        order = {pid: n for n, pid in enumerate(problems)}
        queues.append(sorted(groups[key], key=lambda i: (examples[i].rank, order[examples[i].problem_id])))
    picked: set[int] = set()
    while len(picked) < max_examples:
        for queue in queues:
            if queue and len(picked) < max_examples:
                picked.add(queue.pop(0))
    kept = [ex for i, ex in enumerate(examples) if i in picked]
    return kept, [ex for i, ex in enumerate(examples) if i not in picked]


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
    from consistency_worker.prompts import build_messages

    messages = [*build_messages(problem), {"role": "assistant", "content": example.completion}]
    return {"messages": messages, "problemId": example.problem_id, "source": example.source}


def _pair_line(problem: Problem, pair: Pair) -> dict[str, Any]:
    """A pair as training.py reads it: the chosen transcript as `messages`, the rejected answer beside it."""
    from consistency_worker.prompts import build_messages

    messages = [*build_messages(problem), {"role": "assistant", "content": pair.chosen}]
    return {"messages": messages, "rejected": pair.rejected, "weight": pair.weight, "problemId": pair.problem_id,
            "source": "pair"}


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, DistillParams):
        raise PermanentStageError(f"distill got params of kind {params.kind!r}")
    from consistency_worker.generations import GenerationsError, read_generations

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
