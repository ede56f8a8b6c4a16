"""Run one stage as a local process: `python -m consistency_worker.cli <stage> --config <file>`.

The same program a cluster Job runs; here its compact result comes back through --result-file
instead of the termination message. While it runs, a callback gets its progress (the worker
refreshes a small JSON file about every second) so the CLI can draw a live status line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consistency_core.stage_wire import EXIT_PERMANENT, StageConfig, StageResult
from consistency_core.status import StageRecord

from consistency_local.rundir import RunDir, atomic_write

POLL_S = 0.5
TERM_GRACE_S = 20.0


@dataclass(frozen=True)
class Tick:
    record: StageRecord
    elapsed: float
    progress: dict[str, Any] | None


def worker_command(config: StageConfig, config_path: Path, result_path: Path) -> list[str]:
    # The module, not the `consistency-worker` script: works from a venv that is not activated.
    return [sys.executable, "-m", "consistency_worker.cli", config.stage.value,
            "--config", str(config_path), "--result-file", str(result_path)]


def run_stage_process(
    run_dir: RunDir,
    record: StageRecord,
    config: StageConfig,
    *,
    on_tick: Callable[[Tick], None] | None = None,
    env: dict[str, str] | None = None,
) -> StageResult:
    """Run the stage to completion and return its result. Ctrl-C stops the worker gracefully
    (SIGTERM: it saves what it has) and re-raises, leaving the stage to resume on the next run."""
    config_path = run_dir.config_path(record)
    result_path = run_dir.result_path(record)
    log_path = run_dir.log_path(record)
    atomic_write(config_path, config.to_json())
    result_path.unlink(missing_ok=True)
    progress_path = run_dir.progress_path(record)
    progress_path.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {}), "CONSISTENCY_PROGRESS_FILE": str(progress_path),
                 "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(worker_command(config, config_path, result_path))}\n".encode())
        log.flush()
        # Own session: a terminal's Ctrl-C reaches only the runner, which stops the worker gracefully.
        proc = subprocess.Popen(worker_command(config, config_path, result_path), stdout=log,
                                stderr=subprocess.STDOUT, env=child_env, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            while proc.poll() is None:
                if on_tick is not None:
                    on_tick(Tick(record, time.monotonic() - started, run_dir.progress(record)))
                time.sleep(POLL_S)
        except BaseException:
            _stop(proc)
            raise
    return _result_of(record, proc.returncode, result_path, log_path, time.monotonic() - started)


def _die_with_parent() -> None:
    """Linux: SIGTERM the worker when the runner dies (even by SIGKILL), so a resumed run never
    races an orphaned worker writing the same outputs."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group, then SIGKILL it if it does not exit in time."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TERM_GRACE_S)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _result_of(record: StageRecord, code: int, result_path: Path, log_path: Path, seconds: float) -> StageResult:
    if result_path.is_file():
        try:
            result = StageResult.model_validate_json(result_path.read_text())
        except ValueError as exc:
            return StageResult(key=record.key, ok=False, retryable=True, seconds=seconds,
                               message=f"worker wrote an unreadable result ({exc}); see {log_path}")
        # A config error can be reported before the worker knows the key; the record does.
        return result.model_copy(update={"key": record.key, "seconds": result.seconds or seconds})
    why = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    # No result: the process died (OOM killer, crash). Like a lost pod, that is worth another try,
    # unless the worker itself said the failure is permanent.
    return StageResult(key=record.key, ok=False, retryable=code != EXIT_PERMANENT,
                       seconds=seconds, message=f"worker {why} without a result; see {log_path}")
