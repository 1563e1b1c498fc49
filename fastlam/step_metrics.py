"""A training step's numbers kept on the device until the loop asks for them.

A ``.item()`` / ``float()`` / ``isfinite`` branch per micro-batch makes the host wait for the
GPU every step, emptying its launch queue. :class:`StepMetrics` holds a step's losses,
metrics and grad norm as tensors; :class:`NonFiniteWindow` ANDs the steps' "loss finite"
flags on the device. ``fastlam.train`` reads both every ``log_every`` steps, before a
checkpoint and at the end (one device-to-host copy each), so a NaN is still caught before it
can overwrite a good checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch


class StepMetrics:
    """One step's losses, metrics and grad norm as device tensors, plus whether every
    micro-batch loss was finite: nothing here reads the device, so a step never waits for the
    GPU. The loop reads them (one transfer) every ``log_every`` steps, before a checkpoint and
    at the end (:meth:`read`)."""

    def __init__(self):
        self.sums: torch.Tensor | None = None  # (loss, pred_loss, reg_loss), mean over micro-batches
        self.metrics: dict[str, torch.Tensor] = {}
        self.grad_norm: torch.Tensor | None = None
        self.finite: torch.Tensor | None = None  # bool: every micro-batch's loss finite

    def add_micro(self, out, accum: int) -> None:
        losses = torch.stack([out.loss.detach(), out.pred_loss.detach(), out.reg_loss.detach()]).float() / accum
        self.sums = losses if self.sums is None else self.sums + losses
        for k, v in out.metrics.items():
            v = torch.as_tensor(v, device=losses.device).detach().float() / accum
            self.metrics[k] = v if k not in self.metrics else self.metrics[k] + v
        ok = torch.isfinite(out.loss.detach())
        self.finite = ok if self.finite is None else self.finite & ok

    def read(self) -> tuple[list[float], dict[str, float], float]:
        """(sums, metrics, grad_norm) as Python values, in one device-to-host copy."""
        keys = sorted(self.metrics)
        gn = self.grad_norm if self.grad_norm is not None else torch.tensor(float("nan"))
        dev = self.sums.device
        flat = torch.cat([self.sums.double(), torch.stack([self.metrics[k].double() for k in keys]).to(dev)
                          if keys else self.sums.new_zeros(0, dtype=torch.float64),
                          gn.to(dev, torch.float64).reshape(1)])
        vals = flat.tolist()
        return vals[:3], dict(zip(keys, vals[3:-1])), vals[-1]


class NonFiniteWindow:
    """Non-finite losses since the last check, accumulated on the device (AND of the steps'
    flags): read at log / checkpoint time, so a NaN costs no per-step host sync and still
    never reaches a checkpoint."""

    def __init__(self):
        self.flag: torch.Tensor | None = None
        self.since = 0  # first step of the window

    def add(self, finite: torch.Tensor, step: int) -> None:
        """``finite``: step ``step``'s flag (a bool tensor, not read here)."""
        if self.flag is None:
            self.flag, self.since = finite, step
        else:
            self.flag = self.flag & finite

    def check(self, step: int, ckpt_dir: Path) -> None:
        if self.flag is not None and not bool(self.flag):
            # Do not overwrite the last good checkpoint with a diverged state.
            raise FloatingPointError(f"loss became non-finite between steps {self.since} and {step}; the last "
                                     f"good checkpoint is in {ckpt_dir} (--resume)")
        self.flag = None
