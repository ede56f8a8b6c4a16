"""Stage programs and the runner every stage goes through.

Each stage module `consistency_worker.stages.<stage>` exposes `run(config, ctx) -> StageResult`. The
runner makes stages idempotent: a stage whose result file exists in its output directory returns
that result without doing any work; otherwise it runs, writes `manifest.json`, then writes the result
file last, so the result file is the commit marker of a finished stage. Stage modules are imported
only when run, so `consistency-worker --help` (and the operator) never load torch."""

from __future__ import annotations

import importlib
import json
import time
from types import ModuleType

from consistency_core.spec import StageName
from consistency_core.stage_wire import StageResult

from consistency_worker.engines.distributed import current_world
from consistency_worker.job.context import StageContext
from consistency_worker.job.errors import PermanentStageError, StageFailure
from consistency_worker.store.errors import StoreNotFound

__all__ = ["STAGES", "PermanentStageError", "StageContext", "StageFailure", "load_stage", "run_stage"]

STAGES = tuple(s.value for s in StageName)


def load_stage(stage: str) -> ModuleType:
    if stage not in STAGES:
        raise PermanentStageError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    module = importlib.import_module(f"consistency_worker.stages.{stage}")
    if not callable(getattr(module, "run", None)):
        raise PermanentStageError(f"stage module {module.__name__} has no run(config, ctx)")
    return module


def finished_result(ctx: StageContext) -> StageResult | None:
    """The stored result of an earlier successful run of this stage (and shard), if any, and only if every
    output its manifest records is still there and matches it; otherwise the stage runs again."""
    if not ctx.store.is_file(ctx.result_uri):
        return None
    result = StageResult.model_validate(ctx.store.read_json(ctx.result_uri))
    if result.key != ctx.config.key:
        raise PermanentStageError(
            f"{ctx.result_uri} holds the result of stage {result.key!r}, not {ctx.config.key!r}; "
            "two stages share an output directory"
        )
    if not result.ok:
        return None
    problems = unverified_outputs(ctx)
    if problems:
        for uri, why in problems:
            ctx.logger.warning("%s: output %s fails verification (%s); running the stage again",
                               ctx.config.key, uri, why)
            ctx.store.delete(uri)
        ctx.store.delete(ctx.result_uri)
        return None
    return result


def unverified_outputs(ctx: StageContext) -> list[tuple[str, str]]:
    """(uri, why) for each output the stage's manifest records that is missing or differs from it; a
    missing or unreadable manifest is itself such a problem (the result would vouch for nothing)."""
    try:
        manifest = json.loads(ctx.store.read_bytes(ctx.manifest_uri, verify=False))
    except (StoreNotFound, ValueError):
        return [(ctx.manifest_uri, "missing or not JSON")]
    problems = []
    for entry in (manifest.get("outputs") or {}).values():
        uri = entry.get("uri", "")
        files = [f"{uri.rstrip('/')}/{rel}" for rel in entry["files"]] if "files" in entry else [uri]
        for file_uri in files:
            why = ctx.store.verify(file_uri)
            if why is not None:
                problems.append((file_uri, why))
    return problems


def prepare_output(ctx: StageContext) -> None:
    """Before a (re)run: sweep temp files interrupted writes left (older than the stage's deadline, so no
    live writer's), and drop this shard's stale manifest, which would vouch for the previous outputs."""
    for path in ctx.store.sweep_temp(ctx.config.output_uri, ctx.config.deadline_seconds):
        ctx.logger.info("%s: removed stale temp file %s", ctx.config.key, path)
    ctx.store.delete(ctx.manifest_uri)


def run_stage(ctx: StageContext) -> StageResult:
    """Run the configured stage once: reuse a finished result, else run, write manifest + result."""
    config = ctx.config
    done = finished_result(ctx)
    if done is not None:
        ctx.logger.info("%s already finished (%s); nothing to do", config.key, ctx.result_uri)
        return done
    module = load_stage(config.stage.value)
    if current_world().is_writer:
        prepare_output(ctx)
    start = time.monotonic()
    ctx.logger.info("%s: starting %s (shard %d/%d) -> %s", config.key, config.stage.value,
                    ctx.shard_index, ctx.shard_count, config.output_uri)
    result = module.run(config, ctx)
    if not isinstance(result, StageResult):
        raise TypeError(f"{module.__name__}.run returned {type(result).__name__}, not StageResult")
    result = result.model_copy(update={"seconds": round(time.monotonic() - start, 3)})
    if not result.ok or not current_world().is_writer:
        # Data-parallel ranks other than 0 computed the same result; rank 0 alone commits it.
        return result
    ctx.manifest.write(ctx.store, ctx.manifest_uri, result)
    ctx.store.write_json(ctx.result_uri, result.to_wire())
    ctx.logger.info("%s: finished in %.1f s: %s", config.key, result.seconds, result.metrics)
    return result
