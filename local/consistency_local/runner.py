"""Drive a campaign on one machine with the operator's own state machine.

Loop: decide(spec, status, last result) -> persist status -> run the stage it asks for as a local
process -> feed its result back. The status file is the only memory, exactly as the CR status is for
the operator, so a killed run started again with the same command carries on where it stopped:
finished stages are never rerun, the interrupted one is rerun (stages are idempotent and resume
from their own partial outputs).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from consistency_core.plan import max_stages
from consistency_core.spec import StageName
from consistency_core.stage_wire import StageConfig
from consistency_core.statemachine import Event, Finish, RunStage, decide
from consistency_core.status import CampaignStatus, StageRecord

from consistency_local.campaign_file import Campaign
from consistency_local.planning import local_rows
from consistency_local.rundir import RunDir
from consistency_local.stage_process import Tick, run_stage_process

Clock = Callable[[], datetime]


class RunError(RuntimeError):
    """The local run cannot start or continue (not a campaign failure: those end in status)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def cuda_device_count() -> int:
    """GPUs the worker processes could use; checked without importing torch into the runner."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    try:
        import torch  # the runner has the worker's dependencies anyway; import only here
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_campaign(campaign: Campaign, gpus: int) -> Campaign:
    """One machine: one process per stage (no shards), and only the GPUs it has (0 on a laptop, so
    the cost in GPU-hours is honestly zero). Everything else is the spec as written."""
    spec = campaign.spec.model_copy(deep=True)
    for stage in StageName:
        res = spec.resources.stages.for_stage(stage)
        res.shards = 1
        res.gpus = min(res.gpus, gpus)
    return Campaign(name=campaign.name, namespace=campaign.namespace, spec=spec, source=campaign.source)


def local_store_dir(campaign: Campaign) -> Path | None:
    uri = campaign.spec.store.uri
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        return None
    return Path(uri) / campaign.namespace / campaign.name


@contextmanager
def _locked(run_dir: RunDir) -> Iterator[None]:
    run_dir.root.mkdir(parents=True, exist_ok=True)
    with (run_dir.root / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir.root} is in use by another `consistency run`") from None
        yield


def _reset(run_dir: RunDir, campaign: Campaign) -> None:
    for sub in ("configs", "results", "logs", "progress", "report"):
        shutil.rmtree(run_dir.root / sub, ignore_errors=True)
    run_dir.status_path.unlink(missing_ok=True)
    store = local_store_dir(campaign)
    if store is not None:
        # Stage outputs are reused by key; after a fresh start they must not be.
        shutil.rmtree(store, ignore_errors=True)


def _check_identity(run_dir: RunDir, campaign: Campaign, fresh: bool) -> None:
    info = run_dir.read_run()
    if info is not None and not fresh and info.get("digest") != campaign.digest:
        raise RunError(
            f"{run_dir.root} holds campaign {info.get('namespace')}/{info.get('name')} started from a "
            f"different spec ({info.get('source')}); pass --fresh to discard it and start over, or use "
            "another --run-dir"
        )
    if info is not None and fresh and local_store_dir(campaign) is None:
        raise RunError("--fresh cannot clear an s3:// store; give the campaign a new metadata.name instead")


def run_campaign(
    campaign: Campaign,
    run_dir: Path,
    *,
    fresh: bool = False,
    on_event: Callable[[Event], None] | None = None,
    on_tick: Callable[[Tick], None] | None = None,
    clock: Clock = utcnow,
    gpus: int | None = None,
    adjust: Callable[[StageRecord, StageConfig], StageConfig] | None = None,
) -> CampaignStatus:
    """Run (or resume) the campaign until it succeeds or fails; return the final status.

    ``adjust`` may change a stage's config just before it runs, from what earlier stages produced (the
    efficacy arms use it to give every arm the same optimizer steps); the campaign's own plan is unchanged."""
    rd = RunDir(run_dir)
    local = local_campaign(campaign, cuda_device_count() if gpus is None else gpus)
    with _locked(rd):
        _check_identity(rd, campaign, fresh)
        if fresh:
            _reset(rd, local)
        rd.write_run({"name": campaign.name, "namespace": campaign.namespace, "digest": campaign.digest,
                      "source": str(campaign.source.resolve())})
        status = rd.load_status()
        result = None
        if status is not None:
            running = status.current()
            # The worker may have finished after the runner was stopped: use its result, not a rerun.
            result = rd.finished_result(running) if running is not None else None
        limit = max_stages(local.spec) + 1
        rows = local_rows(local.spec)  # local dataset files sized for the campaign's forecast
        for _ in range(limit + 1):
            decision = decide(local.spec, status, result, campaign=campaign.name,
                              namespace=campaign.namespace, now=clock(), dataset_rows=rows)
            status = decision.status
            rd.save_status(status)
            for event in decision.events:
                if on_event is not None:
                    on_event(event)
            action = decision.action
            if isinstance(action, Finish):
                return status
            assert isinstance(action, RunStage)
            config = action.config if adjust is None else adjust(action.record, action.config)
            result = run_stage_process(rd, action.record, config, on_tick=on_tick)
        raise RunError(f"campaign did not finish within {limit} stage runs; see {rd.status_path}")
