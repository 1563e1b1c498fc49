"""Triton kernels (``@triton.jit`` code and their launchers only; no autograd).

Installed as ``fastlam.kernels`` through setup.py's ``package_dir``. Autograd Functions and
dispatch live in ``fastlam.ops``; nothing here imports from fastlam.
"""
# Installs the device-side tile tuner into tile_tables.block_config (it imports the launchers,
# which block_config's module cannot import back), so every launch path has it.
from . import attention_tuning  # noqa: F401
