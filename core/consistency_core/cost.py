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


@dataclass(frozen=True)
class Rates:
    """Throughput figures a forecast runs on: the spec's (budget.throughput) until a campaign's own stages
    measured them (consistency_core.forecast.learned_rates). Per device: per GPU, or the one CPU host."""

    generate_tokens_per_second: float
    train_tokens_per_second: float
    train_tokens_per_example: float  # prompt + answer tokens of one example, one epoch
    answer_share: float = 1.0  # mean generated tokens per answer / its budget; 1.0 is the upper bound

    @classmethod
    def configured(cls, budget: Budget) -> Rates:
        tp = budget.throughput
        return cls(tp.generate_tokens_per_second, tp.train_tokens_per_second, float(tp.prompt_tokens))


def forecast_tokens(stage: StageName, work: Workload, rates: Rates) -> float:
    """Tokens a stage generates (generate, evaluate) or trains on (train); 0 for CPU-only stages."""
    if stage in (StageName.generate, StageName.evaluate):
        return work.problems * (work.samples + 1) * work.max_new_tokens * rates.answer_share
    if stage == StageName.train:
        return work.examples * work.epochs * rates.train_tokens_per_example
    return 0.0


def forecast_device_seconds(stage: StageName, work: Workload, rates: Rates) -> float:
    """Seconds of one device (GPU, or the CPU host) the stage's tokens take."""
    generates = stage in (StageName.generate, StageName.evaluate)
    per_second = rates.generate_tokens_per_second if generates else rates.train_tokens_per_second
    return forecast_tokens(stage, work, rates) / per_second


def forecast_gpu_hours(stage: StageName, gpus: int, work: Workload, budget: Budget,
                       rates: Rates | None = None) -> float:
    """GPU-hours of a stage: its device time, spread over `gpus` without loss. Default rates: the spec's
    figures with every answer using its whole token budget (the upper bound)."""
    if gpus == 0:
        return 0.0
    return forecast_device_seconds(stage, work, rates or Rates.configured(budget)) / 3600.0


def forecast_wall_seconds(stage: StageName, gpus: int, work: Workload, rates: Rates) -> float:
    """Wall time of a stage: device time over its GPUs (a CPU-only run is one device)."""
    return forecast_device_seconds(stage, work, rates) / max(gpus, 1)


def actual_gpu_hours(seconds: float, gpus: int) -> float:
    return max(seconds, 0.0) * gpus / 3600.0


def usd(gpu_hours: float, budget: Budget) -> float:
    return round(gpu_hours * budget.gpu_hour_usd, 4)
