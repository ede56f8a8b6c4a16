"""The local run directory: the campaign's status (persisted atomically after every decision, so a
killed run resumes where it stopped), stage configs, results, logs, progress files and the report.

    <run-dir>/
      run.json                 campaign name, namespace, spec digest, source file
      status.json              CampaignStatus (wire form), rewritten atomically
      configs/<key>-a<n>.json  StageConfig handed to the worker process
      results/<key>-a<n>.json  the worker's compact StageResult
      logs/<key>-a<n>.log      the worker's stdout + stderr
      progress/<key>.json      live progress written by the worker
      report/                  report.md, report.html, *.png
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consistency_core.stage_wire import StageResult
from consistency_core.status import CampaignStatus, StageRecord

RUN_FILE = "run.json"
STATUS_FILE = "status.json"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def status_path(self) -> Path:
        return self.root / STATUS_FILE

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def _attempt_name(self, record: StageRecord) -> str:
        return f"{record.key}-a{record.attempt}"

    def config_path(self, record: StageRecord) -> Path:
        return self.root / "configs" / f"{self._attempt_name(record)}.json"

    def result_path(self, record: StageRecord) -> Path:
        return self.root / "results" / f"{self._attempt_name(record)}.json"

    def log_path(self, record: StageRecord) -> Path:
        return self.root / "logs" / f"{self._attempt_name(record)}.log"

    def progress_path(self, record: StageRecord) -> Path:
        return self.root / "progress" / f"{record.key}.json"

    # --- run identity -------------------------------------------------------------------------

    def read_run(self) -> dict[str, Any] | None:
        path = self.root / RUN_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def write_run(self, info: dict[str, Any]) -> None:
        atomic_write(self.root / RUN_FILE, json.dumps(info, indent=2) + "\n")

    # --- status -------------------------------------------------------------------------------

    def load_status(self) -> CampaignStatus | None:
        if not self.status_path.is_file():
            return None
        try:
            return CampaignStatus.model_validate_json(self.status_path.read_text())
        except ValueError as exc:
            raise ValueError(f"{self.status_path}: unreadable status ({exc}); delete the run directory "
                             "or pass --fresh to start over") from None

    def save_status(self, status: CampaignStatus) -> None:
        atomic_write(self.status_path, json.dumps(status.to_wire(), indent=2) + "\n")

    def finished_result(self, record: StageRecord) -> StageResult | None:
        """A result the worker wrote for this attempt before the runner was stopped, if any."""
        path = self.result_path(record)
        if not path.is_file():
            return None
        try:
            result = StageResult.model_validate_json(path.read_text())
        except ValueError:
            return None
        return result if result.key == record.key else None

    def progress(self, record: StageRecord) -> dict[str, Any] | None:
        try:
            return json.loads(self.progress_path(record).read_text())
        except (OSError, ValueError):
            return None
