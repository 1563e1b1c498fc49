#!/usr/bin/env bash
# The ahead-of-time compile check (python -m benchmarks.static_check) under several triton
# releases, one throwaway virtual environment per release, one committed report per release:
#
#   scripts/static_check_versions.sh                 # 3.6.0 (GPU image), 3.7.1 (pinned), 3.9.0 (newest)
#   scripts/static_check_versions.sh 3.8.0 3.9.0     # any releases
#
# Writes benchmarks/results/static/triton-<version>/static_report.{md,csv,json} and the
# cross-version summary benchmarks/results/static/versions.md. CI checks only the pinned release
# (constraints.txt, tests/test_static_compile.py); run this before changing tiles or the pin.
#
# Each venv (benchmarks/results/tmp/venvs/triton-<version>, git-ignored, reused) holds only
# that triton wheel and an editable fastlam; torch and numpy come from the project's
# environment through a .pth file, so nothing but the triton wheel is downloaded. The static
# check imports triton, torch (the launchers' modules) and fastlam.kernels, nothing else.
# Compiles run under `nice -n 10`; JOBS=N sets --jobs (default: one compile process per CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-.venv/bin/python}
VERSIONS=("$@")
if [ ${#VERSIONS[@]} -eq 0 ]; then
  VERSIONS=(3.6.0 "$(sed -n 's/^triton==//p' constraints.txt)" 3.9.0)
fi
VENVS=${STATIC_VENVS:-benchmarks/results/tmp/venvs}
OUT=benchmarks/results/static
JOBS=${JOBS:-}
# The directory that holds torch in the project's environment (found, not assumed: a venv with
# --system-site-packages or a .pth may put it elsewhere).
TORCH_SITE=$("$PY" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
BASE_PY=$("$PY" -c "import sys; print(sys._base_executable)")

status=0
for v in "${VERSIONS[@]}"; do
  venv="$VENVS/triton-$v"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import triton, sys; sys.exit(triton.__version__ != '$v')" 2>/dev/null; then
    echo "== triton $v: creating $venv"
    rm -rf "$venv"
    # --system-site-packages: the interpreter's own packages (numpy may live there) stay visible.
    "$BASE_PY" -m venv --system-site-packages "$venv"
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # Appended after the venv's own site-packages: this venv's triton shadows the project's.
    echo "$TORCH_SITE" > "$site/zz_project_torch.pth"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "triton==$v"
    # fastlam.kernels is the repository's kernels/ folder (package_dir): a PEP 660 editable
    # install maps it (a legacy `setup.py develop` one would not); no dependencies (the .pth).
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --use-pep517 -e "$REPO"
  fi
  got=$("$venv/bin/python" -c "import triton; print(triton.__version__)")
  echo "== triton $got: static check -> $OUT/triton-$v"
  # Exit status 1 (a failing configuration) is a result to record, not a reason to stop.
  rc=0
  nice -n 10 env -u TRITON_INTERPRET "$venv/bin/python" -m benchmarks.static_check --out "$OUT/triton-$v" \
    ${JOBS:+--jobs "$JOBS"} 2>"$venv/static_check.log" || rc=$?
  if [ "$rc" -ge 2 ]; then
    echo "   static check could not run (exit $rc); log: $venv/static_check.log"
    tail -5 "$venv/static_check.log"
    status=1
  fi
done
"$PY" -m benchmarks.static_versions --out "$OUT" "${VERSIONS[@]}"
exit $status
