"""What a stage program gets besides its config: the store, its shard, a scratch directory, a
progress reporter, a logger, the manifest being collected, and a reader for its problems file."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consistency_core.stage_wire import MANIFEST, RESULT, StageConfig, join_uri

from consistency_worker.data.problems import Problem, ProblemFileError, parse_problems
from consistency_worker.job.errors import PermanentStageError
from consistency_worker.runtime.progress import Progress
from consistency_worker.store.facade import Store, open_store
from consistency_worker.store.manifest import ManifestBuilder

ENV_PROGRESS_FILE = "CONSISTENCY_PROGRESS_FILE"
ENV_SCRATCH_DIR = "CONSISTENCY_SCRATCH_DIR"
ENV_JOB_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in Indexed Jobs
ENV_MODEL_CACHE = "CONSISTENCY_MODEL_CACHE"  # share downloaded models/adapters between stages of a pod


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

    @property
    def cache_dir(self) -> Path:
        """Where models and adapters are downloaded: shared by a pod's stages when the env names one."""
        return Path(os.environ.get(ENV_MODEL_CACHE) or self.scratch_dir)

    def read_problems(self, uri: str, name: str = "problems") -> list[Problem]:
        """The problems file at `uri`, read once: recorded as input `name` of the manifest, then parsed."""
        data = self.store.read_bytes(uri)
        self.manifest.add_input(name, uri, data=data)
        try:
            return parse_problems(data.decode("utf-8"), uri)
        except ProblemFileError as exc:
            raise PermanentStageError(str(exc)) from None

    def progress(self, total: int | None, desc: str, **kwargs: Any) -> Progress:
        return Progress(total, desc, logger=self.logger, progress_file=self.progress_file,
                        stage=self.config.stage.value, **kwargs)
