"""`make demo`: build the demo data and model (cached), write the demo campaign, run it, report.

    python -m consistency_local.demo [--run-dir runs/demo] [--fresh]
    python -m consistency_local.demo --write-example examples/demo-campaign.yaml

The campaign is an ordinary ConsistencyTraining document (the template ships in this package);
the demo only fills in where its model, data and artifact store live.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from pathlib import Path

from consistency_worker.engines.answering import ENV_BATCH_ROWS

from consistency_local.campaign_file import load_campaign
from consistency_local.cli import run_and_report
from consistency_local.demo_data import DEFAULT_SIZES, SPLIT_VERSION, write_splits
from consistency_local.demo_model import DemoModelConfig, ensure_demo_model
from consistency_local.kernels import describe, kernel_mode, pin_kernels
from consistency_local.rundir import RunDir, atomic_write

DEFAULT_CACHE = Path(os.environ.get("CONSISTENCY_DEMO_CACHE", ".cache"))
DEFAULT_RUN_DIR = Path("runs/demo")
DATA_SEED = 0
# The example file in the repository: paths relative to examples/, as `make demo` lays them out.
EXAMPLE_PATHS = {"MODEL": "../.cache/demo/model", "DATA": "../.cache/demo/data", "STORE": "../runs/demo/artifacts"}


def render_template(file_name: str, paths: dict[str, str]) -> str:
    """A campaign template shipped in this package with its ${KEY} placeholders filled from `paths`."""
    text = resources.files("consistency_local").joinpath(file_name).read_text(encoding="utf-8")
    for key, value in paths.items():
        text = text.replace("${" + key + "}", value)
    if "${" in text:
        raise ValueError(f"campaign template {file_name} has an unfilled ${{...}} placeholder")
    return text


def render(paths: dict[str, str]) -> str:
    return render_template("demo-campaign.yaml", paths)


def ensure_data(cache: Path, seed: int = DATA_SEED) -> Path:
    """The demo splits; regenerated only when missing (generation is deterministic)."""
    out = cache / "demo" / f"data-v{SPLIT_VERSION}-seed{seed}"
    if not all((out / f"{name}.jsonl").is_file() for name in DEFAULT_SIZES):
        write_splits(out, seed=seed, sizes=DEFAULT_SIZES)
    return out


def _link(link: Path, target: Path) -> None:
    """Stable names (.cache/demo/model, .cache/demo/data) for the example campaign file."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


def prepare(cache: Path, log=print) -> tuple[Path, Path]:
    data = ensure_data(cache)
    model = ensure_demo_model(data / "pretrain.jsonl", DemoModelConfig(kernels=kernel_mode()),
                              cache_root=cache / "demo-model", log=log)
    _link(cache / "demo" / "data", data)
    _link(cache / "demo" / "model", model)
    return data, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--fresh", action="store_true", help="discard an earlier demo run (the model stays cached)")
    parser.add_argument("--write-example", type=Path, default=None,
                        help="write the example campaign file (relative paths) and exit")
    args = parser.parse_args(argv)
    if args.write_example:
        atomic_write(args.write_example, render(EXAMPLE_PATHS))
        return 0

    started = time.monotonic()
    pin_kernels()  # before torch loads: the same figures on any x86 CPU
    # The demo model is tiny: a forward pass costs little more for 64 sequences than for 16, so wider
    # batches cut generation time (stage processes inherit the variable; an explicit setting wins).
    os.environ.setdefault(ENV_BATCH_ROWS, "64")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"demo: {describe()}")
    data, model = prepare(args.cache_dir, log)
    run_dir = args.run_dir.resolve()
    campaign_path = run_dir / "campaign.yaml"
    atomic_write(campaign_path, render({"MODEL": str(model.resolve()), "DATA": str(data.resolve()),
                                        "STORE": str(run_dir / "artifacts")}))
    log(f"demo campaign: {campaign_path}")
    campaign = load_campaign(campaign_path)
    earlier = RunDir(run_dir).read_run()
    # A rebuilt model (or edited template) is a new campaign: start it over rather than refuse.
    fresh = args.fresh or (earlier is not None and earlier.get("digest") != campaign.digest)
    code = run_and_report(campaign, run_dir, fresh=fresh)
    log(f"demo: {time.monotonic() - started:.0f}s in all; `consistency status` lists the run, "
        f"`python -m consistency_local.demo --fresh` runs it again")
    return code


if __name__ == "__main__":
    sys.exit(main())
