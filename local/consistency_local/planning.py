"""`consistency plan`: a campaign's stages and cost before anything runs, and the seed's four options priced
with the product's figures (`--compare`). No cluster, no model: the only I/O is counting the lines of local
dataset files the plan needs sizes of."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consistency_core import cost, forecast
from consistency_core.spec import CampaignSpec, DatasetFormat, StageName
from consistency_core.status import CampaignForecast

# Local files with one problem per line; other local formats (MBPP's task-id splits, MMLU) need a limit.
_LINE_FORMATS = (DatasetFormat.gsm8k, DatasetFormat.jsonl)


def local_rows(spec: CampaignSpec) -> dict[str, int]:
    """Non-empty lines of each local one-problem-per-line dataset file that exists."""
    rows = {}
    for ds in spec.datasets:
        if ds.format not in _LINE_FORMATS or "://" in ds.uri.removeprefix("file://"):
            continue
        path = Path(ds.uri.removeprefix("file://"))
        if path.is_file():
            with path.open("rb") as f:
                rows[ds.name] = sum(1 for line in f if line.strip())
    return rows


def plan_campaign(spec: CampaignSpec, name: str = "plan", namespace: str = "default") -> CampaignForecast:
    return forecast.campaign_forecast(spec, forecast.dataset_sizes(spec, local_rows(spec)), campaign=name,
                                      namespace=namespace)


def _n(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


PLAN_COLUMNS = ("STAGE", "PASS", "PROBLEMS", "EXAMPLES", "K", "TOKENS/ANSWER", "EPOCHS", "GPUS", "TIME",
                "GPU-H", "USD", "WORST-CASE USD")


def render_plan(plan: CampaignForecast) -> str:
    from consistency_local.console import table

    def count(value: int | None, applies: bool) -> str:
        return _n(value) if applies else ""

    rows = [[s.key, "first" if s.first_pass else "retry",
             count(s.problems, s.stage in (StageName.generate, StageName.evaluate)),
             count(s.examples, s.stage == StageName.train),
             "" if s.samples is None else str(s.samples), "" if s.max_new_tokens is None else str(s.max_new_tokens),
             "" if s.epochs is None else str(s.epochs), str(s.gpus), _hours(s.seconds), f"{s.gpu_hours:.3f}",
             f"{s.usd:.2f}", f"{s.usd * s.attempts:.2f}"] for s in plan.stages]
    a = plan.assumptions
    attempts = plan.stages[0].attempts if plan.stages else 1
    lines = [
        table(rows, PLAN_COLUMNS), "",
        f"first pass (1B.1 passes its first gate, no stage fails): {plan.first_pass_gpu_hours:.2f} GPU-h, "
        f"${plan.first_pass_usd:.2f}",
        f"worst case (every 1B.1 iteration, every stage tried {attempts}x): {plan.worst_case_gpu_hours:.2f} GPU-h, "
        f"${plan.worst_case_usd:.2f}",
        f"budget: {'none (budget.maxUsd unset)' if plan.max_usd is None else f'${plan.max_usd:.2f}'}: "
        f"{plan.verdict}",
        f"assumed (upper bound: every answer uses its whole token budget): {a['generateTokensPerSecond']:,.0f} "
        f"generated and {a['trainTokensPerSecond']:,.0f} training tokens/s per GPU, "
        f"{a['trainTokensPerExample']:,.0f} tokens per training example (spec.budget.throughput)",
    ]
    lines += [f"unknown: {u}" for u in plan.unknown]
    return "\n".join(lines)


# --- the seed's cost table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedOption:
    name: str
    examples: str  # as the seed counts them
    seed_hours: str
    seed_usd: str
    changes: dict  # spec changes that make the product run this option


GSM8K_TRAIN, MBPP_TRAIN = 7473, 374

SEED_OPTIONS = (
    SeedOption("quick fix (1B.1)", "664", "3-4", "6-8",
               {"expansion": {"enabled": False}}),
    SeedOption("strategic sampling", "3,500", "8-10", "15-20",
               {"expansion": {"enabled": False},
                "quickFix": {"selection": [{"dataset": "gsm8k-train", "count": 3500 - MBPP_TRAIN},
                                           {"dataset": "mbpp-train", "count": MBPP_TRAIN}]}}),
    SeedOption("failure-driven (1B.1 + 1B.2)", "2,500-3,700", "7-9", "13-18", {}),
    SeedOption("full train sets", "7,850", "18-20", "35-40",
               {"expansion": {"enabled": False},
                "quickFix": {"selection": [{"dataset": "gsm8k-train", "count": GSM8K_TRAIN},
                                           {"dataset": "mbpp-train", "count": MBPP_TRAIN}]}}),
)

# The seed's table implies $2.00 per GPU-hour ($6-8 for 3-4 h); priced at that, the hours compare directly.
SEED_GPU_HOUR_USD = 2.0

# Published figures for a 7B-8B model on one H100/A100-class GPU: ASSUMPTIONS, not measurements of this
# product (docs/planning.md cites the sources and says why they are optimistic for this workload).
PUBLISHED = cost.Rates(generate_tokens_per_second=12_500.0, train_tokens_per_second=1_365.0,
                       train_tokens_per_example=256.0)


def seed_spec(option: SeedOption) -> CampaignSpec:
    """The default 7B campaign (hf:// model, default datasets), changed into one of the seed's options."""
    base = {"model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}, "store": {"uri": "s3://bucket/campaigns"},
            "budget": {"gpuHourUsd": SEED_GPU_HOUR_USD}}
    return CampaignSpec.model_validate({**base, **option.changes})


@dataclass(frozen=True)
class SeedRow:
    option: SeedOption
    default_figures: CampaignForecast
    published_figures: CampaignForecast


def compare() -> list[SeedRow]:
    rows = []
    for option in SEED_OPTIONS:
        spec = seed_spec(option)
        sizes = forecast.dataset_sizes(spec)
        rows.append(SeedRow(option, forecast.campaign_forecast(spec, sizes),
                            forecast.campaign_forecast(spec, sizes, PUBLISHED)))
    return rows


COMPARE_COLUMNS = ("OPTION", "SEED EXAMPLES", "SEED H", "SEED USD", "PRODUCT EXAMPLES (MAX)",
                   "DEFAULT FIGURES H / USD", "PUBLISHED FIGURES H / USD", "WORST CASE USD (DEFAULT)")


def render_compare(rows: list[SeedRow]) -> str:
    from consistency_local.console import table

    def hours_usd(plan: CampaignForecast) -> str:
        return f"{plan.first_pass_gpu_hours:.1f} h / ${plan.first_pass_usd:.2f}"

    body = []
    for r in rows:
        trained = sum(s.examples or 0 for s in r.default_figures.stages if s.first_pass and s.examples)
        body.append([r.option.name, r.option.examples, r.option.seed_hours, r.option.seed_usd, f"{trained:,}",
                     hours_usd(r.default_figures), hours_usd(r.published_figures),
                     f"${r.default_figures.worst_case_usd:.2f}"])
    d, p = cost.Rates.configured(seed_spec(SEED_OPTIONS[0]).budget), PUBLISHED
    return "\n".join([
        table(body, COMPARE_COLUMNS), "",
        f"7B model, one GPU per stage, ${SEED_GPU_HOUR_USD:.2f}/GPU-h (the seed's implied price), first pass, "
        "every answer at its whole token budget (upper bound); GPU-hours of generate, train and evaluate only.",
        f"default figures: {d.generate_tokens_per_second:,.0f} generated / {d.train_tokens_per_second:,.0f} "
        "training tokens/s per GPU (spec.budget.throughput defaults).",
        f"published figures (assumptions, see docs/planning.md): {p.generate_tokens_per_second:,.0f} generated "
        f"tokens/s (vLLM, Llama 3.1 8B, 1x H100) / {p.train_tokens_per_second:,.0f} training tokens/s "
        "(Qwen-7B Q-LoRA, 1x A100).",
    ])
