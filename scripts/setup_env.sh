#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv that can see packages already
# installed system-wide (so a machine that has torch keeps it), torch if it is missing, then
# fastlam in editable mode with its development extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  # 2.13.0 is the release fastlam is tested with (a CPU build where one is provided locally).
  "$VPY" -m pip install -q "torch==2.13.0"
fi
# DeepSpeed (a dev dependency, for the distributed tests) installs as pure Python without
# building its CUDA/C++ ops; the one CPU op it needs is JIT-built on first use.
export DS_BUILD_OPS=0
"$VPY" -m pip install -q -c constraints.txt -e ".[dev]"
# Build the csrc/ preprocessing extension now (JIT, cached under TORCH_EXTENSIONS_DIR) so the
# first test run does not pay ~30-100 s for it; without a compiler the PyTorch path is used.
"$VPY" -c "from fastlam.data.preprocess import load_extension, extension_status; load_extension(); print('preprocessing:', extension_status())" || true
# NVIDIA DALI (GPU decoding; CPU decoding of VP8/VP9/MJPEG) is the optional `dali` extra
# (~200 MB): pip install -e ".[dali]". The tests that need it skip without it.
