"""A training run that dies mid-step, for the tests that resume it and compare with a run that
was never interrupted."""
from __future__ import annotations

from typing import Callable

import pytest

from fastlam.models import LatentActionWorldModel


def crash_in_forward(run: Callable[[], object], call: int, monkeypatch) -> None:
    """Run ``run()`` with the ``call``-th world-model forward (counted from now) raising
    KeyboardInterrupt, as a crash in that step would; asserts it did stop there, and puts the
    real forward back for the resumed run."""
    calls = {"n": 0}
    real_forward = LatentActionWorldModel.forward

    def crashing_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("simulated crash")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(LatentActionWorldModel, "forward", crashing_forward)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(LatentActionWorldModel, "forward", real_forward)
