"""Preemption: a SIGTERM asks the training loop to checkpoint and stop."""
from __future__ import annotations

import signal


class StopFlag:
    """Set by SIGTERM (what Slurm and Kubernetes send before killing a job): the loop finishes
    the step it is in, saves a checkpoint and returns. The previous handler is restored on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM,):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, plain behaviour
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    @property
    def requested(self) -> bool:
        return self.signum is not None
