"""Cost model: forecast a stage's GPU-hours from problem counts and throughput figures before it starts,
and account actual cost from durations x GPUs x price after it ends. Pure arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

from consistency_core.spec import Budget, StageName


@dataclass(frozen=True)
class Workload:
    """Size of a stage's work, known before it starts."""

    problems: int = 0  # generate / evaluate
    samples: int = 0  # k (one greedy answer comes on top)
    max_new_tokens: int = 0
    examples: int = 0  # train
    epochs: int = 0


def forecast_gpu_hours(stage: StageName, gpus: int, work: Workload, budget: Budget) -> float:
    """Upper-bound forecast: every answer is assumed to use its whole token budget."""
    if gpus == 0:
        return 0.0
    tp = budget.throughput
    if stage in (StageName.generate, StageName.evaluate):
        tokens = work.problems * (work.samples + 1) * work.max_new_tokens
        return tokens / tp.generate_tokens_per_second / 3600.0
    if stage == StageName.train:
        tokens = work.examples * work.epochs * tp.prompt_tokens
        return tokens / tp.train_tokens_per_second / 3600.0
    return 0.0


def actual_gpu_hours(seconds: float, gpus: int) -> float:
    return max(seconds, 0.0) * gpus / 3600.0


def usd(gpu_hours: float, budget: Budget) -> float:
    return round(gpu_hours * budget.gpu_hour_usd, 4)
