#!/usr/bin/env bash
# The simulated-arm planning sequence of the README ("Evaluations") over several LAM seeds:
# generate the episodes once, train one LAM per seed (configs/eval_arm_tiny.yaml plus the
# overrides given), fit its controller, plan the 24 test windows with CEM, and fit / plan the
# action-conditioned baseline once per seed too (it sees the same frozen encoder; its seed is
# the LAM's). `fastlam.eval report` then prints each seed's table and the mean +- sd over seeds.
#   scripts/arm_planning.sh OUT [key=value overrides for the LAM config ...]
#   SEEDS="0 1 2" STEPS=2000 CONTROLLER_ITERATIONS=500 AC_ITERATIONS=500 scripts/arm_planning.sh OUT
# ACTION_PRIOR=W plans with `plan arm --action-prior W` into results/plan_prior<W> (0, the default,
# is the paper's protocol, into results/plan). A LAM, controller or baseline already in OUT is
# reused, so a second run with another ACTION_PRIOR only plans.
# Each seed runs on one thread; seeds run in parallel up to JOBS at a time (default: the cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:?usage: scripts/arm_planning.sh OUT [key=value overrides ...]}
shift
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-2000}
CONTROLLER_ITERATIONS=${CONTROLLER_ITERATIONS:-500}
AC_ITERATIONS=${AC_ITERATIONS:-500}
ACTION_PRIOR=${ACTION_PRIOR:-0}
PLAN_DIR=plan
# numerically 0 (0, 0.0, ...) is the paper's protocol and plans into results/plan
awk -v w="$ACTION_PRIOR" 'BEGIN { exit !(w + 0 == 0) }' || PLAN_DIR="plan_prior$ACTION_PRIOR"
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
[ -d "$OUT/data" ] || "$PY" -m fastlam.eval generate arm --out "$OUT/data" --episodes 48 --steps 24
[ -d "$OUT/test" ] || "$PY" -m fastlam.eval generate arm --out "$OUT/test" --episodes 8 --seed 1 --no-mp4

one_seed() {  # seed -> OUT/seed<N>/{lam,results/{controller,ac,plan}}
  local s=$1 d="$OUT/seed$1"
  local ck="$d/lam/final"
  shift  # the rest: the LAM config overrides
  if [ ! -f "$ck/model.safetensors" ]; then
    "$PY" -m fastlam.train --config configs/eval_arm_tiny.yaml "data.source=$OUT/data" "out_dir=$d/lam" \
      "seed=$s" "steps=$STEPS" "$@"
  fi
  [ -f "$d/results/controller/controller.json" ] ||
    "$PY" -m fastlam.eval controller --checkpoint "$ck" --data "$OUT/data" --out "$d/results/controller" \
      --iterations "$CONTROLLER_ITERATIONS" --warmup 50 --seed "$s"
  [ -f "$d/results/ac/ac_baseline.json" ] ||
    "$PY" -m fastlam.eval ac-baseline --checkpoint "$ck" --data "$OUT/data" --out "$d/results/ac" \
      --iterations "$AC_ITERATIONS" --seed "$s"
  "$PY" -m fastlam.eval plan arm --checkpoint "$ck" --data "$OUT/test" --split all --episodes 24 \
    --out "$d/results/$PLAN_DIR" --controller "$d/results/controller/controller" \
    --ac-baseline "$d/results/ac/ac_baseline" --action-prior "$ACTION_PRIOR"
}

pids=()
for s in $SEEDS; do
  mkdir -p "$OUT/seed$s"
  OMP_NUM_THREADS=1 one_seed "$s" "$@" >> "$OUT/seed$s/log.txt" 2>&1 &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" = 0 ] || { echo "a seed failed; see $OUT/seed*/log.txt" >&2; exit 1; }
"$PY" -m fastlam.eval report --results "$OUT"
