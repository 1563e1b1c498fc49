"""Old name of :mod:`fastlam.ops.dispatch`, where every op's backend is now chosen.

Nothing in fastlam imports this module. It re-exports only what a caller outside fastlam/ops
still imports from here (tests/test_train_step_bench.py: ``use_triton``); delete it once that
import reads ``from fastlam.ops.dispatch import use_triton``.
"""
from .dispatch import use_triton

__all__ = ["use_triton"]
