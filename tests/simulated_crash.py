"""A training run that dies mid-step, for the tests that resume it and compare with a run that
was never interrupted."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from fastlam.models import LatentActionWorldModel
from subprocess_guard import run_guarded

REPO = Path(__file__).resolve().parents[1]


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


# A training run in a child process that SIGKILLs itself when the world model's forward is
# called for the kill_at-th time (that is, in step kill_at, before it completes): nothing the
# trainer does on an exception (finally blocks, shutdown) runs, as after a real kill -9.
KILLED_TRAINING = r"""
import json, os, signal, sys
from fastlam.config import load_config
from fastlam.models import LatentActionWorldModel
from fastlam.train import TrainConfig, train

import torch

overrides, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))  # the parent's count: CPU reductions split by thread count
calls = {"n": 0}
forward = LatentActionWorldModel.forward

def killing_forward(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(self, *args, **kwargs)

LatentActionWorldModel.forward = killing_forward
train(load_config(TrainConfig, "configs/tiny_cpu.yaml", overrides))
"""


def sigkill_in_forward(overrides: list[str], kill_at: int) -> None:
    """Train ``configs/tiny_cpu.yaml`` with ``overrides`` in a child process that SIGKILLs
    itself in step ``kill_at``; asserts it died of that signal."""
    # The child trains with the parent's torch thread count: the tests compare its losses with
    # runs in this process bit for bit, and a CPU reduction's result depends on how many threads
    # split it (an earlier test may have changed this process's count).
    proc = run_guarded([sys.executable, "-c", KILLED_TRAINING, json.dumps(overrides), str(kill_at),
                        str(torch.get_num_threads())], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
