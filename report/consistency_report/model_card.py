"""The model card shipped next to the final adapter: what was trained from what, how, and how it measured.

Pure text from the spec and the gathered report data (same numbers, intervals and counts as the report).
"""

from __future__ import annotations

from consistency_core.plan import knobs
from consistency_core.spec import CampaignSpec

from consistency_report.data import ReportData
from consistency_report.markdown import headline, md_table


def _hub_id(uri: str) -> str | None:
    return uri.removeprefix("hf://").split("?")[0].strip("/") if uri.startswith("hf://") else None


def _front_matter(spec: CampaignSpec) -> list[str]:
    lines = ["---", "library_name: peft", "tags:", "- lora", "- self-consistency", "- consistency-training"]
    base = _hub_id(spec.model.uri)
    if base:
        lines.insert(1, f"base_model: {base}")
    return [*lines, "---", ""]


def _phases(spec: CampaignSpec, data: ReportData) -> list[str]:
    qf, ex = spec.quick_fix, spec.expansion
    quick = [e.record for e in data.evaluations if e.record.phase == "1B.1"]
    iterations = max((r.iteration for r in quick), default=0)
    tries = f" ({iterations} iteration(s))" if iterations else ""
    # The adapter comes from the iteration that passed the gate (else the last one): later iterations
    # sample cooler (retry.temperatureSchedule) and train longer than the spec's base values.
    used = next((r.iteration for r in reversed(quick) if r.gate_passed), iterations) or 1
    knob = knobs(spec, used)
    lines = [f"- **1B.1 quick fix**{tries}: {qf.samples} samples per problem at temperature "
             f"{knob.temperature} (iteration {used}); kept answers with agreement >= {qf.min_agreement}; LoRA "
             f"r={qf.lora.r}, alpha={qf.lora.alpha}, {knob.epochs} epoch(s), learning rate {qf.learning_rate}."]
    if ex.enabled:
        lines.append(f"- **1B.2 expansion**: scanned {', '.join(ex.scan_datasets)} for failures (agreement < "
                     f"{ex.failure.max_agreement}{' or a wrong greedy answer' if ex.failure.include_wrong else ''}), "
                     f"trained on up to {ex.max_examples} examples built from them, continuing from the 1B.1 "
                     f"adapter ({ex.epochs} epoch(s), learning rate {ex.learning_rate}).")
    else:
        lines.append("- 1B.2 expansion: disabled (this is the 1B.1 adapter that passed the gate).")
    th = spec.thresholds
    gate = [f"consistency >= {th.consistency}"] if th.consistency is not None else []
    gate += [f"{d} accuracy >= {v}" for d, v in sorted(th.accuracy.items())]
    lines.append(f"- Promotion gate after 1B.1: {', '.join(gate) or 'none'}.")
    return lines


def before_after_table(data: ReportData) -> list[str]:
    """metric | base model | this adapter, each rate with its Wilson 95% interval and counts."""
    if data.after is None:
        return ["No trained model was evaluated."]
    before = headline(data.before) if data.before else {}
    after = headline(data.after)
    metrics = dict.fromkeys([*before, *after])
    rows = [[metric, before.get(metric, "n/a"), after.get(metric, "n/a")] for metric in metrics]
    return md_table(["metric", "base model", f"with this adapter ({data.after.label})"], rows)


def _transitions(data: ReportData) -> list[str]:
    moves = data.before_after()
    if not moves or data.after is None:
        return []
    return [f"Per problem, base model -> {data.after.label}: {moves['failureToSuccess']} failure -> success, "
            f"{moves['successToFailure']} success -> failure, {moves['stillFailure']} still failing "
            f"(of {moves['matched']} matched).", ""]


def _primary(data: ReportData) -> list[str]:
    change = data.paired_changes().get(data.primary_figure)
    if change is None or not change.n or data.after is None:
        return []
    return [f"Primary endpoint (declared in advance), {data.primary_figure}, base model -> {data.after.label}: "
            f"{change.text()}.", ""]


def render_model_card(data: ReportData) -> str:
    spec = data.spec
    datasets = [[ds.name, f"`{ds.uri}`", ds.format.value, ", ".join(r.value for r in ds.roles),
                 ds.limit or ""] for ds in spec.datasets]
    card = [
        *_front_matter(spec),
        f"# {data.name}: self-consistency LoRA adapter for `{spec.model.uri}`", "",
        f"A LoRA adapter for the base model `{spec.model.uri}`"
        f"{f' (revision {spec.model.revision})' if spec.model.revision else ''}, trained by the consistency "
        "operator's failure-driven self-consistency campaign "
        f"`{data.namespace}/{data.name}` on the model's own majority-vote answers. Load it with PEFT on top of "
        "the base model; it inherits the base model's license and limitations.", "",
        "## Training data", "",
        "Problems only; the targets are the model's own sampled answers (or reference solutions where 1B.2 "
        "found no correct sample). Evaluation datasets are never trained on.", "",
        *md_table(["dataset", "source", "format", "roles", "limit"], datasets), "",
        "## Training phases", "", *_phases(spec, data), "",
        f"## Before / after ({data.after.record.problems if data.after else 0} held-out problems)", "",
        "Rates with Wilson 95% confidence intervals and counts; consistency: all "
        f"{spec.evaluation.samples} samples at temperature {spec.evaluation.temperature} agree; accuracy: the "
        "greedy answer is right.", "",
        *before_after_table(data), "", *_primary(data), *_transitions(data),
        f"Compute: {data.status.cost.gpu_hours:.3f} GPU-hours (${data.status.cost.usd:.2f}); seed {spec.seed}.", "",
        "## Limitations", "",
        "Self-consistency training makes answers agree more; it can make a model agree on a wrong answer. "
        "The figures above are for the listed evaluation datasets only.", "",
    ]
    return "\n".join(card)
