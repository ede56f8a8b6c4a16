"""The layer contracts of pyproject.toml's [tool.importlinter] (core at the bottom, worker and operator
independent, the worker never importing local, the worker's stages on top of its machinery), checked by
import-linter's `lint-imports` so that `make test` fails when an import runs back up a layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    # The console script beside this interpreter: the venv's, whatever PATH says.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
