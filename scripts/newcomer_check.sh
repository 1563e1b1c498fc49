#!/usr/bin/env bash
# What a newcomer sees: clone this repository's HEAD into a temporary folder and run the
# README's two commands there, with a fresh .venv and an empty pip cache, then check the
# outcome and print a verdict. Downloads torch and runs the whole suite (tens of minutes);
# run it before a submission, not in CI.
#
#   scripts/newcomer_check.sh [--dry-run] [--keep] [--only train|test] [--python PY] [--workdir DIR]
#
#   --dry-run   print the plan (clone source, commit, commands, checks) and exit
#   --keep      keep the temporary folder (default: removed when the verdict is PASS)
#   --only X    run only the training command (train) or only the test suite (test)
#   --python    the interpreter set-up builds .venv from (default: python3)
#   --workdir   parent folder for the clone, never removed (default: a new folder from mktemp)
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "newcomer_check: $*" >&2; exit 2; }
# The commands of the first code block under "## Start here" (comments dropped).
readme_commands() {
  awk '/^## Start here/{s=1; next} s && /^## /{exit} s && /^```/{if (b) exit; b=1; next} s && b' "$1" \
    | sed 's/#.*//' | awk 'NF{print $1}' | tr '\n' ' ' | sed 's/ $//'
}

DRY=0 KEEP=0 ONLY="" PY=python3 WORKDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --keep) KEEP=1 ;;
    --only) [ $# -ge 2 ] || die "--only needs train or test"; ONLY=$2; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY=$2; shift ;;
    --workdir) [ $# -ge 2 ] || die "--workdir needs a folder"; WORKDIR=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
case "$ONLY" in ""|train|test) ;; *) die "--only: expected train or test, got '$ONLY'" ;; esac
command -v "$PY" >/dev/null 2>&1 || die "--python: '$PY' not found"

REPO=$(cd "$(dirname "$0")/.." && pwd)
COMMIT=$(git -C "$REPO" rev-parse HEAD)
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
  echo "newcomer_check: note: uncommitted changes in $REPO are not part of the check (HEAD $COMMIT is)" >&2
fi
RUN_TRAIN=1 RUN_TEST=1
[ "$ONLY" = test ] && RUN_TRAIN=0
[ "$ONLY" = train ] && RUN_TEST=0

if [ "$DRY" = 1 ]; then
  echo "clone:   $REPO @ $COMMIT into ${WORKDIR:-<mktemp -d>}/fastlam"
  echo "env:     fresh .venv from $PY; PIP_NO_CACHE_DIR=1, PIP_CACHE_DIR=<empty folder>"
  [ "$RUN_TRAIN" = 1 ] && echo "run:     ./scripts/train_tiny.sh   (expect exit 0, runs/tiny_cpu/final/{model.safetensors,config.json})" \
    && echo "run:     ./scripts/train_tiny.sh steps=2   (expect exit 2 with advice, final model unchanged)"
  [ "$RUN_TEST" = 1 ] && echo "run:     ./scripts/test.sh   (expect exit 0, a pytest summary with passed and no failed/error)"
  # The cheap part for real: the clone, and the README still naming the commands run here.
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/fastlam-newcomer-dry.XXXXXX")
  git clone -q --no-checkout "$REPO" "$tmp/fastlam" && git -C "$tmp/fastlam" checkout -q "$COMMIT"
  cmds=$(readme_commands "$tmp/fastlam/README.md")
  ok=1
  [ "$cmds" = "./scripts/train_tiny.sh ./scripts/test.sh" ] || { echo "README 'Start here' commands are '$cmds', expected ./scripts/train_tiny.sh ./scripts/test.sh" >&2; ok=0; }
  for f in scripts/train_tiny.sh scripts/test.sh scripts/setup_env.sh constraints.txt; do
    [ -e "$tmp/fastlam/$f" ] || { echo "the clone has no $f" >&2; ok=0; }
  done
  rm -rf "$tmp"
  [ "$ok" = 1 ] || exit 1
  echo "dry run: the clone of ${COMMIT:0:12} has the README's two commands"
  exit 0
fi

# Only a folder this script made is ever removed.
if [ -z "$WORKDIR" ]; then WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/fastlam-newcomer.XXXXXX"); else mkdir -p "$WORKDIR"; KEEP=1; fi
CLONE=$WORKDIR/fastlam
[ ! -e "$CLONE" ] || die "$CLONE exists already: pass another --workdir"
mkdir -p "$WORKDIR/pip-cache"
export PIP_NO_CACHE_DIR=1 PIP_CACHE_DIR="$WORKDIR/pip-cache" PYTHON="$PY"
unset VIRTUAL_ENV PYTHONPATH
FAIL=()
say() { echo "[newcomer $(date -u +%H:%M:%S)] $*"; }

say "cloning $REPO @ ${COMMIT:0:12} into $CLONE"
git clone -q --no-checkout "$REPO" "$CLONE"
git -C "$CLONE" checkout -q "$COMMIT"
cd "$CLONE"
cmds=$(readme_commands README.md)
[ "$cmds" = "./scripts/train_tiny.sh ./scripts/test.sh" ] || FAIL+=("README 'Start here' names '$cmds', not the two commands checked here")

if [ "$RUN_TRAIN" = 1 ]; then
  say "./scripts/train_tiny.sh  (log: $WORKDIR/train.log)"
  t0=$SECONDS
  if ./scripts/train_tiny.sh > "$WORKDIR/train.log" 2>&1; then rc=0; else rc=$?; fi
  say "  exit $rc after $((SECONDS - t0)) s"; tail -n 6 "$WORKDIR/train.log" | sed 's/^/    /'
  [ "$rc" = 0 ] || FAIL+=("train_tiny.sh exited $rc")
  FINAL=runs/tiny_cpu/final
  if [ -f "$FINAL/model.safetensors" ] && [ -f "$FINAL/config.json" ]; then
    sum=$(sha256sum "$FINAL/model.safetensors" | cut -d' ' -f1)
    say "  disk: $(du -sh .venv | cut -f1) in .venv, $(du -sh data/samples | cut -f1) of sample videos, $(du -sh runs | cut -f1) in runs/"
    say "./scripts/train_tiny.sh steps=2  (a rerun must keep the finished model and say what to do)"
    t0=$SECONDS
    if ./scripts/train_tiny.sh steps=2 > "$WORKDIR/rerun.log" 2>&1; then rc=0; else rc=$?; fi
    say "  exit $rc after $((SECONDS - t0)) s"
    tail -n 1 "$WORKDIR/rerun.log" | sed 's/^/    /'
    grep -q "^\[setup" "$WORKDIR/rerun.log" && FAIL+=("the rerun ran the set-up before refusing")
    [ "$rc" = 2 ] || FAIL+=("rerun of train_tiny.sh exited $rc, expected 2")
    grep -q -- "--resume" "$WORKDIR/rerun.log" && grep -q -- "--overwrite" "$WORKDIR/rerun.log" \
      || FAIL+=("rerun of train_tiny.sh did not name --resume / --overwrite")
    [ "$(sha256sum "$FINAL/model.safetensors" | cut -d' ' -f1)" = "$sum" ] || FAIL+=("rerun changed $FINAL/model.safetensors")
  else
    FAIL+=("no final model in $FINAL (model.safetensors + config.json)")
  fi
fi

if [ "$RUN_TEST" = 1 ]; then
  say "./scripts/test.sh  (log: $WORKDIR/test.log)"
  t0=$SECONDS
  if ./scripts/test.sh > "$WORKDIR/test.log" 2>&1; then rc=0; else rc=$?; fi
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$WORKDIR/test.log" | tail -n 1 || true)
  say "  exit $rc after $((SECONDS - t0)) s: ${summary:-no pytest summary line}"
  say "  disk: $(du -sh .venv | cut -f1) in .venv after the test set-up (DALI: $(du -sh .venv/lib/python*/site-packages/nvidia/dali 2>/dev/null | cut -f1 || echo none))"
  [ "$rc" = 0 ] || FAIL+=("test.sh exited $rc")
  if [ -z "$summary" ]; then FAIL+=("no pytest summary line in test.log")
  elif echo "$summary" | grep -qE '[0-9]+ (failed|errors?)'; then FAIL+=("pytest: $summary")
  elif ! echo "$summary" | grep -qE '[0-9]+ passed'; then FAIL+=("pytest passed nothing: $summary"); fi
  triton=$(.venv/bin/python -c "import triton; print(triton.__version__)" 2>/dev/null || echo none)
  pinned=$(sed -n 's/^triton==//p' constraints.txt)
  [ "$triton" = "$pinned" ] || FAIL+=("installed triton $triton, constraints.txt pins $pinned")
fi

if [ ${#FAIL[@]} -eq 0 ]; then
  say "VERDICT: PASS (commit ${COMMIT:0:12})"
  [ "$KEEP" = 1 ] && say "kept $WORKDIR" || rm -rf "$WORKDIR"
  exit 0
fi
say "VERDICT: FAIL (commit ${COMMIT:0:12}); logs in $WORKDIR"
for f in "${FAIL[@]}"; do echo "  - $f"; done
exit 1
