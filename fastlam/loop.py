"""The small training loop that fastlam's own trainers of small models share: the study's LAMs
on cached states, the controller, the action-conditioned baseline, the pixel decoder (its run
folder and resume stay in ``fastlam.train_decoder``) and the learning test.

``fastlam.trainer`` (checkpoints, distributed runners, logging) has its own loop; everything that
only needs "this many optimiser steps on this loss" calls :func:`train_steps`, so the order of
the steps (gradients cleared, backward, clip, every optimiser, then every scheduler) is written
once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def train_steps(model: nn.Module, loss_of: Callable[[int], torch.Tensor], steps: int,
                optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence = (), *,
                grad_clip: float | None = None, log_every: int = 0,
                log: Callable[[int, float], None] | None = None) -> list[float]:
    """Run ``steps`` optimiser steps on ``loss_of(step)`` (a scalar tensor) with ``model`` in
    train mode, clipping the gradient norm to ``grad_clip`` when given; ``log(step, loss)`` is
    called every ``log_every`` steps (step counted from 1). Returns the loss of every step; the
    model is left in eval mode."""
    model.train()
    losses = []
    for step in range(steps):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = loss_of(step)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        for opt in optimizers:
            opt.step()
        for sched in schedulers:
            sched.step()
        losses.append(float(loss.detach()))
        if log is not None and log_every and (step + 1) % log_every == 0:
            log(step + 1, losses[-1])
    model.eval()
    return losses
