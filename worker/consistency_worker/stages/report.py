"""report (CPU): the campaign's last stage. Writes into its output directory:

* report.md with its PNG figures: the same report `consistency report` writes locally;
* status.json / spec.json: the snapshot it rendered, so `consistency report --store` can redraw it anywhere;
* adapter/: the best adapter (1B.2, or 1B.1 when 1B.2 is disabled) with its model card as README.md;
* merged/ (spec.export.merged): the base model with the adapter merged in, 16-bit safetensors and the
  tokenizer, ready for `vllm serve`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consistency_core.stage_wire import (
    MODEL_CARD,
    REPORT_ADAPTER,
    REPORT_MARKDOWN,
    REPORT_MERGED,
    REPORT_SPEC,
    REPORT_STATUS,
    ReportParams,
    StageConfig,
    StageResult,
)
from consistency_core.status import CampaignStatus

from consistency_worker.job.context import StageContext
from consistency_worker.stages import PermanentStageError


def render_report(config: StageConfig, params: ReportParams, store: Any, out: Path) -> tuple[Any, list[str]]:
    """report.md and its figures into `out`; returns the gathered data and the file names written."""
    from consistency_report.data import gather
    from consistency_report.markdown import render_markdown
    from consistency_report.plots import draw_all

    status = CampaignStatus.model_validate(params.status)
    data = gather(config.campaign, config.namespace, params.spec, status, store)
    figures = draw_all(data, out)
    (out / REPORT_MARKDOWN).write_text(render_markdown(data, figures))
    return data, [REPORT_MARKDOWN, *figures]


def export_merged(config: StageConfig, params: ReportParams, adapter_dir: Path, out: Path, ctx: StageContext) -> None:
    from peft import PeftModel

    from consistency_worker.engines.model_loading import load_model, load_tokenizer, resolve_model

    model = resolve_model(config.model, ctx.store, ctx.scratch_dir / "models")
    base = load_model(model, device="cpu", dtype=params.spec.export.dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    load_tokenizer(model).save_pretrained(out)


def run(config: StageConfig, ctx: StageContext) -> StageResult:
    params = config.params
    if not isinstance(params, ReportParams):
        raise PermanentStageError(f"report stage got {params.kind} params")
    try:
        from consistency_report.model_card import render_model_card
    except ImportError as exc:  # matplotlib or the report package missing from the image
        raise PermanentStageError(f"the report stage needs consistency_report and the `local` extra: {exc}") from exc

    out = ctx.scratch_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    with ctx.manifest.timed("render"):
        data, files = render_report(config, params, ctx.store, out)
    (out / REPORT_STATUS).write_text(json.dumps(params.status, indent=1))
    (out / REPORT_SPEC).write_text(json.dumps(params.spec.to_wire(), indent=1))
    outputs = {"report": ctx.output(REPORT_MARKDOWN)}
    local = {"report": out / REPORT_MARKDOWN}

    if params.adapter_uri:
        from consistency_worker.engines.model_loading import fetch_adapter

        ctx.manifest.add_input("adapter", params.adapter_uri)
        adapter_dir = fetch_adapter(params.adapter_uri, ctx.store, ctx.scratch_dir)
        shipped = out / REPORT_ADAPTER
        shipped.mkdir()
        for path in sorted(adapter_dir.rglob("*")):
            if path.is_file() and path.name != ".complete":
                target = shipped / path.relative_to(adapter_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
        (shipped / MODEL_CARD).write_text(render_model_card(data))
        outputs.update(adapter=ctx.output(REPORT_ADAPTER), modelCard=ctx.output(REPORT_ADAPTER, MODEL_CARD))
        local.update(adapter=shipped, modelCard=shipped / MODEL_CARD)
        if params.spec.export.merged:
            with ctx.manifest.timed("merge"):
                export_merged(config, params, adapter_dir, out / REPORT_MERGED, ctx)
            outputs["merged"] = ctx.output(REPORT_MERGED)
            local["merged"] = out / REPORT_MERGED
    elif params.spec.export.merged:
        raise PermanentStageError("export.merged is on but the campaign has no adapter to merge")

    with ctx.manifest.timed("upload"):
        ctx.store.upload_dir(out, config.output_uri)
    for name, uri in outputs.items():
        ctx.manifest.add_output(name, uri, path=local[name])
    return StageResult(key=config.key, ok=True, outputs=outputs,
                       metrics={"figures": len(files) - 1, "merged": bool(outputs.get("merged"))})
