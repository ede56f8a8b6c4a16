"""Progress of a long loop: a tqdm bar on a TTY, periodic log lines in pods and CI, and a small JSON file
the local runner's live status line reads."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

LOG_INTERVAL_S = 10.0
PROGRESS_FILE_INTERVAL_S = 1.0


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Counts work done. A TTY gets a tqdm bar; otherwise (pods, CI) a log line every ~10 s with
    done/total, rate and ETA. With a progress file, its JSON is refreshed ~every second for the local
    runner's live status line."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        logger: logging.Logger,
        progress_file: Path | None = None,
        stage: str = "",
        log_interval: float = LOG_INTERVAL_S,
        use_tty: bool | None = None,
    ):
        self.total = total
        self.desc = desc
        self.done = 0
        self.stage = stage
        self._logger = logger
        self._file = progress_file
        self._interval = log_interval
        self._start = time.monotonic()
        self._last_log = self._start
        self._last_file = 0.0
        self._bar: Any = None
        if use_tty is None:
            use_tty = sys.stderr.isatty()
        if use_tty:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self._bar = None
        self._write_file(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)

    def line(self) -> str:
        if self.total:
            text = f"{self.desc}: {self.done}/{self.total} ({100.0 * self.done / self.total:.1f}%)"
        else:
            text = f"{self.desc}: {self.done}"
        text += f" {self.rate:.2f}/s"
        eta = self.eta_seconds
        if eta is not None:
            text += f" ETA {_fmt_duration(eta)}"
        return text

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self._bar is None and now - self._last_log >= self._interval:
            self._last_log = now
            self._logger.info("%s", self.line())
        self._write_file()

    def _write_file(self, *, force: bool = False) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if not force and now - self._last_file < PROGRESS_FILE_INTERVAL_S:
            return
        self._last_file = now
        state = {
            "stage": self.stage,
            "desc": self.desc,
            "done": self.done,
            "total": self.total,
            "rate": round(self.rate, 4),
            "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "updatedAt": time.time(),
        }
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_name(f".{self._file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self._file)
        except OSError as exc:  # progress is best effort; never fail a stage over it
            self._logger.debug("cannot write progress file %s: %s", self._file, exc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            self._logger.info("%s (done)", self.line())
        self._write_file(force=True)
