#!/usr/bin/env bash
# The one GPU command: set-up, a parallel compile warm-up, GPU correctness, benchmarks, the tile
# sweep. Starts from a plain copy of the working tree (no .git, no network, any pip; see
# benchmarks/suite_setup.sh) on a machine without deepspeed/dali/av/transformers/flash-attn.
#
#   bash benchmarks/gpu_suite.sh --quick [--commit SHA]   # one 15-minute lease: <= 7 min wall on an H100
#   bash benchmarks/gpu_suite.sh                          # everything (SUITE_* below split it)
#   bash benchmarks/gpu_suite.sh --dry-run                # CPU, tiny shapes, Triton interpreter (CI test)
#   bash benchmarks/gpu_suite.sh --setup-only             # make fastlam.kernels importable, say how, stop
#
# What comes back: ${OUT:-benchmarks/results/gpu} holds three files, whatever happens (a device
# call returns at most 8 files, 2 folders deep): summary.txt (header, one line per step, the
# summary table last, as also printed last), steps.csv (step, status, seconds, budget, log) and
# results.tar.gz (results/: every step's CSV / JSON, tuned tiles, suite.json, logs/); and, once
# the tuning step has written one, the tuned tile table as kernels_tuned_<device>.json (to be
# committed as kernels/tuned/<device>.json). Steps write their rows as they go into a scratch
# folder (SUITE_WORK_DIR, else a new temporary one) that is re-archived after every step and on
# SIGTERM / SIGINT, so a step cut off keeps what it wrote.
#
# The commit under test: --commit SHA, else $FASTLAM_COMMIT, else `git rev-parse HEAD` where the
# tree has a .git, else "unknown" (said so in the summary).
#
# Budgets: one shared clock. Step k may run until the suite's start + setup + the budgets of
# steps 1..k, so time a step leaves unused goes to the next ones, and no step starts with less
# than 10 s. --quick: setup <= 40 s, then warm-up 70 s, correctness (first part) 45 s, attention
# 60 s, training step 125 s, correctness (rest) 30 s, tile sweep 40 s: 410 s in all (< 7 min).
# Each script also gets three quarters of its time as BENCH_BUDGET_S (or @BUDGET@ on its command
# line), so it stops starting new cases and writes results before its `timeout`.
# Full mode: SUITE_TESTS=0 skips the GPU pytest tests, SUITE_BENCHES="bench_train_step" runs only
# the named benchmarks. Any mode: SUITE_STEPS="correctness attention" runs only the named steps.
# The dry run cuts no step by the clock (its speed is the CI machine's load), unless asked to.
set -u
MODE=full
SETUP_ONLY=0
COMMIT="${FASTLAM_COMMIT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --dry-run) MODE=dry ;;
    --setup-only) SETUP_ONLY=1 ;;
    --commit) COMMIT="${2:-}"; [ -n "$COMMIT" ] || { echo "gpu_suite.sh: --commit needs a SHA" >&2; exit 2; }; shift ;;
    --commit=*) COMMIT="${1#--commit=}" ;;
    *) echo "gpu_suite.sh: unknown argument $1 (expected --quick, --dry-run, --setup-only, --commit SHA)" >&2
       exit 2 ;;
  esac
  shift
done
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT="${OUT:-$REPO/benchmarks/results/gpu}"
mkdir -p "$OUT"
WORK="${SUITE_WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastlam-suite.XXXXXX")}"
RESULTS="$WORK/results"
LOGS="$RESULTS/logs"
mkdir -p "$LOGS"
SUMMARY="$OUT/summary.txt"
STEPS="$RESULTS/steps.csv"
SETUP_LOG="$LOGS/setup.log"
rm -f "$OUT/summary.txt" "$OUT/steps.csv" "$OUT/results.tar.gz" "$OUT"/kernels_tuned_*.json
echo "step,status,seconds,budget_s,log" >"$STEPS"

if [ -n "$COMMIT" ]; then
  COMMIT_NOTE=""
elif [ -e "$REPO/.git" ] && COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null)"; then
  COMMIT_NOTE=" (git rev-parse HEAD; uncommitted changes are not in it)"
else
  COMMIT=unknown
  COMMIT_NOTE=" (not given: no --commit, no FASTLAM_COMMIT, and this copy of the tree has no .git)"
fi
export FASTLAM_COMMIT="$COMMIT"

# Hook of the device-side tuning (issue 25 part 3): each tile table the tuning step wrote
# (results/tuned/<device>.json, also in the archive) as a plain file of $OUT named for where the
# next run reads it: commit $OUT/kernels_tuned_<device>.json as kernels/tuned/<device>.json.
# At most MAX_TUNED_FILES, so $OUT keeps within the 8 files a device call returns.
MAX_TUNED_FILES=5
export_tuned_tables() {
  local f name n=0
  for f in "$RESULTS"/tuned/*.json; do
    [ -f "$f" ] && [ "$n" -lt "$MAX_TUNED_FILES" ] || continue
    name="kernels_tuned_$(basename "$f" | tr -c 'A-Za-z0-9._\n-' '_')"
    cp "$f" "$OUT/$name.partial" && mv -f "$OUT/$name.partial" "$OUT/$name" && n=$(( n + 1 ))
  done
}
archive() {  # $OUT/steps.csv, results.tar.gz and tuned tables from what is on disk now; never half a file
  cp "$STEPS" "$OUT/steps.csv.partial" && mv -f "$OUT/steps.csv.partial" "$OUT/steps.csv"
  # A file that changed while tar read it (a step appending a row) fails this round: the last
  # whole archive stays, and no .partial is left to count among the files that come back.
  if tar -czf "$OUT/results.tar.gz.partial" -C "$WORK" results 2>/dev/null; then
    mv -f "$OUT/results.tar.gz.partial" "$OUT/results.tar.gz"
  else
    rm -f "$OUT/results.tar.gz.partial"
  fi
  export_tuned_tables
}
STEP_PID=""
ARCHIVE_EVERY_S="${SUITE_ARCHIVE_EVERY_S:-15}"  # while a step runs
STEP_NAME=""
STEP_T0=0
on_signal() {
  if [ -n "$STEP_PID" ]; then
    kill "$STEP_PID" 2>/dev/null
    echo "$STEP_NAME,interrupted: the suite got a signal,$(( $(date +%s) - STEP_T0 )),,logs/$STEP_NAME.log" >>"$STEPS"
  fi
  echo "suite interrupted by a signal: results so far are in $OUT" | tee -a "$SUMMARY"
  archive
  exit 143
}
trap on_signal TERM INT

{
  echo "fastlam GPU suite ($MODE)"
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $COMMIT$COMMIT_NOTE"
} | tee "$SUMMARY"

# ---- set-up: fastlam.kernels importable from this tree, or a loud stop ---------------------
SUITE_T0=$(date +%s)
case "$MODE" in
  quick) SETUP_S=40 ;;
  dry) SETUP_S=600 ;;  # CPU: a cold torch import on a loaded CI machine; nothing is cut here
  *) SETUP_S=120 ;;
esac
export SUITE_SETUP_S="${SUITE_SETUP_S:-$SETUP_S}"
# The dry run leaves the caller's environment as it is unless asked (CI runs it from a venv).
[ "$MODE" = dry ] && SUITE_INSTALL="${SUITE_INSTALL:-0}"
# shellcheck source=benchmarks/suite_setup.sh
if ! source "$REPO/benchmarks/suite_setup.sh"; then
  echo "SETUP FAILED: $SETUP_ERROR" | tee -a "$SUMMARY" >&2
  echo "setup,failed,$(( $(date +%s) - SUITE_T0 )),$SUITE_SETUP_S,logs/setup.log" >>"$STEPS"
  archive
  exit 3
fi
echo "setup:  fastlam imported: $SETUP_MODE ($(( $(date +%s) - SUITE_T0 )) s)" | tee -a "$SUMMARY"
cd "$WORK"  # not the repository: its fastlam/ has no kernels/ (suite_setup.sh)
"$PY" - <<'PY' 2>&1 | tee -a "$SUMMARY"
import torch
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")
print("torch: ", torch.__version__)
try:
    import triton
    print("triton:", triton.__version__)
except Exception as exc:
    print("triton: missing", exc)
PY
if [ "$SETUP_ONLY" = 1 ]; then
  echo "PYTHONPATH=$PYTHONPATH"
  echo "PYTHONSAFEPATH=$PYTHONSAFEPATH"
  archive
  exit 0
fi

# ---- steps -----------------------------------------------------------------------------------
PLANNED_S=$SUITE_SETUP_S
record_step() {  # name status seconds budget
  echo "$1,$2,$3,$4,logs/$1.log" >>"$STEPS"
  echo "$1: $2 ($3 s)" | tee -a "$SUMMARY"
  archive
}
skip_step() { echo "$1,skipped: $2,0,0," >>"$STEPS"; echo "$1: skipped: $2" | tee -a "$SUMMARY"; archive; }
run_step() {  # name budget_s command...: run, record, archive; never abort the suite
  local name="$1" budget="$2"; shift 2
  PLANNED_S=$(( PLANNED_S + budget ))
  if [ -n "${SUITE_STEPS:-}" ] && [[ " $SUITE_STEPS " != *" $name "* ]]; then
    skip_step "$name" "not in SUITE_STEPS"
    return
  fi
  local left=$budget t0 rc status a args=()
  if [ "$MODE" != dry ]; then
    left=$(( SUITE_T0 + PLANNED_S - $(date +%s) ))
    if [ "$left" -lt 10 ]; then
      skip_step "$name" "suite budget spent"
      return
    fi
  fi
  for a in "$@"; do args+=("${a//@BUDGET@/$(( left * 3 / 4 ))}"); done
  t0=$(date +%s)
  # In the background so that a signal to the suite reaches the trap at once (wait returns).
  if [ "$MODE" = dry ]; then
    BENCH_BUDGET_S=$(( left * 3 / 4 )) "${args[@]}" >"$LOGS/$name.log" 2>&1 &
  else
    BENCH_BUDGET_S=$(( left * 3 / 4 )) timeout -k 5 "$left" "${args[@]}" >"$LOGS/$name.log" 2>&1 &
  fi
  STEP_PID=$!
  STEP_NAME=$name
  STEP_T0=$t0
  echo "$STEP_PID" >"$WORK/step.pid"  # the running step, for whoever must cut it short
  # Re-archived while the step runs too: a suite killed outright (SIGKILL, where no trap runs,
  # as when a device call runs past its limit) still leaves the step's rows of a moment ago.
  local ticks=0
  while kill -0 "$STEP_PID" 2>/dev/null; do
    sleep 1 & wait $!  # `wait`, not a plain sleep: a signal reaches the trap at once
    ticks=$(( ticks + 1 ))
    [ $(( ticks % ARCHIVE_EVERY_S )) = 0 ] && archive
  done
  wait "$STEP_PID"  # its exit status, kept by the shell since it ended
  rc=$?
  STEP_PID=""
  local seconds=$(( $(date +%s) - t0 ))
  # `timeout` exits 124 when it stopped the step, 137 when that needed SIGKILL; a step killed
  # by anything else (137 too for SIGKILL) ends before its time is up.
  if [ "$rc" = 0 ]; then
    status=ok
  elif [ "$MODE" != dry ] && { [ "$rc" = 124 ] || { [ "$rc" = 137 ] && [ "$seconds" -ge "$left" ]; }; }; then
    status="timeout after ${left} s"
  elif [ "$rc" -gt 128 ]; then
    status="killed (signal $(( rc - 128 )): $(kill -l $(( rc - 128 )) 2>/dev/null))"
  else
    status="failed (exit $rc)"
  fi
  record_step "$name" "$status" "$seconds" "$left"
}
finish() {
  "$PY" -m benchmarks.suite_summary "$RESULTS" >"$LOGS/suite_summary.log" 2>&1 \
    || echo "suite_summary failed: $(tail -n 1 "$LOGS/suite_summary.log")" >>"$LOGS/suite_summary.log"
  cat "$LOGS/suite_summary.log" >>"$SUMMARY"
  archive
  cat "$LOGS/suite_summary.log"
  exit 0
}
CORRECTNESS=("$PY" -m benchmarks.gpu_correctness --out "$RESULTS")
TRAIN_STEP=("$PY" -m benchmarks.bench_train_step --out "$RESULTS" --no-plot)

if [ "$MODE" = quick ]; then
  # In the order of value: compile everything first, then bf16 head-dim-64 correctness at 256 and
  # 258 tokens and the fused ops, then timing, then head dim 128 / fp16, then the tile sweep.
  run_step warmup 70 "$PY" -m benchmarks.warm_cache --out "$RESULTS" --quick --budget-s @BUDGET@
  run_step correctness 45 "${CORRECTNESS[@]}" --part first
  run_step attention 60 "$PY" -m benchmarks.bench_attention --out "$RESULTS" --quick
  # Paper size from cached encoder states at a fixed batch (no batch search: no time for it);
  # compiled backends last, each started only with 40 s of budget left.
  run_step train_step 125 "${TRAIN_STEP[@]}" --sizes paper --modes states --batch 8 --steps 3 --warmup 2 \
    --compile-reserve-s 40 --backends fastlam_triton reference fastlam_compiled reference_compiled
  run_step correctness_rest 30 "${CORRECTNESS[@]}" --part rest
  run_step tune_tiles 40 "$PY" -m benchmarks.tune_tiles --out "$RESULTS" --quick --budget-s @BUDGET@
  finish
fi
if [ "$MODE" = dry ]; then
  # What --quick runs, at tiny shapes on CPU: every step starts and writes its files.
  run_step warmup 300 "$PY" -m benchmarks.warm_cache --out "$RESULTS" --dry-run \
    --budget-s "${SUITE_DRY_WARMUP_BUDGET_S:-20}"
  run_step correctness 300 "${CORRECTNESS[@]}" --part first --dry-run \
    --budget-s "${SUITE_DRY_CORRECTNESS_BUDGET_S:-20}"
  run_step attention 300 "$PY" -m benchmarks.bench_attention --out "$RESULTS" --quick --dry-run
  run_step train_step 300 "${TRAIN_STEP[@]}" --sizes tiny --modes states --steps 1 --warmup 0 \
    --backends fastlam_triton reference
  run_step correctness_rest 300 "${CORRECTNESS[@]}" --part rest --dry-run \
    --budget-s "${SUITE_DRY_CORRECTNESS_BUDGET_S:-20}"
  run_step tune_tiles 120 "$PY" -m benchmarks.tune_tiles --out "$RESULTS" --quick --dry-run
  finish
fi

# ---- full mode ------------------------------------------------------------------------------
run_step warmup 150 "$PY" -m benchmarks.warm_cache --out "$RESULTS" --budget-s @BUDGET@
if [ "${SUITE_TESTS:-1}" = "0" ]; then
  skip_step gpu_tests "SUITE_TESTS=0"
else
  # A test module that cannot import here (a missing optional dependency) must not stop the
  # rest; --import-mode=append keeps the repository root (where conftest.py is) behind the
  # no-install shim on sys.path.
  run_step gpu_tests "${SUITE_TEST_TIMEOUT_S:-200}" "$PY" -m pytest "$REPO/tests" -m gpu -q -p no:cacheprovider \
    -o addopts="" --import-mode=append --continue-on-collection-errors --rootdir "$REPO" \
    --junitxml="$RESULTS/gpu_tests.xml"
  run_step correctness 200 "${CORRECTNESS[@]}"
fi
for bench in "$REPO"/benchmarks/bench_*.py; do
  name="$(basename "$bench" .py)"
  if [ -n "${SUITE_BENCHES:-}" ] && [[ " $SUITE_BENCHES " != *" $name "* ]]; then continue; fi
  run_step "$name" "${SUITE_BENCH_TIMEOUT_S:-300}" "$PY" -m "benchmarks.$name" --out "$RESULTS"
done
finish
