"""A campaign's cost before it runs (`consistency plan`, status.forecast), and the throughput figures its own
finished stages measured, which forecast the stages after them. Pure: dataset sizes come in as numbers.

Two forecasts per stage: the upper bound (every answer uses its whole token budget; what the budget stop
checks) and the expected cost (the mean answer length and throughputs measured so far in the campaign).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from consistency_core import cost
from consistency_core.plan import Step, phase_settings, plan, report_step
from consistency_core.spec import CampaignSpec, DatasetFormat, DatasetSpec, StageName
from consistency_core.stage_builder import StageConfigBuilder
from consistency_core.status import (
    CampaignForecast,
    CampaignStatus,
    ForecastStage,
    StageOutcome,
    StageRecord,
    TrainingPhase,
)

# Sizes of the public sources the default campaign names (rows of the split), so a plan needs no download.
# Keyed by (format, split as the hf:// URI or DatasetSpec.split names it).
KNOWN_SIZES: dict[tuple[DatasetFormat, str], int] = {
    (DatasetFormat.gsm8k, "train"): 7473,
    (DatasetFormat.gsm8k, "test"): 1319,
    (DatasetFormat.mbpp, "train"): 374,
    (DatasetFormat.mbpp, "test"): 500,
    (DatasetFormat.mbpp, "validation"): 90,
    (DatasetFormat.humaneval, "test"): 164,
    (DatasetFormat.mmlu, "validation"): 1531,
    (DatasetFormat.mmlu, "test"): 14042,
}


def known_size(ds: DatasetSpec) -> int | None:
    """Rows of a public source named by an hf:// or builtin:// URI, from KNOWN_SIZES; None when not known."""
    if ds.format == DatasetFormat.humaneval and ds.uri.startswith("builtin://"):
        return KNOWN_SIZES[(DatasetFormat.humaneval, "test")]
    if not ds.uri.startswith("hf://"):
        return None
    query = dict(part.split("=", 1) for part in ds.uri.partition("?")[2].split("&") if "=" in part)
    split = ds.split or query.get("split")
    return KNOWN_SIZES.get((ds.format, split)) if split else None


def dataset_sizes(spec: CampaignSpec, counted: Mapping[str, int] | None = None) -> dict[str, int | None]:
    """Problems each dataset contributes: `counted` rows (e.g. a local file's lines) or a known public size,
    capped by its limit; the limit alone when the size is unknown; None when neither is known."""
    sizes: dict[str, int | None] = {}
    for ds in spec.datasets:
        rows = (counted or {}).get(ds.name)
        rows = known_size(ds) if rows is None else rows
        sizes[ds.name] = ds.limit if rows is None else min(rows, ds.limit or rows)
    return sizes


@dataclass(frozen=True)
class _Counts:
    selection: int | None
    scan: int | None
    eval: int | None


def _sum(names: list[str], sizes: Mapping[str, int | None]) -> int | None:
    values = [sizes.get(n) for n in names]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _counts(spec: CampaignSpec, sizes: Mapping[str, int | None]) -> _Counts:
    # A selection draws `count` problems, fewer when its dataset has fewer.
    drawn = [s.count if sizes.get(s.dataset) is None else min(s.count, sizes[s.dataset] or 0)
             for s in spec.quick_fix.selection]
    scan = _sum(spec.expansion.scan_datasets, sizes) if spec.expansion.enabled else 0
    return _Counts(selection=sum(drawn), scan=scan, eval=_sum(spec.evaluation.datasets, sizes))


def steps(spec: CampaignSpec) -> list[tuple[Step, bool]]:
    """Every stage the campaign can run, once each, with whether it runs in the first pass (1B.1 passes its
    first gate): all 1B.1 iterations, then 1B.2 and the report."""
    out = [(s, s.iteration == 1) for i in range(1, spec.retry.max_iterations + 1)
           for s in plan(spec, TrainingPhase.quick_fix, i)]
    if spec.expansion.enabled:
        out += [(s, True) for s in plan(spec, TrainingPhase.expansion, 1)]
    last = TrainingPhase.expansion if spec.expansion.enabled else TrainingPhase.quick_fix
    return [*out, (report_step(last, 1), True)]


def _plan_workload(configs: StageConfigBuilder, step: Step, counts: _Counts) -> tuple[cost.Workload, bool]:
    """The stage's workload at its largest (train: every problem yields maxPerProblem examples), and whether
    its size is known. The stage builder supplies the knobs; the problem and example counts come from here,
    since before prepare and distill nothing has counted them."""
    spec = configs.spec
    work = configs.workload(step, configs.config(step, 1))
    expansion = step.phase == TrainingPhase.expansion
    if step.stage == StageName.generate:
        problems = counts.scan if expansion else counts.selection
        return replace(work, problems=problems or 0), problems is not None
    if step.stage == StageName.evaluate:
        return replace(work, problems=counts.eval or 0), counts.eval is not None
    if step.stage == StageName.train:
        per_problem = phase_settings(spec, step.phase, step.iteration).max_per_problem
        quick = (counts.selection or 0) * spec.quick_fix.max_per_problem
        if not expansion:
            return replace(work, examples=quick), True
        new = min(spec.expansion.max_examples, (counts.scan or 0) * per_problem)
        fraction = spec.expansion.replay_fraction
        replayed = min(quick, round(new * fraction / (1.0 - fraction))) if new and fraction > 0 else 0
        return replace(work, examples=new + replayed), counts.scan is not None
    return work, True


def _gpus(spec: CampaignSpec, stage: StageName) -> int:
    res = spec.resources.stages.for_stage(stage)
    return res.gpus * (res.shards if stage == StageName.generate else 1)


def campaign_forecast(spec: CampaignSpec, sizes: Mapping[str, int | None], rates: cost.Rates | None = None,
                      *, campaign: str = "plan", namespace: str = "default") -> CampaignForecast:
    """The campaign's stages with their cost at the upper bound (spec figures unless `rates` says otherwise),
    the first-pass and worst-case totals, and the verdict against budget.maxUsd."""
    rates = rates or cost.Rates.configured(spec.budget)
    configs = StageConfigBuilder(spec, CampaignStatus(), campaign, namespace)
    counts = _counts(spec, sizes)
    attempts = spec.retry.stage_retries + 1
    rows, unknown, first_hours, worst_hours = [], [], 0.0, 0.0
    for step, first in steps(spec):
        work, known = _plan_workload(configs, step, counts)
        gpus = _gpus(spec, step.stage)
        hours = cost.forecast_gpu_hours(step.stage, gpus, work, spec.budget, rates)
        first_hours += hours if first else 0.0  # totals from unrounded figures
        worst_hours += hours * attempts
        generates = step.stage in (StageName.generate, StageName.evaluate)
        if not known:
            unknown.append(f"{step.key}: a dataset's size is unknown (set its `limit`, or plan from a local file)")
        rows.append(ForecastStage(
            key=step.key, stage=step.stage, iteration=step.iteration, first_pass=first, attempts=attempts,
            problems=(work.problems if known else None) if generates else None,
            examples=(work.examples if known else None) if step.stage == StageName.train else None,
            samples=work.samples if generates else None,
            max_new_tokens=work.max_new_tokens if generates else None,
            epochs=work.epochs if step.stage == StageName.train else None,
            gpus=gpus, tokens=round(cost.forecast_tokens(step.stage, work, rates)),
            seconds=round(cost.forecast_wall_seconds(step.stage, gpus, work, rates), 1),
            gpu_hours=round(hours, 4), usd=cost.usd(hours, spec.budget)))
    first_usd, worst_usd = cost.usd(first_hours, spec.budget), cost.usd(worst_hours, spec.budget)
    return CampaignForecast(
        stages=rows, first_pass_gpu_hours=round(first_hours, 4), first_pass_usd=first_usd,
        worst_case_gpu_hours=round(worst_hours, 4), worst_case_usd=worst_usd, max_usd=spec.budget.max_usd,
        verdict=verdict(first_usd, worst_usd, spec.budget.max_usd, bool(unknown)),
        assumptions=assumptions(rates), unknown=unknown)


def verdict(first_usd: float, worst_usd: float, max_usd: float | None, incomplete: bool) -> str:
    if incomplete:
        return "Incomplete"
    if max_usd is None:
        return "NoBudget"
    if worst_usd <= max_usd:
        return "WithinBudget"
    return "MayExceedBudget" if first_usd <= max_usd else "ExceedsBudget"


def assumptions(rates: cost.Rates) -> dict[str, float]:
    return {"generateTokensPerSecond": rates.generate_tokens_per_second,
            "trainTokensPerSecond": rates.train_tokens_per_second,
            "trainTokensPerExample": rates.train_tokens_per_example,
            "answerShareOfBudget": rates.answer_share}


# --- learning from the campaign's own stages -------------------------------------------------------------

def _device_seconds(record: StageRecord) -> float:
    """Wall seconds x devices of a finished stage (a CPU run counts as one device)."""
    seconds = record.seconds or (record.gpu_hours * 3600.0 / record.gpus if record.gpus else 0.0)
    return seconds * max(record.gpus, 1)


def _answer_budget(spec: CampaignSpec, record: StageRecord) -> int:
    if record.stage == StageName.evaluate:
        return spec.evaluation.max_new_tokens
    return phase_settings(spec, record.phase, record.iteration).max_new_tokens


def learned_rates(spec: CampaignSpec, status: CampaignStatus) -> tuple[cost.Rates, cost.Rates]:
    """(expected, bound) rates from the campaign's succeeded stages: measured throughputs (pooled, so a short
    stage weighs less) replace the spec's figures where measured; the expected rates also use the measured
    mean answer length, the bound keeps every answer at its whole budget."""
    rates = cost.Rates.configured(spec.budget)
    done = [r for r in status.stages if r.outcome == StageOutcome.succeeded and _device_seconds(r) > 0]
    gen_tokens = gen_seconds = budget_tokens = 0.0
    train_tokens = train_seconds = example_epochs = 0.0
    for r in done:
        m = r.result.get("metrics", {})
        if r.stage in (StageName.generate, StageName.evaluate) and m.get("countedAnswers"):
            gen_tokens += float(m.get("generatedTokens", 0))
            gen_seconds += _device_seconds(r)
            budget_tokens += float(m["countedAnswers"]) * _answer_budget(spec, r)
        elif r.stage == StageName.train and m.get("tokens") and m.get("examples"):
            train_tokens += float(m["tokens"])
            train_seconds += _device_seconds(r)
            example_epochs += float(m["examples"]) * phase_settings(spec, r.phase, r.iteration).epochs
    if gen_tokens > 0:
        # The bound's throughput is the measured one too: a full-budget answer costs the same per token.
        rates = replace(rates, generate_tokens_per_second=gen_tokens / gen_seconds)
    if train_tokens > 0:
        rates = replace(rates, train_tokens_per_second=train_tokens / train_seconds,
                        train_tokens_per_example=train_tokens / example_epochs)
    share = min(gen_tokens / budget_tokens, 1.0) if budget_tokens and gen_tokens > 0 else 1.0
    return replace(rates, answer_share=share), rates


@dataclass(frozen=True)
class StageEstimate:
    """A stage's forecast as recorded when it starts."""

    bound_usd: float
    expected_usd: float
    prior_seconds: float
    expected_seconds: float


def estimate(spec: CampaignSpec, status: CampaignStatus, stage: StageName, gpus: int,
             work: cost.Workload) -> StageEstimate:
    expected, bound = learned_rates(spec, status)
    prior = cost.Rates.configured(spec.budget)
    return StageEstimate(
        bound_usd=cost.usd(cost.forecast_gpu_hours(stage, gpus, work, spec.budget, bound), spec.budget),
        expected_usd=cost.usd(cost.forecast_gpu_hours(stage, gpus, work, spec.budget, expected), spec.budget),
        prior_seconds=round(cost.forecast_wall_seconds(stage, gpus, work, prior), 1),
        expected_seconds=round(cost.forecast_wall_seconds(stage, gpus, work, expected), 1))


@dataclass(frozen=True)
class ForecastCheck:
    """A finished stage's forecasts against what it took (the report's forecast-vs-actual table)."""

    key: str
    attempt: int
    seconds: float  # measured
    prior_seconds: float  # from the spec's figures: the forecast before learning
    expected_seconds: float  # from what earlier stages measured
    bound_usd: float
    expected_usd: float
    usd: float

    @staticmethod
    def error(forecast: float, actual: float) -> float:
        """Signed relative error: +0.5 means forecast 50% too high, -0.5 half of what it took."""
        return (forecast - actual) / actual

    @property
    def prior_error(self) -> float:
        return self.error(self.prior_seconds, self.seconds)

    @property
    def expected_error(self) -> float:
        return self.error(self.expected_seconds, self.seconds)


def forecast_checks(spec: CampaignSpec, status: CampaignStatus) -> list[ForecastCheck]:
    """Succeeded stages that had a forecast (generate, evaluate, train) and a measured duration."""
    return [ForecastCheck(r.key, r.attempt, r.seconds, r.prior_seconds, r.expected_seconds, r.forecast_usd,
                          r.expected_usd, cost.usd(r.gpu_hours, spec.budget))
            for r in status.stages
            if r.outcome == StageOutcome.succeeded and r.seconds > 0 and r.prior_seconds > 0]
