#!/usr/bin/env bash
# Set up, fetch the real sample videos, and train the tiny_cpu LAM end to end
# (on the GPU when there is one, else on the CPU). Extra args are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
# A config mistake or an out_dir that already holds a run is refused before the set-up work
# (about 1.5 minutes even when everything is installed), wherever the environment exists.
if [ -x .venv/bin/python ] && .venv/bin/python -c "import fastlam.train" >/dev/null 2>&1; then
  .venv/bin/python -m fastlam.train --config configs/tiny_cpu.yaml --check "$@" >/dev/null
fi
bash scripts/setup_env.sh
.venv/bin/python -m fastlam.data.samples --dest data/samples
exec .venv/bin/python -m fastlam.train --config configs/tiny_cpu.yaml "$@"
