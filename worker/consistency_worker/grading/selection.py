"""Distill's selection policy: which of a problem's graded, voted samples become training targets.

`decide_consistent` (1B.1: problems whose agreement reaches min_agreement; targets the correct samples
where a gold answer exists, else the samples on the modal answer), `decide_failure` (1B.2: failed
problems only; targets correct samples, modal-answer samples, else the reference solution), the
(chosen, rejected) preference pair of a kept problem (`make_pair`) and the total cap spread evenly over
domain/stratum groups (`cap_total`). Every drop carries its reason (the constants below), which the
distill stage counts. Pure: seeded choices, no I/O.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal

from consistency_core.spec import AgreementFilter, FailureExamples

from consistency_worker.data.problems import Problem
from consistency_worker.grading.code import extract_code
from consistency_worker.grading.voting import Vote, failure, majority_vote, normalise_code
from consistency_worker.runtime.seeds import derive_rng
from consistency_worker.store.generations import Completion, GenerationRecord

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
