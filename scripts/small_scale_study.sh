#!/usr/bin/env bash
# The small-scale study of issue 15 on CPU: for each world (camera pan, single agent with
# sub-patch moves, single agent with multi-patch moves) train one small LAM per regularizer
# kind on the frozen pixels encoder and probe the true action on fresh clips; then write
# OUT/study.md + OUT/capacity_vs_leakage.png. Every (world, kind) pair is its own process
# (one thread each), all in parallel; KINDS / WORLDS pick a subset.
#   scripts/small_scale_study.sh [OUT] [extra study args, e.g. --kinds discrete --train-steps 400]
# Re-run one kind (e.g. after a VQ change):  KINDS=discrete scripts/small_scale_study.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-benchmarks/results/small_scale_study}
shift || true
WORLDS=${WORLDS:-"pan agent agent_multi"}
KINDS=${KINDS:-"deterministic none noisy sparse discrete"}
mkdir -p "$OUT"
pids=()
for w in $WORLDS; do
  for k in $KINDS; do
    OMP_NUM_THREADS=1 "$PY" -m fastlam.eval study --world "$w" --kinds "$k" --out "$OUT" "$@" \
      > "$OUT/log_${w}_$k.txt" 2>&1 &
    pids+=($!)
  done
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
tail -qn 1 "$OUT"/log_*.txt
[ "$status" = 0 ] || { echo "a world failed; see $OUT/log_*.txt" >&2; exit 1; }
"$PY" -m fastlam.eval study-report --results "$OUT"
