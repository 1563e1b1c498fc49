"""The DALI pipeline :class:`~fastlam.data.dali.DaliVideoLoader` feeds: encoded clips in,
decoded, resized and cropped frames out, with DALI's pipelined asynchronous execution and a
prefetch queue (``depth`` batches in flight), like the stream loader's pipeline.

The loader's producer thread feeds it through external sources, so the protocol is DALI's
*scheduled* API, used the way DALI's own framework iterators use it:

* every iteration is one ``feed_input`` per external source (``ENCODED``, ``FRAMES``,
  ``RESIZED``, ``ANCHOR``: a batch of the plans' inputs);
* the first ``schedule_run`` of a pipelined pipeline runs ``depth`` iterations (DALI's
  prefetch), so ``depth`` batches are fed before it; every later ``schedule_run`` runs one;
* ``share_outputs`` returns the oldest iteration's outputs (first in, first out),
  synchronised with the host; ``release_outputs`` hands the buffers back once copied.

When fewer than ``depth`` batches are fed before a batch is wanted (a short epoch, the end of
one), the last batch is fed again until the prefetch can start; those outputs are dropped
(:attr:`DaliDecoder.padding` counts them). Any error leaves the pipeline unusable: the loader
drops the decoder and re-decodes every batch still in it with PyAV.
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import torch

__all__ = ["DaliDecoder", "build_pipeline", "INPUT_NAMES"]

INPUT_NAMES = ("encoded", "frames", "resized", "anchor")


def build_pipeline(max_batch: int, size: tuple[int, int], device: str, device_id: int | None,
                   num_threads: int, depth: int):
    """The built DALI pipeline: encoded bytes + frame indices + resize + crop anchor ->
    uint8 (F, h, w, C) per sample, asynchronous and pipelined with ``depth`` batches queued."""
    from nvidia.dali import fn, pipeline_def, types  # optional: NVIDIA DALI (the dali extra)

    @pipeline_def(batch_size=max_batch, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=depth, exec_async=True, exec_pipelined=True)
    def pipe():
        enc = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        resized = fn.external_source(name="resized", dtype=types.FLOAT, ndim=1)
        anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
        video = fn.decoders.video(enc, device="mixed" if device == "cuda" else "cpu", frames=frames)
        # Antialiased linear: close to PyAV/swscale's area filter when shrinking.
        video = fn.resize(video, size=resized, antialias=True, interp_type=types.INTERP_LINEAR)
        return fn.slice(video, anchor, np.asarray(size, dtype=np.int32), axis_names="HW",
                        out_of_bounds_policy="error")

    p = pipe()
    p.build()
    return p


class DaliDecoder:
    """Batches of clip plans in (:meth:`submit`), their frames out in the same order
    (:meth:`collect`), ``depth`` batches decoding ahead. ``pipe`` replaces the DALI pipeline
    (tests drive the protocol with a stand-in that follows DALI's rules)."""

    def __init__(self, max_batch: int, size: tuple[int, int], device: str, device_id: int | None,
                 num_threads: int, depth: int, pipe=None):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.device, self.device_id, self.depth = device, device_id, depth
        self.pipe = pipe if pipe is not None else build_pipeline(max_batch, size, device, device_id,
                                                                 num_threads, depth)
        self._queued: deque[bool] = deque()  # fed, not collected: True for a real batch
        self._started = False  # the first schedule_run (DALI's prefetch) has run
        self._last: tuple | None = None
        self.padding = 0

    @property
    def pending(self) -> int:
        """Batches submitted and not collected yet."""
        return sum(self._queued)

    @property
    def in_flight(self) -> int:
        """Iterations fed and not collected, padding included: what DALI holds."""
        return len(self._queued)

    def submit(self, frames: Sequence[np.ndarray], encoded: Sequence[np.ndarray],
               resized: Sequence[tuple[int, int]], anchors: Sequence[tuple[int, int]]) -> None:
        """Queue one batch: per clip its frame indices into its encoded bytes, its resized
        (height, width) and its crop's (top, left)."""
        inputs = (list(encoded), [np.asarray(f, dtype=np.int32) for f in frames],
                  [np.asarray(r, dtype=np.float32) for r in resized],
                  [np.asarray(a, dtype=np.int32) for a in anchors])
        self._feed(inputs, real=True)

    def _feed(self, inputs: tuple, real: bool) -> None:
        for name, data in zip(INPUT_NAMES, inputs):
            self.pipe.feed_input(name, data)
        self._queued.append(real)
        self._last = inputs
        if self._started:
            self.pipe.schedule_run()
        elif len(self._queued) == self.depth:
            self.pipe.schedule_run()  # runs the `depth` iterations fed so far
            self._started = True

    def collect(self) -> torch.Tensor:
        """The oldest submitted batch's frames, uint8 ``(n, F, H, W, C)`` on the decoder's
        device (a fresh tensor: DALI's buffer is handed back before this returns)."""
        if not any(self._queued):
            raise RuntimeError("collect() without a submitted batch")
        while not self._started:
            self._feed(self._last, real=False)
            self.padding += 1
        while True:
            real = self._queued.popleft()
            (out,) = self.pipe.share_outputs()
            try:
                frames = self._to_torch(out) if real else None
            finally:
                self.pipe.release_outputs()
            if real:
                return frames

    def _to_torch(self, out) -> torch.Tensor:
        if self.device != "cuda":
            return torch.from_numpy(np.array(out.as_tensor()))
        from nvidia.dali.plugin.pytorch import feed_ndarray  # optional: NVIDIA DALI (the dali extra)

        dense = out.as_tensor()
        dev = torch.device("cuda", self.device_id)
        t = torch.empty(dense.shape(), dtype=torch.uint8, device=dev)
        stream = torch.cuda.current_stream(dev)  # the loader thread's side stream
        feed_ndarray(dense, t, cuda_stream=stream)
        # The buffer goes back to DALI next (release_outputs): the copy must have finished.
        # This waits in the loader's thread, never on the training stream.
        stream.synchronize()
        return t
