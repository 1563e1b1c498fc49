"""Training throughput of the whole job (all ranks): clips/s, tokens/s and MFU."""
from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from ..flops import datasheet_bf16_peak, lam_train_flops_per_clip


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 datasheet peak of this CUDA device by its exact name (fastlam.flops), else None."""
    if device.type != "cuda":
        return None
    return datasheet_bf16_peak(torch.cuda.get_device_name(device))


def train_flops_per_clip(model: nn.Module) -> float:
    """Model FLOPs of one training clip (video in: frozen encoder forward + IDM and predictor
    forward and backward, 3 x their linear and 3.5 x their attention forward FLOPs), the FLOP
    model of fastlam.flops that the benchmarks use too."""
    return lam_train_flops_per_clip(model, with_encoder=True)


class Throughput:
    """clips/s, tokens/s and (on GPUs with a known peak) MFU over the last logging window,
    for the whole job (all ranks).

    What the rates include: the training loop's own time, waiting for data and the steps
    themselves; what they exclude: the work the loop does besides training (diagnostics,
    checkpoints, dashboard images), timed inside :meth:`paused`. Without that exclusion a
    window that followed a checkpoint or a diagnostics pass read far lower than its neighbours,
    and one whose batches had queued up meanwhile far higher. ``data_wait_frac`` is the share
    of the window spent waiting for the next batch (:meth:`waiting`): near 1, the input
    pipeline, not the model, sets the pace."""

    def __init__(self, model: nn.Module, device: torch.device, world_size: int):
        cfg = model.cfg
        self.tokens_per_clip = (cfg.frames // cfg.encoder.tubelet) * (cfg.image_size // cfg.encoder.patch_size) ** 2
        self.flops_per_clip = train_flops_per_clip(model)
        self.peak = peak_flops(device)
        self.world_size = world_size
        self.t, self.clips, self.excluded, self.waited = time.perf_counter(), 0, 0.0, 0.0

    def add(self, clips: int) -> None:
        self.clips += clips

    @contextlib.contextmanager
    def _timed(self, total: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, total, getattr(self, total) + time.perf_counter() - t0)

    def paused(self):
        """Time spent in this block is not training time: it counts in no rate."""
        return self._timed("excluded")

    def waiting(self):
        """Time spent in this block is waiting for data: counted, and reported as a share."""
        return self._timed("waited")

    def window(self) -> dict:
        now = time.perf_counter()
        span = max(now - self.t - self.excluded, 1e-9)
        rate = self.clips / span
        row = {"clips_per_s": rate, "tokens_per_s": rate * self.tokens_per_clip,
               "data_wait_frac": min(self.waited / span, 1.0)}
        self.t, self.clips, self.excluded, self.waited = now, 0, 0.0, 0.0
        if self.peak is not None:
            row["mfu"] = rate * self.flops_per_clip / (self.peak * self.world_size)
        return row
