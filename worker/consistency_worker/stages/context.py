"""What a stage program gets besides its config: the store, its shard, a scratch directory, a
progress reporter, a logger and the manifest being collected."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consistency_core.stages import MANIFEST, RESULT, StageConfig, join_uri

from consistency_worker.manifest import ManifestBuilder
from consistency_worker.store import Store, open_store

ENV_PROGRESS_FILE = "CONSISTENCY_PROGRESS_FILE"
ENV_SCRATCH_DIR = "CONSISTENCY_SCRATCH_DIR"
ENV_JOB_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in Indexed Jobs
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


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` -> (i, n) with 0 <= i < n."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def resolve_shard(config: StageConfig, cli_shard: str | None = None) -> tuple[int, int]:
    """Shard from --shard, else JOB_COMPLETION_INDEX with the config's shard count, else 0/1."""
    if cli_shard:
        return parse_shard(cli_shard)
    count = int(getattr(config.params, "shards", 1) or 1)
    raw = os.environ.get(ENV_JOB_INDEX)
    if raw is None or count == 1:
        # Without an Indexed Job (e.g. the local runner without --shard) one process does all shards.
        return 0, 1
    try:
        index = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_JOB_INDEX}={raw!r} is not an integer") from None
    if not 0 <= index < count:
        raise ValueError(f"{ENV_JOB_INDEX}={raw} is outside params.shards={count}")
    return index, count


def shard_suffix(index: int, count: int) -> str:
    return f"-{index:05d}-of-{count:05d}"


@dataclass
class StageContext:
    store: Store
    config: StageConfig
    shard_index: int = 0
    shard_count: int = 1
    scratch_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="consistency-")))
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("consistency_worker"))
    progress_file: Path | None = None
    manifest: ManifestBuilder = field(default_factory=ManifestBuilder)

    @classmethod
    def create(
        cls,
        config: StageConfig,
        *,
        store: Store | None = None,
        shard: str | None = None,
        scratch_dir: Path | None = None,
        progress_file: Path | None = None,
    ) -> StageContext:
        index, count = resolve_shard(config, shard)
        if scratch_dir is None:
            base = os.environ.get(ENV_SCRATCH_DIR) or None
            scratch_dir = Path(tempfile.mkdtemp(prefix=f"consistency-{config.key}-", dir=base))
        if progress_file is None and os.environ.get(ENV_PROGRESS_FILE):
            progress_file = Path(os.environ[ENV_PROGRESS_FILE])
        return cls(
            store=store or open_store(config.store),
            config=config,
            shard_index=index,
            shard_count=count,
            scratch_dir=scratch_dir,
            logger=logging.getLogger(f"consistency_worker.{config.stage.value}"),
            progress_file=progress_file,
            manifest=ManifestBuilder(config=config),
        )

    @property
    def sharded(self) -> bool:
        return self.shard_count > 1

    def output(self, *parts: str) -> str:
        """URI under the stage's output directory."""
        return join_uri(self.config.output_uri, *parts)

    def _per_shard(self, name: str) -> str:
        if not self.sharded:
            return name
        stem, dot, ext = name.rpartition(".")
        return f"{stem}{shard_suffix(self.shard_index, self.shard_count)}{dot}{ext}"

    @property
    def result_uri(self) -> str:
        """result.json, or result-{i}-of-{n}.json for one shard of a sharded stage."""
        return self.output(self._per_shard(RESULT))

    @property
    def manifest_uri(self) -> str:
        return self.output(self._per_shard(MANIFEST))

    def progress(self, total: int | None, desc: str, **kwargs: Any) -> Progress:
        return Progress(total, desc, logger=self.logger, progress_file=self.progress_file,
                        stage=self.config.stage.value, **kwargs)
