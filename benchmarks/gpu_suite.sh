#!/usr/bin/env bash
# The one GPU command: GPU correctness, tile sweep, benchmarks; results under
# ${OUT:-benchmarks/results/gpu} with a summary table printed LAST. Each step runs under its own
# `timeout` and a failing or slow step is recorded in steps.csv, not fatal. Works from a plain
# checkout (pip install --no-deps -e . or, without pip access, a PYTHONPATH shim) on a machine
# without deepspeed/dali/av/transformers/flash-attn.
#
#   bash benchmarks/gpu_suite.sh --quick     # one 15-minute lease: <= 7 min wall on an H100
#   bash benchmarks/gpu_suite.sh             # everything (~13 min; SUITE_* below split it)
#   bash benchmarks/gpu_suite.sh --dry-run   # CPU, tiny shapes, Triton interpreter (CI test)
#
# --quick, by construction: setup <= 20 s, then correctness 90 s, tile sweep 70 s, attention
# 70 s, training step 150 s: 400 s of timeouts in all (< 7 min). Each script also gets a
# budget (BENCH_BUDGET_S) under its timeout, so it stops starting new cases and writes results.
# Full mode: SUITE_TESTS=0 skips the GPU pytest tests, SUITE_BENCHES="bench_train_step" runs
# only the named benchmarks.
set -u
MODE=full
for arg in "$@"; do
  case "$arg" in
    --quick) MODE=quick ;;
    --dry-run) MODE=dry ;;
    *) echo "gpu_suite.sh: unknown argument $arg (expected --quick or --dry-run)" >&2; exit 2 ;;
  esac
done
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/benchmarks/results/gpu}"
mkdir -p "$OUT"
TEST_TIMEOUT="${SUITE_TEST_TIMEOUT_S:-200}"
BENCH_TIMEOUT="${SUITE_BENCH_TIMEOUT_S:-300}"
SUMMARY="$OUT/summary.txt"
export FASTLAM_COMMIT="${FASTLAM_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"

# fastlam.kernels lives in kernels/ (setup.py package_dir): make `import fastlam.kernels` work.
if ! python -c "import fastlam.kernels.registry" 2>/dev/null; then
  if ! timeout 20 pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip_install.log" 2>&1; then
    SHIM="$(mktemp -d)"
    cp -r "$REPO/fastlam" "$SHIM/fastlam"
    rm -rf "$SHIM/fastlam/kernels"
    ln -s "$REPO/kernels" "$SHIM/fastlam/kernels"
    export PYTHONPATH="$SHIM:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    echo "fastlam imported through a PYTHONPATH shim at $SHIM" >>"$OUT/pip_install.log"
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "fastlam GPU suite"
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $FASTLAM_COMMIT"
  python - <<'PY'
import torch
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")
print("torch:", torch.__version__)
try:
    import triton
    print("triton:", triton.__version__)
except Exception as exc:
    print("triton: missing", exc)
PY
} | tee "$SUMMARY"


# ---- --quick / --dry-run: fixed steps, each under its own timeout ---------------------------
echo "step,status,seconds,budget_s,log" >"$OUT/steps.csv"
run_step() {  # name budget_s command...: run, record, never abort the suite
  local name="$1" budget="$2"; shift 2
  local t0=$(date +%s) rc status
  case "$MODE" in
    # The CPU dry run proves every step starts and writes its files; its speed depends on the
    # machine's load, so no step is cut off by a clock there (budgets bound the GPU lease only).
    dry) BENCH_BUDGET_S=$(( budget * 3 / 4 )) "$@" >"$OUT/$name.log" 2>&1 ;;
    *) BENCH_BUDGET_S=$(( budget * 3 / 4 )) timeout "$budget" "$@" >"$OUT/$name.log" 2>&1 ;;
  esac
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout after ${budget} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "$name,$status,$(( $(date +%s) - t0 )),$budget,$name.log" >>"$OUT/steps.csv"
  echo "$name: $status ($(( $(date +%s) - t0 )) s)"
}
skip_step() { echo "$1,skipped: $2,0,0," >>"$OUT/steps.csv"; echo "$1: skipped: $2"; }

if [ "$MODE" = quick ]; then
  run_step correctness 90 python benchmarks/gpu_correctness.py --out "$OUT" --budget-s 65
  if [ -f benchmarks/tune_tiles.py ]; then
    run_step tune_tiles 70 python benchmarks/tune_tiles.py --out "$OUT" --quick
  else
    skip_step tune_tiles "not present"
  fi
  run_step attention 70 python benchmarks/bench_attention.py --out "$OUT" --quick --budget-s 45
  # Paper size from cached encoder states at a fixed batch (no batch search: no time for it);
  # compiled backends last, each started only with 40 s of budget left.
  run_step train_step 150 python benchmarks/bench_train_step.py --out "$OUT" --sizes paper --modes states \
    --batch 8 --steps 3 --warmup 2 --budget-s 125 --compile-reserve-s 40 --no-plot \
    --backends fastlam_triton reference fastlam_compiled reference_compiled
  python benchmarks/suite_summary.py "$OUT"
  exit 0
fi
if [ "$MODE" = dry ]; then
  # What --quick runs, at tiny shapes on CPU: every step starts and writes its files.
  run_step correctness "${SUITE_DRY_CORRECTNESS_S:-300}" python benchmarks/gpu_correctness.py --out "$OUT" \
    --dry-run --budget-s "${SUITE_DRY_CORRECTNESS_BUDGET_S:-20}"
  if [ -f benchmarks/tune_tiles.py ]; then
    run_step tune_tiles 120 python benchmarks/tune_tiles.py --out "$OUT" --quick --dry-run
  else
    skip_step tune_tiles "not present"
  fi
  run_step attention 300 python benchmarks/bench_attention.py --out "$OUT" --quick --dry-run
  run_step train_step 300 python benchmarks/bench_train_step.py --out "$OUT" --sizes tiny --modes states \
    --steps 1 --warmup 0 --backends fastlam_triton reference --no-plot
  python benchmarks/suite_summary.py "$OUT"
  exit 0
fi

# ---- full mode ------------------------------------------------------------------------------
start=$(date +%s)
if [ "${SUITE_TESTS:-1}" = "0" ]; then
  echo "gpu tests: skipped (SUITE_TESTS=0)" | tee -a "$SUMMARY"
else
# A test module that cannot import here (a missing optional dependency) must not stop the rest.
timeout "$TEST_TIMEOUT" python -m pytest tests -m gpu -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors \
  --junitxml="$OUT/gpu_tests.xml" >"$OUT/gpu_tests.txt" 2>&1
rc=$?
echo "gpu tests: exit $rc ($(( $(date +%s) - start )) s): $(tail -n 1 "$OUT/gpu_tests.txt")" | tee -a "$SUMMARY"
fi

if [ "${SUITE_TESTS:-1}" != "0" ]; then
  run_step correctness 200 python benchmarks/gpu_correctness.py --out "$OUT" --budget-s 170 | tee -a "$SUMMARY"
fi
for bench in benchmarks/bench_*.py; do
  name="$(basename "$bench" .py)"
  if [ -n "${SUITE_BENCHES:-}" ] && [[ " $SUITE_BENCHES " != *" $name "* ]]; then continue; fi
  start=$(date +%s)
  # Benchmarks stop starting new shapes this long before their timeout, so they write results.
  BENCH_BUDGET_S=$(( BENCH_TIMEOUT - 60 )) timeout "$BENCH_TIMEOUT" python "$bench" --out "$OUT" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc ($(( $(date +%s) - start )) s)" | tee -a "$SUMMARY"
done

echo "files:" | tee -a "$SUMMARY"
ls -1 "$OUT" | sed 's/^/  /' | tee -a "$SUMMARY"
python benchmarks/suite_summary.py "$OUT" 2>/dev/null || true
