#!/usr/bin/env bash
# GPU check: runs exactly the GPU tests (QLoRA with bitsandbytes NF4, vLLM generation with n samples, seeds
# and a LoRA request, the generate stage picking vLLM) and prints the figures they measure.
# Installs nothing: run it in an environment that already has the `gpu` extra (the worker image, or
# `pip install -e .[worker,gpu,test]`). Usage: bench/gpu_check.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

"$PY" - <<'EOF'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for name in ("vllm", "bitsandbytes", "peft", "transformers"):
    spec = importlib.util.find_spec(name)
    version = "missing"
    if spec is not None:
        from importlib.metadata import version as v
        version = v(name)
    print(f"{name:>13}: {version}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible: the GPU tests would all be skipped")
EOF

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
"$PY" -m pytest tests/worker/test_gpu.py -m gpu -v -s -rs -p no:cacheprovider "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo
echo "== figures"
grep '^FIGURE ' "$log" | sed 's/^FIGURE /  /' || echo "  (none: tests skipped or failed before measuring)"
if grep -q ' SKIPPED' "$log"; then
  echo "warning: some GPU tests were skipped (see the reasons above)"
fi
exit "$status"
