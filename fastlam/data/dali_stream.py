"""The DALI loader without a Python thread in the way: planning and cutting in DALI's own
worker processes, DALI's prefetching and pipelined asynchronous execution on.

:class:`DaliVideoLoader` (``dali.py``) plans every clip in a background thread, cuts the packets
in a thread pool and feeds DALI (asynchronous, pipelined, ``prefetch`` batches queued) from that
thread. :class:`DaliStreamLoader` hands the same work to DALI's own worker processes instead:

* a *parallel external source* (``py_num_workers`` processes, forked) calls
  :class:`_ClipSource` per sample: it takes the sample's clip from this rank's shard of the
  epoch (:class:`~fastlam.data.ShardedClipSampler`, the same order and resume as today),
  demuxes the file once per worker (``index_video``), plans the clip with the very code of
  ``DaliVideoLoader`` (start and crop from ``(seed, epoch, index)``, frames by timestamp) and
  returns the cut encoded packets with the frame indices, resize and crop;
* the pipeline decodes (``fn.decoders.video``, CPU or NVDEC), resizes and crops, with
  ``prefetch_queue_depth`` batches in flight and ``exec_async``/``exec_pipelined`` on;
* **per-file codec fallback**: a file whose codec DALI cannot decode is decoded by PyAV in the
  same worker (the dataset's own read) and passed through a DALI conditional, so one such
  file costs one PyAV clip, not a PyAV batch.

The workers are forked when the pipeline is built, at each epoch start (``py_start_method="fork"``);
DALI asks for them to be forked before CUDA is initialised, which a training process has done by
then, so ``data.loader: auto`` picks :class:`DaliVideoLoader` on CUDA and this loader is opt-in.

``state_dict``/``load_state_dict`` are the sampler's (epoch, clips handed out): batches DALI
prefetched but the loop never received are drawn again after a resume. One pipeline per rank
(build one loader per rank with its ``rank``/``world_size``). Yields uint8-derived float
``(B, 3, F, H, W)`` in [0, 1] like ``DaliVideoLoader`` (``preprocess_frames`` options alike).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .dali import DALI_CPU_CODECS, DALI_GPU_CODECS, DaliVideoLoader, cut_stream, index_video, rank_clips
from .dataset import VIDEO_EXTENSIONS, VideoClipDataset
from .preprocess import preprocess_frames
from .video import VideoDecodeError

__all__ = ["DaliStreamLoader"]


class _ClipSource:
    """Per-sample callback of the parallel external source (runs in DALI's workers)."""

    # The planning code of DaliVideoLoader, shared rather than copied (it reads self.dataset).
    _plan = DaliVideoLoader._plan
    _frames_at = DaliVideoLoader._frames_at

    def __init__(self, dataset: VideoClipDataset, order: np.ndarray, offset: int, stop: int,
                 codecs: frozenset, num_frames: int, size):
        self.dataset, self.order, self.offset, self.stop = dataset, order, offset, stop
        self.codecs, self.num_frames, self.size = codecs, num_frames, tuple(size)
        self._index: dict[str, object] = {}

    def _idx(self, path):
        idx = self._index.get(path)
        if idx is None:
            if len(self._index) > 4096:  # bounded: a worker sees a slice of a large corpus
                self._index.clear()
            idx = self._index[path] = index_video(path)
        return idx

    def __call__(self, info):
        k = self.offset + info.idx_in_epoch
        if k >= self.stop:
            raise StopIteration
        ds, item = self.dataset, int(self.order[k])
        n = len(ds.paths)
        video = item // ds.clips_per_video
        empty_raw = np.zeros((0, 1, 1, 3), np.uint8)
        for off in range(n):
            path = ds.paths[(video + off) % n]
            if path in ds._bad:
                continue
            try:
                idx = self._idx(path)
            except VideoDecodeError as e:
                ds._mark_bad(path, e.reason)
                continue
            if idx.codec in self.codecs:
                plan = self._plan(0, item, path, idx)
                if plan is None:
                    continue
                enc, frames = cut_stream(idx, plan.frames)
                return (np.ascontiguousarray(enc, dtype=np.uint8), frames.astype(np.int32),
                        np.asarray(plan.resized, np.float32), np.asarray(plan.crop, np.int32),
                        empty_raw, np.array(True))
            clip = ds._try_read(path, item % ds.clips_per_video, ds._generator(item))
            if clip is None:
                continue
            return (np.zeros(1, np.uint8), np.zeros(self.num_frames, np.int32),
                    np.ones(2, np.float32), np.zeros(2, np.int32), clip.numpy(), np.array(False))
        raise RuntimeError("no readable video left in the dataset: " + ds.report())


class DaliStreamLoader:
    """Batches ``(B, C, num_frames, H, W)`` for one rank; see the module docstring."""

    def __init__(self, source, *, batch_size: int, num_frames: int = 16, fps: float = 4.0,
                 size: Sequence[int] = (256, 256), crop: str = "random", short_policy: str = "pad",
                 seed: int = 0, clips_per_video: int = 1, rank: int = 0, world_size: int = 1,
                 device: str = "cuda", device_id: int | None = None,
                 dtype: torch.dtype | None = None, num_threads: int = 2, py_workers: int = 2,
                 prefetch: int = 2, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 bad_file_log=None, decode_timeout_s: float | None = 60.0, **pre):
        for name, v in (("py_workers", py_workers), ("prefetch", prefetch), ("num_threads", num_threads)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.dataset, self.sampler, self.device_id, self.dtype = rank_clips(
            source, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, drop_last=True,
            device=device, device_id=device_id, dtype=dtype, num_frames=num_frames, fps=fps, size=tuple(size),
            extensions=extensions, short_policy=short_policy, crop=crop, clips_per_video=clips_per_video,
            bad_file_log=bad_file_log, decode_timeout_s=decode_timeout_s)
        self.batch_size, self.device, self.num_frames = batch_size, device, num_frames
        self.pre = dict(dtype=self.dtype, **pre)
        self.num_threads, self.py_workers, self.prefetch = num_threads, py_workers, prefetch
        self.codecs = DALI_GPU_CODECS if device == "cuda" else DALI_CPU_CODECS

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    @property
    def bad_files(self):
        return self.dataset.bad_files

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def _pipeline(self, src: _ClipSource):
        from nvidia.dali import fn, pipeline_def, types  # optional: NVIDIA DALI (the dali extra)

        size = np.asarray(self.dataset.size, dtype=np.int32)
        gpu = self.device == "cuda"

        @pipeline_def(enable_conditionals=True, batch_size=self.batch_size,
                      num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=self.prefetch, exec_async=True, exec_pipelined=True,
                      py_num_workers=self.py_workers, py_start_method="fork")
        def pipe():
            enc, frames, resized, anchor, raw, use_dali = fn.external_source(
                source=src, num_outputs=6, parallel=True, batch=False,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.INT32, types.UINT8, types.BOOL],
                ndim=[1, 1, 1, 1, 4, 0],
                # The branches of the conditional merge into one batch: same layout as the decoder's.
                layout=["", "", "", "", "FHWC", ""])
            if use_dali:
                video = fn.decoders.video(enc, device="mixed" if gpu else "cpu", frames=frames)
                video = fn.resize(video, size=resized, antialias=True, interp_type=types.INTERP_LINEAR)
                out = fn.slice(video, anchor, size, axis_names="HW", out_of_bounds_policy="error")
            else:
                out = raw.gpu() if gpu else raw
            return out

        p = pipe()
        p.build()
        return p

    def __iter__(self):
        s = self.sampler
        if s.consumed >= len(self) * self.batch_size:
            s.set_epoch(s.epoch + 1)
        self.dataset.set_epoch(s.epoch)
        order = s.shard(s.epoch).numpy()
        stop = len(self) * self.batch_size
        src = _ClipSource(self.dataset, order, s.consumed, stop, self.codecs, self.num_frames,
                          self.dataset.size)
        pipe = self._pipeline(src)
        try:
            while s.consumed < stop:
                try:
                    (out,) = pipe.run()
                except StopIteration:
                    break
                if self.device == "cuda":
                    from nvidia.dali.plugin.pytorch import feed_ndarray  # optional: NVIDIA DALI

                    dense = out.as_tensor()
                    t = torch.empty(dense.shape(), dtype=torch.uint8,
                                    device=torch.device("cuda", self.device_id))
                    feed_ndarray(dense, t, cuda_stream=torch.cuda.current_stream(t.device))
                else:
                    t = torch.from_numpy(np.array(out.as_tensor()))
                s.consumed += self.batch_size  # counted when handed out, not when prefetched
                yield preprocess_frames(t, **self.pre)
        finally:
            del pipe
