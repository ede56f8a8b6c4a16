"""No source file outside tests/ and bench/ holds more than MAX_LINES lines: a file that long holds more
than one job (issue 23). A new file over the limit fails here; split it by job instead of raising the limit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 450
# Top-level folders whose files may be longer: tests and benchmarks read best as one scenario per file.
EXEMPT_TOP = {"tests", "bench"}
# Never project sources: the virtual environment, caches and build output (.gitignore's list).
SKIPPED_DIRS = {"__pycache__", "runs", "build", "dist"}

def source_files() -> Iterator[Path]:
    for root, dirs, files in os.walk(REPO):
        here = Path(root)
        # Pruned in place, so the walk never enters .venv, .git or caches.
        dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d in SKIPPED_DIRS or d.endswith(".egg-info")
                                                 or (here == REPO and d in EXEMPT_TOP)))
        yield from (here / f for f in sorted(files) if f.endswith(".py"))


def line_count(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def test_the_walk_sees_every_package() -> None:
    seen = {p.relative_to(REPO).parts[0] for p in source_files()}
    assert {"core", "report", "worker", "operator", "local", "testkit"} <= seen, seen


def test_no_source_file_outside_tests_and_bench_is_over_the_limit() -> None:
    over = {p.relative_to(REPO).as_posix(): n for p in source_files() if (n := line_count(p)) > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines (split by job): {over}"

