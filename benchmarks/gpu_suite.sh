#!/usr/bin/env bash
# The one GPU command: GPU correctness tests, then every benchmarks/bench_*.py, results under
# ${OUT:-benchmarks/results/gpu} with a summary. Fits a ~10 minute machine call: each step
# runs under its own timeout (SUITE_TEST_TIMEOUT_S, SUITE_BENCH_TIMEOUT_S) and a failing or
# slow step is recorded, not fatal. Works from a plain checkout (pip install --no-deps -e .
# or, without pip access, a PYTHONPATH shim) on a machine without deepspeed/dali/av/flash-attn.
#
#   bash benchmarks/gpu_suite.sh            # or: OUT=/some/dir bash benchmarks/gpu_suite.sh
#
# Budget: tests <= 200 s, each benchmark <= 300 s (bench_attention, bench_train_step: ~13 min
# with both). To split it over two machine calls: SUITE_TESTS=0 skips the tests and
# SUITE_BENCHES="bench_train_step" runs only the named benchmarks.
set -u
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
  if ! pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip_install.log" 2>&1; then
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
