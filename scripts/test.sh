#!/usr/bin/env bash
# Set up and run the whole test suite (CPU: Triton kernels under the interpreter, plus the
# ahead-of-time sm_90/sm_80 compile check; GPU tests run when CUDA is present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m fastlam.data.samples --dest data/samples || echo "sample videos unavailable: tests that need them will skip"
exec .venv/bin/python -m pytest tests benchmarks -q -p no:cacheprovider --benchmark-disable --durations=20 "$@"
