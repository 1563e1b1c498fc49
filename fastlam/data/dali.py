"""A batched video loader with NVIDIA DALI decoding (NVDEC on GPUs) and PyAV where DALI cannot.

:class:`DaliVideoLoader` turns a folder / file list / list of paths into batches of clips
``(B, C, frames, H, W)`` (default 16 frames at 4 fps) on the target device, in the model's
dtype, with a background thread preparing the next batches while the current one trains:

    paths -> [rank shard, per-epoch shuffle]  ShardedClipSampler
          -> [clip plan: start, frame indices by timestamp, crop]  (PyAV demux, no decode)
          -> decode the planned frames: DALI (mixed = NVDEC on a GPU; CPU for VP8/VP9/MJPEG)
                                        or PyAV (every other codec, and the fallback)
          -> resize (shorter side to max(size)) -> crop -> uint8 (B, F, H, W, C)
          -> preprocess_frames (csrc/ C++ / CUDA op): normalise + layout + dtype

Routing is per file, by codec, and logged once per codec. On a GPU (``device="cuda"``)
DALI's ``mixed`` decoder handles H.264, HEVC, AV1, VP8, VP9, MJPEG and MPEG-4 Part 2; on the
CPU DALI handles VP8, VP9 and MJPEG. Everything else (MPEG-1/2, ...) goes through PyAV, whose
frames are uploaded. ``backend="pyav"`` forces PyAV for all files, ``"dali"`` refuses files
DALI cannot decode (marks them bad) instead of falling back.

Clip sampling is the one of :class:`~fastlam.data.VideoClipDataset` (which this loader uses
for listing, bad-file bookkeeping and the PyAV path): clip starts and crops are pure
functions of ``(seed, epoch, index)``; output frame ``i`` is the frame on screen at
``start + i / fps`` (timestamps, so 25, 29.97, 30 fps and variable rate alike); short
videos follow ``short_policy`` ("pad" repeats the last frame, "skip" marks them bad).
The two decoders give the same frames; pixel values differ by colour conversion and resize
filter (DALI: linear with antialiasing; PyAV: swscale area), measured in the tests.

Speed (issue 26): nothing runs on the training thread but the hand-over. A background thread
plans each batch; ``cut_workers`` threads cut the clips' packets (O(clip) bytes read, the
inputs kept open per thread: :mod:`.video_index`); the DALI pipeline runs asynchronous and
pipelined with ``prefetch`` batches queued (:mod:`.dali_decoder`), the execution settings of
the stream loader (:mod:`.dali_stream`). This loader stays the default on CUDA
(``data.loader: auto``) rather than the stream loader because the stream loader forks DALI
worker processes when it builds its pipeline, at the start of every epoch, which in training
is after CUDA is initialised (DALI's documentation: fork the workers before any CUDA call),
and because a DALI error here costs PyAV re-decodes, not the run.

Robustness: files are indexed (demuxed, :mod:`.video_index`) once before DALI sees them, so
missing, empty, audio-only, corrupt-header and unreadable files never reach DALI; a DALI error
drops the pipeline (a new one takes the next batches) and re-decodes the batches still queued
in it with PyAV, marking the files PyAV cannot read either. Bad files are reported like the
dataset's (``bad_files``, ``report()``).
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .dali_decoder import DaliDecoder
from .dataset import VIDEO_EXTENSIONS, VideoClipDataset
from .decoding import VideoDecodeError, crop_offsets, decode_errors, frame_thresholds, resized_frame_shape
from .preprocess import load_extension, preprocess_frames
from .sampler import ShardedClipSampler
from .video_index import VideoIndex, cut_stream, index_video

__all__ = ["DaliVideoLoader", "dali_available", "choose_backend", "index_video", "VideoIndex",
           "DALI_CPU_CODECS", "DALI_GPU_CODECS"]

log = logging.getLogger("fastlam.data")

# FFmpeg codec names (PyAV's codec_context.name) each DALI backend decodes.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mjpeg", "mpeg4"})

# What DALI raises for a file or batch it cannot decode (its pipeline is unusable after it).
_DALI_ERRORS = (RuntimeError, IndexError, ValueError, OSError)

_logged_routes: set = set()
_routes_lock = threading.Lock()


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401  # optional: NVIDIA DALI (the dali extra)
    except ImportError:
        return False
    return True


def choose_backend(codec: str, device: str, dali: bool = True) -> str:
    """``"dali"`` or ``"pyav"`` for a file of ``codec`` decoded for ``device`` ("cpu"/"cuda")."""
    if dali and dali_available():
        ok = DALI_GPU_CODECS if device == "cuda" else DALI_CPU_CODECS
        if codec in ok:
            return "dali"
    return "pyav"


def _log_route(codec: str, device: str, backend: str) -> None:
    key = (codec, device, backend)
    with _routes_lock:
        if key in _logged_routes:
            return
        _logged_routes.add(key)
    where = {"dali": "DALI (NVDEC)" if device == "cuda" else "DALI (CPU)", "pyav": "PyAV"}[backend]
    log.info("%s video decoded with %s on %s", codec, where, device)


@dataclass
class _Plan:
    slot: int  # position in the batch
    index: VideoIndex
    frames: np.ndarray  # int32 frame indices into the presentation order
    resized: tuple[int, int]
    crop: tuple[int, int]  # top, left


@dataclass
class _Job:
    """One batch on its way: its sampler items, the clips PyAV already decoded, the plans
    DALI decodes and their cut packets; ``consumed``: the sampler's count after its items."""

    items: list[int]
    consumed: int
    clips: list = field(default_factory=list)
    plans: list[_Plan] = field(default_factory=list)
    encoded: list[np.ndarray] = field(default_factory=list)
    in_dali: bool = False  # submitted to the current decoder, not collected yet


class RankClips(NamedTuple):
    """What both DALI loaders (this module's and :mod:`.dali_stream`'s) set up alike."""

    dataset: VideoClipDataset
    sampler: ShardedClipSampler
    device_id: int | None  # the CUDA device index; None on the CPU
    dtype: torch.dtype  # of the batches handed out


def rank_clips(source, *, batch_size: int, rank: int, world_size: int, seed: int, drop_last: bool,
               device: str, device_id: int | None, dtype: torch.dtype | None, **clip_args) -> RankClips:
    """The DALI loaders' shared set-up, in one place so both read the same clips the same way.

    Checks ``batch_size`` and ``device``; builds the dataset, which validates the clip arguments
    (``clip_args``: :class:`VideoClipDataset`'s), lists the files and owns the bad-file
    bookkeeping and the PyAV path, so every path samples identical clips; and this rank's
    sampler, checked to hold a batch when incomplete batches are dropped. The device index is the
    current CUDA device when ``device_id`` is not given; ``dtype`` defaults to bfloat16 on CUDA
    and float32 on the CPU."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available (use device='cpu')")
    dataset = VideoClipDataset(source, seed=seed, **clip_args)
    sampler = ShardedClipSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, drop_last=drop_last)
    if drop_last and len(sampler) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than this rank's shard "
                         f"({len(sampler)} clips of {len(dataset)})")
    if device == "cuda":
        index = torch.cuda.current_device() if device_id is None else device_id
        return RankClips(dataset, sampler, index, dtype or torch.bfloat16)
    return RankClips(dataset, sampler, None, dtype or torch.float32)


class DaliVideoLoader:
    """Batches ``(B, C, num_frames, H, W)`` of clips from ``source`` for one rank.

    Iterating yields one epoch of this rank's shard (``len(self)`` batches; with
    ``drop_last`` every rank gets the same number) and advances the epoch. ``state_dict`` /
    ``load_state_dict`` save and restore the position (epoch and clips consumed), so a
    resumed run continues with the next unseen batch. ``device="cuda"`` decodes with NVDEC
    and returns tensors on the GPU; ``device="cpu"`` uses DALI's CPU decoder where the codec
    allows it. ``dtype`` defaults to bfloat16 on CUDA and float32 on the CPU; ``layout``,
    ``mean``, ``std``, ``tubelet``, ``patch`` are passed to :func:`preprocess_frames`
    (the defaults give the ``[0, 1]`` video the models take). ``prefetch``: batches queued in
    DALI and finished batches waiting; ``cut_workers``: threads cutting clips' packets;
    ``num_threads``: DALI's own CPU threads.
    """

    def __init__(self, source, *, batch_size: int, num_frames: int = 16, fps: float = 4.0,
                 size: Sequence[int] = (256, 256), crop: str = "random", short_policy: str = "pad",
                 seed: int = 0, clips_per_video: int = 1, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, device: str = "cuda", device_id: int | None = None,
                 dtype: torch.dtype | None = None, layout: str = "cfhw",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 tubelet: int = 2, patch: int = 16, backend: str = "auto", num_threads: int = 2,
                 prefetch: int = 2, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 bad_file_log=None, decode_timeout_s: float | None = 60.0, cut_workers: int = 4):
        if backend not in ("auto", "dali", "pyav"):
            raise ValueError(f"backend must be 'auto', 'dali' or 'pyav', got {backend!r}")
        if backend == "dali" and not dali_available():
            raise ImportError("backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
                              "(the `dali` extra)")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be a positive int (batches prepared ahead), got {prefetch!r}")
        if not isinstance(cut_workers, int) or cut_workers < 1:
            raise ValueError(f"cut_workers must be a positive int (threads cutting clips), got {cut_workers!r}")
        self.dataset, self.sampler, self.device_id, self.dtype = rank_clips(
            source, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, drop_last=drop_last,
            device=device, device_id=device_id, dtype=dtype, num_frames=num_frames, fps=fps, size=tuple(size),
            extensions=extensions, short_policy=short_policy, crop=crop, clips_per_video=clips_per_video,
            bad_file_log=bad_file_log, decode_timeout_s=decode_timeout_s)
        self.batch_size, self.device, self.backend = batch_size, device, backend
        self.pre = dict(dtype=self.dtype, layout=layout, mean=mean, std=std, tubelet=tubelet, patch=patch)
        self.num_threads, self.prefetch, self.drop_last = num_threads, prefetch, drop_last
        self.cut_workers = cut_workers
        self._cutters: ThreadPoolExecutor | None = None
        self._index: dict[str, VideoIndex] = {}
        self._dali: DaliDecoder | None = None  # this iteration's pipeline
        self._live: tuple[int, int] | None = None  # (epoch, consumed) while iterating
        self.counts = {"dali": 0, "pyav": 0, "dali_errors": 0}
        load_extension()  # a first-time JIT build happens here, not in the loader thread

    # ---- bookkeeping --------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def bad_files(self) -> dict[str, str]:
        return self.dataset.bad_files

    def report(self) -> str:
        routed = f"clips decoded: {self.counts['dali']} with DALI, {self.counts['pyav']} with PyAV"
        return self.dataset.report() + "\n" + routed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        state = self.sampler.state_dict()
        if self._live is not None:
            # Mid-epoch: the producer thread has drawn ahead; count only handed-out batches.
            state["epoch"], state["consumed"] = self._live
        return {"sampler": state}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])

    # ---- planning -----------------------------------------------------------------------
    def _video_index(self, path: str) -> VideoIndex | None:
        idx = self._index.get(path)
        if idx is None:
            try:
                idx = index_video(path)
            except VideoDecodeError as e:
                self.dataset._mark_bad(path, e.reason)
                return None
            self._index[path] = idx
        return idx

    def _route(self, idx: VideoIndex) -> str:
        if self.backend == "pyav":
            backend = "pyav"
        else:
            backend = choose_backend(idx.codec, self.device)
            if backend == "pyav" and self.backend == "dali":
                return "refuse"
        _log_route(idx.codec, self.device, backend)
        return backend

    def _plan(self, slot: int, item: int, path: str, idx: VideoIndex) -> _Plan | None:
        """Same start and crop draws as VideoClipDataset._try_read for this item."""
        ds = self.dataset
        clip_index = item % ds.clips_per_video
        gen = ds._generator(item)
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        span = (ds.num_frames - 1) / ds.fps
        room = max(0.0, idx.duration_s - span - 1e-3)
        start = room * (clip_index + u) / ds.clips_per_video
        frames = self._frames_at(idx, start)
        if frames is None:
            return None
        rh, rw = resized_frame_shape(idx.width, idx.height, idx.sar, max(ds.size))
        top, left = crop_offsets(rh, rw, ds.size, ds.crop, gen)
        return _Plan(slot, idx, frames, (rh, rw), (top, left))

    def _frames_at(self, idx: VideoIndex, start: float) -> np.ndarray | None:
        ds = self.dataset
        for s in (start, 0.0):  # the dataset's retry order: the planned start, then 0
            thr = np.asarray(frame_thresholds(idx.origin, idx.time_base, s, ds.fps, ds.num_frames), dtype=np.int64)
            have = int(np.searchsorted(thr, idx.end_pts, side="left"))
            frames = np.maximum(np.searchsorted(idx.pts, thr, side="right") - 1, 0)
            if have == ds.num_frames:
                return frames.astype(np.int32)
            if s == 0.0 or start == 0.0:
                break
        if ds.short_policy == "pad" and have > 0:
            ds._padded[idx.path] = have
            frames[have:] = frames[have - 1]  # repeat the last frame on screen
            return frames.astype(np.int32)
        ds._mark_bad(idx.path, f"too short: video ends at "
                     f"{float((idx.end_pts - idx.origin) * idx.time_base):.3f} s, the clip needs "
                     f"{ds.num_frames} frames at {ds.fps:g} fps")
        return None

    # ---- decoding -----------------------------------------------------------------------
    def _pyav_clip(self, item: int, first_path: str) -> torch.Tensor:
        """The dataset's own read (with its substitution of bad files), uint8 (F, H, W, C)."""
        ds = self.dataset
        n = len(ds.paths)
        video = item // ds.clips_per_video
        for offset in range(n):
            path = ds.paths[(video + offset) % n]
            if path in ds.bad_files:
                continue
            clip = ds._try_read(path, item % ds.clips_per_video, ds._generator(item))
            if clip is not None:
                self.counts["pyav"] += 1
                return clip
        raise RuntimeError("no readable video left in the dataset: " + ds.report())

    def __del__(self):
        # The cutting threads (and the inputs each keeps open) end with the loader.
        if getattr(self, "_cutters", None) is not None:
            self._cutters.shutdown(wait=False)

    def _cut_pool(self) -> ThreadPoolExecutor:
        if self._cutters is None:
            self._cutters = ThreadPoolExecutor(self.cut_workers, thread_name_prefix="fastlam-clip-cut")
        return self._cutters

    def _prepare(self, items: list[int], out_dev: torch.device) -> _Job:
        """Plan a batch: PyAV decodes the clips DALI does not take, the rest are planned and
        their packets cut in the cutting threads (each keeps its own open inputs)."""
        ds = self.dataset
        job = _Job(items, self.sampler.consumed, clips=[None] * len(items))
        for slot, item in enumerate(items):
            video = item // ds.clips_per_video
            n = len(ds.paths)
            for offset in range(n):
                path = ds.paths[(video + offset) % n]
                if path in ds.bad_files:
                    continue
                idx = self._video_index(path)
                if idx is None:
                    continue
                route = self._route(idx)
                if route == "refuse":
                    ds._mark_bad(path, f"codec {idx.codec} is not decodable by DALI on {self.device} "
                                       f"(backend='dali')")
                    continue
                if route == "dali":
                    plan = self._plan(slot, item, path, idx)
                    if plan is None:
                        continue
                    job.plans.append(plan)
                else:
                    clip = ds._try_read(path, item % ds.clips_per_video, ds._generator(item))
                    if clip is None:
                        continue
                    self.counts["pyav"] += 1
                    job.clips[slot] = clip.to(out_dev, non_blocking=True)
                break
            else:
                raise RuntimeError("no readable video left in the dataset: " + ds.report())
        cuts = [self._cut_pool().submit(cut_stream, pl.index, pl.frames) for pl in job.plans]
        kept = []
        for pl, cut in zip(job.plans, cuts):
            try:
                data, pl.frames = cut.result()
            except decode_errors() as e:  # DALI never sees it; PyAV decides whether the file is bad
                log.warning("cutting %s failed (%s); decoding the clip with PyAV", pl.index.path, str(e)[:200])
                job.clips[pl.slot] = self._pyav_clip(items[pl.slot], pl.index.path).to(out_dev)
                continue
            kept.append(pl)
            job.encoded.append(data)
        job.plans = kept
        return job

    def _submit(self, job: _Job, queued) -> None:
        """Hand a planned batch to DALI (a new decoder after an error or at an epoch start);
        ``queued``: the jobs before it, re-decoded with PyAV if this breaks the pipeline."""
        if not job.plans:
            return
        try:
            if self._dali is None:
                self._dali = DaliDecoder(self.batch_size, self.dataset.size, self.device, self.device_id,
                                         self.num_threads, self.prefetch)
            self._dali.submit([pl.frames for pl in job.plans], job.encoded, [pl.resized for pl in job.plans],
                              [pl.crop for pl in job.plans])
        except _DALI_ERRORS as e:
            self._dali_failed(e, [*queued, job])
            return
        job.in_dali = True

    def _in_dali(self) -> int:
        return self._dali.in_flight if self._dali is not None else 0

    def _dali_failed(self, error: BaseException, jobs) -> None:
        # A DALI error leaves its pipeline unusable: start a new one for the next batches, and
        # let PyAV decode (and judge) every batch that was still in it.
        log.warning("DALI failed (%s); decoding its queued batches with PyAV", str(error)[:300])
        self.counts["dali_errors"] += 1
        self._dali = None
        for job in jobs:
            job.in_dali = False

    def _finish(self, job: _Job, queued, out_dev: torch.device) -> torch.Tensor:
        """The batch of ``job``: DALI's frames for its plans (collected in submission order),
        or PyAV's when DALI failed; ``queued``: the jobs after it (re-decoded on a failure)."""
        if job.in_dali:
            try:
                decoded = self._dali.collect()
                self.counts["dali"] += len(job.plans)
                for k, pl in enumerate(job.plans):
                    job.clips[pl.slot] = decoded[k]
                job.plans = []
            except _DALI_ERRORS as e:
                self._dali_failed(e, [job, *queued])
        for pl in job.plans:  # not decoded by DALI
            job.clips[pl.slot] = self._pyav_clip(job.items[pl.slot], pl.index.path).to(out_dev)
        return preprocess_frames(torch.stack(job.clips), **self.pre)

    # ---- iteration ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[torch.Tensor]:
        """One epoch of batches. A background thread plans and cuts (the cuts in
        ``cut_workers`` threads) and keeps ``prefetch`` batches queued in DALI's pipelined,
        asynchronous execution, up to ``prefetch`` finished batches waiting for the loop."""
        if self.sampler.consumed >= len(self.sampler):
            self.sampler.set_epoch(self.sampler.epoch + 1)
        self.dataset.set_epoch(self.sampler.epoch)
        indices = iter(self.sampler)
        q: "queue.Queue" = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        stream = torch.cuda.Stream(self.device_id) if self.device == "cuda" else None
        out_dev = torch.device("cuda", self.device_id) if self.device == "cuda" else torch.device("cpu")

        def next_items():
            items = []
            for i in indices:
                items.append(i)
                if len(items) == self.batch_size:
                    break
            if not items or (self.drop_last and len(items) < self.batch_size):
                return None
            return items

        def produce():
            jobs: deque[_Job] = deque()
            exhausted = False
            try:
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    while not stop.is_set():
                        # Keep `prefetch` batches in DALI (and the PyAV-only batches between them).
                        while not exhausted and (not jobs or self._in_dali() < self.prefetch):
                            items = next_items()
                            if items is None:
                                exhausted = True
                                break
                            job = self._prepare(items, out_dev)
                            self._submit(job, jobs)
                            jobs.append(job)
                            if not job.in_dali:
                                break  # nothing queued in DALI: hand it out first
                        if not jobs:
                            break
                        job = jobs.popleft()
                        batch = self._finish(job, jobs, out_dev)
                        event = None
                        if stream is not None:
                            event = torch.cuda.Event()
                            event.record(stream)
                        q.put((batch, event, job.consumed))
                if not stop.is_set():
                    q.put(None)  # the epoch is complete (a partial last batch is dropped)
            except BaseException as e:  # surfaced in the consumer
                q.put(e)
            finally:
                self._dali = None  # batches still queued in DALI are drawn again next time

        worker = threading.Thread(target=produce, name="fastlam-video-loader", daemon=True)
        epoch = self.sampler.epoch
        self._live = (epoch, self.sampler.consumed)
        worker.start()
        try:
            while True:
                got = q.get()
                if got is None:
                    self._live = (epoch, len(self.sampler))
                    break
                if isinstance(got, BaseException):
                    raise got
                batch, event, consumed = got
                if event is not None:
                    torch.cuda.current_stream(batch.device).wait_event(event)
                    batch.record_stream(torch.cuda.current_stream(batch.device))
                self._live = (epoch, consumed)
                yield batch
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
            # Batches prepared but not handed out are drawn again by the next iteration.
            self.sampler.epoch, self.sampler.consumed = self._live
            self._live = None
