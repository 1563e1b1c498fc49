#!/usr/bin/env bash
# Set up, fetch the real sample videos, and train the tiny_cpu LAM end to end
# (on the GPU when there is one, else on the CPU). Extra args are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m fastlam.data.samples --dest data/samples
exec .venv/bin/python -m fastlam.train --config configs/tiny_cpu.yaml "$@"
