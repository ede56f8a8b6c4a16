#!/usr/bin/env bash
# Device check: every GPU path of the worker on one GPU, in about 8 minutes, with nothing downloaded.
# Runs the steps of bench/gpu_check.py one process each (a crash or hang loses one step, and GPU memory is
# freed between steps), each under its own timeout, then merges their figures into one JSON file.
#
#   bench/gpu_check.sh [--cpu] [--out FILE] [--work DIR]
#
# --cpu   small sizes, CUDA-only parts print "skipped: no CUDA" (what the test suite runs; ~1 minute).
# --out   merged figures (default: $OUT/gpu_check.json when $OUT is set, else gpu_check.json in --work).
# Env:    PYTHON (default .venv/bin/python, else python3); GPU_CHECK_WHEELS=DIR installs the wheels in DIR
#         (e.g. pydantic, vllm, bitsandbytes when the machine lacks them) into a private target first;
#         GPU_CHECK_TIMEOUT_SCALE multiplies every step's timeout (e.g. 2 on a slower GPU).
# Exit:   0 when no step failed (skipped steps are fine), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

cpu=""
out=""
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu|--dry-run) cpu="--cpu" ;;
    --out) out="$2"; shift ;;
    --work) work="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD/core:$PWD/worker:$PWD/operator:$PWD/local${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  site="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$GPU_CHECK_WHEELS"/*.whl \
    || { echo "could not install the wheels in $GPU_CHECK_WHEELS" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$site"
fi
if [ -z "$work" ]; then
  work="$(mktemp -d -t gpu-check.XXXXXX)"
fi
mkdir -p "$work"
if [ -z "$out" ]; then
  out="${OUT:+$OUT/gpu_check.json}"
  out="${out:-$work/gpu_check.json}"
fi

# Seconds per step on one H200; together 480 s (8 minutes). The CPU mode's small sizes fit the same limits.
declare -A LIMIT=([env]=15 [model]=30 [qlora]=90 [vllm]=160 [stages]=110 [expansion]=35 [sandbox]=40)
scale="${GPU_CHECK_TIMEOUT_SCALE:-1}"

# The sandbox step runs pinned to 4 CPUs, as in a 4-CPU pod: the pool must size itself from the affinity
# mask, not the node's core count, or programs queue behind each other and time out falsely.
ncpu="$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')"
pin=()
if command -v taskset >/dev/null; then
  last=$(( (ncpu < 4 ? ncpu : 4) - 1 ))
  first_cpu="$("$PY" -c 'import os; print(min(os.sched_getaffinity(0)))')"
  pin=(taskset -c "$first_cpu-$(( first_cpu + last ))")
  [ "$ncpu" -lt 4 ] && echo "note: only $ncpu CPUs visible; the sandbox step is pinned to ${pin[*]:2}"
else
  echo "note: taskset not found; the sandbox step runs on all $ncpu CPUs"
fi

timed_out=()
failed=0
for step in env model qlora vllm stages expansion sandbox; do
  limit="$("$PY" -c "print(max(1, round(${LIMIT[$step]} * $scale)))")"
  prefix=()
  [ "$step" = sandbox ] && prefix=("${pin[@]}")
  timeout --kill-after=10 "$limit" "${prefix[@]}" "$PY" bench/gpu_check.py "$step" --work "$work" $cpu
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "== $step: timed out after $limit s"
    timed_out+=(--timed-out "$step=$limit")
  elif [ "$rc" -ne 0 ]; then
    failed=1
  fi
done

"$PY" bench/gpu_check.py report --work "$work" --out "$out" "${timed_out[@]}"
rc=$?
[ "$failed" -ne 0 ] && rc=1
exit "$rc"
