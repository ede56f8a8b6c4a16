"""What pinning the demo's CPU kernels costs: the demo model's first training steps, built once with the
CPU's own kernels and once pinned (kernels.py: AVX2 ATen/MKL/oneDNN, 2 threads), in fresh processes one
after the other, on the demo's own pretrain split. Prints the CPU and wall seconds of each whole build
(data encoding and tokenizer included, the same work in both), their ratio, and whether the two builds
reached the same loss (on a CPU with AVX-512 they need not: that is why the demo pins).

    python bench/demo_kernels.py [--steps 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("core", "report", "worker", "operator", "local"):
    sys.path.insert(0, str(REPO / _sub))

CHILD = """
import json, sys, time, resource
from pathlib import Path
from consistency_local.demo_data import DEFAULT_SIZES, write_splits
from consistency_local.demo_model import DemoModelConfig, build_demo_model
steps, tmp = int(sys.argv[1]), Path(sys.argv[2])
data = tmp / "data"
if not (data / "pretrain.jsonl").is_file():
    write_splits(data, seed=0, sizes=DEFAULT_SIZES)
import torch
cpu0, wall0 = time.process_time(), time.perf_counter()
info = build_demo_model(data / "pretrain.jsonl", tmp / "model", DemoModelConfig(steps=steps, warmup_steps=10),
                        log=lambda _: None)
print(json.dumps({"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0,
                  "loss": info["final_loss"], "capability": torch.backends.cpu.get_cpu_capability(),
                  "threads": torch.get_num_threads()}))
"""


def build(steps: int, tmp: Path, pinned: bool) -> dict:
    from consistency_local.kernels import ENV_SWITCH, pin_kernels

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("core", "report", "worker", "local"))}
    env.pop(ENV_SWITCH, None)
    if pinned:
        pin_kernels(env)
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(tmp)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, seconds: what make test runs so that a benchmark that no longer runs fails")
    args = parser.parse_args()
    steps = 5 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        native = build(steps, Path(tmp), pinned=False)
        pinned = build(steps, Path(tmp), pinned=True)
    for name, r in (("native", native), ("pinned", pinned)):
        print(f"{name:>6}: {r['capability']}, {r['threads']} threads: build of {steps} steps {r['cpu']:.1f} s CPU, "
              f"{r['wall']:.1f} s wall, loss {r['loss']:.6f}")
    print(f"pinned / native: CPU {pinned['cpu'] / native['cpu']:.2f}x, wall {pinned['wall'] / native['wall']:.2f}x; "
          f"same loss: {native['loss'] == pinned['loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
