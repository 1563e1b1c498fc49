#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv that can see packages already
# installed system-wide, torch if it is missing, then fastlam in editable mode with its
# development extras. Every pip install is constrained by constraints.txt (the versions the CI
# gates are made with); FASTLAM_CONSTRAINTS=<file> picks another file, FASTLAM_CONSTRAINTS=
# (empty) installs within setup.py's supported ranges and keeps a system torch that fits them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONSTRAINTS=${FASTLAM_CONSTRAINTS-constraints.txt}
PIP_C=()
if [ -n "$CONSTRAINTS" ]; then PIP_C=(-c "$CONSTRAINTS"); fi
step() { echo "[setup $1/4] $2" >&2; }

step 1 "virtual environment .venv (python: $("$PY" --version 2>&1))"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
VPY=.venv/bin/python
step 2 "torch ${CONSTRAINTS:+(pinned by $CONSTRAINTS)}"
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "  installing torch (a large download the first time)" >&2
  "$VPY" -m pip install --progress-bar on ${PIP_C[@]+"${PIP_C[@]}"} torch
fi
"$VPY" -c "import torch; print('  torch', torch.__version__)" >&2
# DeepSpeed (a dev dependency, for the distributed tests) installs as pure Python without
# building its CUDA/C++ ops; the one CPU op it needs is JIT-built on first use.
export DS_BUILD_OPS=0
step 3 "fastlam (editable) with its dev extras: triton, av, pytest, transformers, deepspeed"
"$VPY" -m pip install -q ${PIP_C[@]+"${PIP_C[@]}"} -e ".[dev]"
"$VPY" -c "import torch, triton; print('  torch', torch.__version__, '| triton', triton.__version__)" >&2 || true
# Build the csrc/ preprocessing extension now (JIT, cached under TORCH_EXTENSIONS_DIR) so the
# first test run does not pay ~30-100 s for it; without a compiler the PyTorch path is used.
step 4 "preprocessing extension (JIT build; falls back to PyTorch without a compiler)"
# A build killed midway leaves torch's lock file behind and the next build waits on it forever:
# bounded, so set-up never hangs (the PyTorch path is used until the extension builds).
timeout 600 "$VPY" -c "from fastlam.data.preprocess import load_extension, extension_status; load_extension(); print('  preprocessing:', extension_status())" >&2 || true
echo "[setup] done: activate with '. .venv/bin/activate' for python -m fastlam... commands" >&2
# NVIDIA DALI (GPU decoding; CPU decoding of VP8/VP9/MJPEG) is the optional `dali` extra
# (a ~200 MB download, about 0.5 GB installed): pip install -c constraints.txt -e ".[dali]". The tests that need it skip without it.
