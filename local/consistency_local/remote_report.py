"""`consistency report --store URI`: redraw a cluster campaign's report on this machine from what its
final report stage left in the store (status and spec snapshots, evaluation reports and per-problem rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consistency_core.spec import ArtifactStore, CampaignSpec
from consistency_core.stage_wire import REPORT_SPEC, REPORT_STATUS, join_uri
from consistency_core.status import CampaignStatus

from consistency_local.report import terminal_summary, write_report
from consistency_local.rundir import RunDir


class RemoteReportError(ValueError):
    pass


def campaign_root(uri: str) -> tuple[str, str, str]:
    """(root, namespace, name) of `<store>/<namespace>/<campaign>` (a trailing /report is allowed)."""
    parts = uri.rstrip("/").removesuffix("/report").rstrip("/")
    segments = parts.split("://", 1)[-1].split("/")
    if len(segments) < 3 or not all(segments[-2:]):
        raise RemoteReportError(f"--store {uri}: expected <store uri>/<namespace>/<campaign>")
    return parts, segments[-2], segments[-1]


def _open(uri: str, endpoint: str | None) -> Any:
    try:
        from consistency_worker.store.facade import open_store
    except ImportError as exc:
        raise RemoteReportError(f"reading a store needs the worker package (boto3): {exc}") from exc
    return open_store(ArtifactStore(uri=uri, endpoint=endpoint))


def report_from_store(uri: str, out: Path, endpoint: str | None = None) -> tuple[Path, str]:
    """Render the campaign's report into `out`/report; returns (report path, terminal summary)."""
    root, namespace, name = campaign_root(uri)
    store = _open(root, endpoint)
    report = join_uri(root, "report")
    try:
        status = CampaignStatus.model_validate(store.read_json(join_uri(report, REPORT_STATUS)))
        spec = CampaignSpec.model_validate(store.read_json(join_uri(report, REPORT_SPEC)))
    except Exception as exc:  # not found, unreadable, or not a report stage's snapshot
        raise RemoteReportError(f"no report stage output under {report} ({type(exc).__name__}: {exc}); "
                                "it is written when a campaign succeeds") from exc
    # The evaluation reports are read with this machine's store settings, not the cluster's endpoint.
    spec = spec.model_copy(update={"store": spec.store.model_copy(update={"endpoint": endpoint})})
    path, data = write_report(RunDir(out), name, namespace, spec, status, store=store)
    return path, terminal_summary(data, path)
