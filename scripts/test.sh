#!/usr/bin/env bash
# Set up and run the whole test suite (CPU: Triton kernels under the interpreter, plus the
# ahead-of-time sm_90/sm_80 compile check; GPU tests run when CUDA is present). Every pip
# install uses the pinned versions of constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The DALI decoding paths (CPU decoding of VP8/VP9/MJPEG, and the DALI-fed training run) are
# tested too: install the optional `dali` extra here (a large wheel, so not in set-up for users).
echo "[test] NVIDIA DALI (the optional dali extra: a ~200 MB download, about 0.5 GB installed)" >&2
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dali]" || echo "NVIDIA DALI could not be installed: its tests will skip"
echo "[test] sample videos" >&2
.venv/bin/python -m fastlam.data.samples --dest data/samples || echo "sample videos unavailable: tests that need them will skip"
echo "[test] pytest" >&2
exec .venv/bin/python -m pytest tests benchmarks -q -p no:cacheprovider --benchmark-disable --durations=20 "$@"
