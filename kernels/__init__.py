"""Triton kernels (``@triton.jit`` code and their launchers only; no autograd).

Installed as ``fastlam.kernels`` through setup.py's ``package_dir``. Autograd Functions and
dispatch live in ``fastlam.ops``; nothing here imports from fastlam.
"""
