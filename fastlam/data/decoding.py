"""The PyAV decoding machinery shared by every reader of real video in ``fastlam.data``.

:mod:`.video` (``probe_video``, ``read_clip``, ``decode_video``), :class:`~fastlam.data.VideoClipDataset`,
the DALI loader's clip planning, the manifest prober and the shard reader all open, probe and
read video the same way; the pieces they share live here, under public names:

* errors and facts: :class:`VideoDecodeError`, :class:`ClipTooShort`, :class:`VideoInfo`,
  :func:`decode_errors` (what PyAV and the OS raise for files that are not readable video);
* opening and probing: :func:`open_video` (checked open of the first video stream),
  :func:`opened_video` (the same as a ``with`` block that reports what fails inside) and
  :func:`probe_opened` (the facts of an already open container);
* stream facts: :func:`stream_rate`, :func:`stream_origin`, :func:`stream_sar`,
  :func:`stream_time_base`; frame durations: :func:`nominal_frame_units`, :func:`last_frame_units`;
* the clip rules: :func:`check_clip_args`, :func:`frame_thresholds` (which instant each output
  frame shows), :func:`to_time_base_units`, :func:`resized_frame_shape` (shorter side to the
  output size, at the display aspect ratio), :func:`crop_offsets`, :func:`resize_rgb`;
* reading: :func:`read_clip_opened` (one clip from an open container, by presentation
  timestamp) and :func:`too_short_error`.

Times are measured from the start of the video stream (its first presentation timestamp);
frames are picked by presentation timestamp, never by frame index (see :mod:`.video`).
"""
from __future__ import annotations

import gc
import math
import numbers
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .remote import default_cache, is_remote

try:  # PyAV is the `data` extra: importing fastlam must not need it.
    import av
except ImportError:  # pragma: no cover - exercised only where av is absent
    av = None

# Every fork (DataLoader workers, the decode watchdog's child): a PyAV codec context left in a
# garbage reference cycle (an exception's traceback, a test's captured error) keeps FFmpeg's
# decoder threads; a forked child that collects it joins threads fork did not copy and hangs
# forever. So garbage is collected in the parent first, where its finalisers are safe, and the
# child freezes what it inherited (a cycle made between the two is never finalised there).
os.register_at_fork(before=gc.collect, after_in_child=gc.freeze)

PathLike = str | Path

__all__ = [
    "VideoInfo",
    "VideoDecodeError",
    "ClipTooShort",
    "require_av",
    "decode_errors",
    "open_video",
    "opened_video",
    "probe_opened",
    "stream_rate",
    "stream_origin",
    "stream_sar",
    "stream_time_base",
    "nominal_frame_units",
    "last_frame_units",
    "is_real_number",
    "check_clip_args",
    "resized_frame_shape",
    "crop_offsets",
    "resize_rgb",
    "to_time_base_units",
    "frame_thresholds",
    "read_clip_opened",
    "too_short_error",
]


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: unreadable, corrupt, no video stream, or too short."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Keeps the exception picklable so DataLoader workers can pass it back intact.
        return (self.__class__, (self.path, self.reason))


class ClipTooShort(VideoDecodeError):
    """The video ends before the requested clip does.

    ``frames`` holds the frames that could be read (uint8 ``(k, H, W, 3)``, ``k < needed``,
    possibly ``k == 0``) so a caller can pad instead of discarding the video.
    """

    def __init__(self, path: PathLike, reason: str, frames: torch.Tensor | None = None,
                 needed: int = 0):
        super().__init__(path, reason)
        self.frames = frames
        self.needed = needed

    def __reduce__(self):
        return (self.__class__, (self.path, self.reason, self.frames, self.needed))


@dataclass(frozen=True)
class VideoInfo:
    path: str
    codec: str
    fps: float  # average frame rate; for variable-rate video, frames / duration
    duration_s: float
    num_frames: int  # from the container when it says, else estimated as duration * fps
    width: int
    height: int


def require_av():
    if av is None:
        raise ImportError("fastlam.data needs PyAV: pip install 'av>=12' (or the `data` extra)")


# Errors PyAV and the OS raise for files that are not (readable) video. Anything else is a bug
# in the caller or here, and must not be hidden as a "bad file".
def decode_errors():
    return (av.error.FFmpegError, OSError, EOFError, ValueError, IndexError,
            UnicodeDecodeError, MemoryError)


def open_video(path: PathLike):
    """``(container, stream)``: ``path`` opened with its first video stream, checked usable.

    Raises :class:`VideoDecodeError` for a missing, empty, unreadable or video-less file. An
    fsspec URL (a manifest of ``http(s)://`` videos) is read from a local copy in the process's
    :class:`~fastlam.data.remote.FileCache` (one GET, retried on transient errors: no range
    requests, which plain HTTP servers need not support; a clip then seeks locally).
    """
    require_av()
    if is_remote(path):
        try:
            p = Path(default_cache().local_path(path))
        except FileNotFoundError as e:  # RemoteMissing: 404 / 410, or the store says so
            raise VideoDecodeError(str(path), f"file does not exist ({e})") from e
        except OSError as e:  # RemoteUnavailable after the retries, or the cache's own failure
            raise VideoDecodeError(str(path), f"cannot fetch: {type(e).__name__}: {e}") from e
    else:
        p = Path(path)
    name = str(path) if is_remote(path) else p  # errors name the URL, not the cached copy
    if not p.exists():
        raise VideoDecodeError(name, "file does not exist")
    if p.is_dir():
        raise VideoDecodeError(name, "is a directory, not a video file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(name, "zero-length file")
    try:
        container = av.open(str(p), mode="r")
    except decode_errors() as e:
        raise VideoDecodeError(name, f"cannot open: {type(e).__name__}: {e}") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(name, f"no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.width or not stream.height:
        container.close()
        raise VideoDecodeError(name, "video stream has no decodable codec or frame size")
    return container, stream


@contextmanager
def opened_video(path: PathLike, failure: str = "decoding failed"):
    """:func:`open_video`'s ``(container, stream)`` for a ``with`` block, closed after it; what
    PyAV or the OS raises inside becomes a :class:`VideoDecodeError` naming ``path``, its
    reason ``failure`` (what was being done) and the error."""
    container, stream = open_video(path)
    try:
        yield container, stream
    except VideoDecodeError:
        raise
    except decode_errors() as e:
        raise VideoDecodeError(path, f"{failure}: {type(e).__name__}: {e}") from e
    finally:
        container.close()


def stream_time_base(path: PathLike, stream) -> Fraction:
    """The stream's time base (seconds per timestamp unit); a :class:`VideoDecodeError` when
    it has none, as no frame could then be placed in time."""
    tb = stream.time_base
    if tb is None or tb <= 0:
        raise VideoDecodeError(path, "video stream has no time base")
    return Fraction(tb.numerator, tb.denominator)


def nominal_frame_units(rate: Fraction | None, tb: Fraction) -> int:
    """One frame at the stream's nominal ``rate``, in time-base units (1 when the rate is
    unknown): the step for frames without timestamps, and the last resort for a duration."""
    return to_time_base_units(1 / rate, tb) if rate else 1


def last_frame_units(duration: int, spacings: Sequence[int], nominal: int) -> int:
    """How long the last frame stays on screen, in time-base units: its own ``duration`` when
    stated; else the median of the ``spacings`` between the frames seen (containers often do
    not state it, and the median is the best estimate); else ``nominal``."""
    if duration > 0:
        return int(duration)
    return int(np.median(spacings)) if len(spacings) else nominal


def stream_rate(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate.numerator, rate.denominator)
    return None


def stream_origin(stream) -> int:
    return int(stream.start_time) if stream.start_time is not None else 0


# Containers whose header duration is only an estimate from the bit rate (MPEG program and
# transport streams, raw elementary streams): exact figures need a pass over the packets.
_ESTIMATED_DURATION_FORMATS = {"mpeg", "mpegts", "mpegvideo", "h264", "hevc", "m4v"}


def probe_opened(path: PathLike, container, stream, exact: bool = True) -> VideoInfo:
    """Facts from the headers; with ``exact``, counted from the packets when headers guess.

    Counting demuxes (reads) the whole file without decoding it: cheap for the clip lengths
    seen in training, but the dataset passes ``exact=False`` and lives with estimates.
    """
    tb = stream.time_base
    rate = stream_rate(stream)
    duration = None
    if stream.duration is not None and stream.duration > 0 and tb is not None:
        duration = float(stream.duration * tb)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / 1_000_000  # AV_TIME_BASE (microseconds)
    frames = int(stream.frames or 0)
    estimated = (frames <= 0 or container.format.name in _ESTIMATED_DURATION_FORMATS)
    if duration is None or rate is None or (exact and estimated):
        frames, counted = _count_packets(path, container, stream)
        if counted > 0:
            duration = counted
            # The true average, which for variable-rate video differs from the nominal rate.
            rate = Fraction(frames) / Fraction(counted).limit_denominator(10**6)
    fps = float(rate) if rate is not None else 0.0
    if frames <= 0:
        frames = int(round(duration * fps)) if duration is not None else 0
    return VideoInfo(
        path=str(path),
        codec=stream.codec_context.name,
        fps=fps,
        duration_s=float(duration or 0.0),
        num_frames=frames,
        width=int(stream.width),
        height=int(stream.height),
    )


def _count_packets(path, container, stream) -> tuple[int, float]:
    tb = stream.time_base or Fraction(1, 1)
    count, first, last, last_dur = 0, None, None, 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # flush packet
            count += 1
            if packet.pts is not None:
                first = packet.pts if first is None else min(first, packet.pts)
                if last is None or packet.pts >= last:
                    last, last_dur = packet.pts, int(packet.duration or 0)
        container.seek(0, stream=stream)
    except decode_errors() as e:
        raise VideoDecodeError(path, f"cannot demux: {type(e).__name__}: {e}") from e
    if count == 0 or first is None:
        return count, 0.0
    return count, float((last - first + last_dur) * tb)


def is_real_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_clip_args(num_frames, fps, start_s, size, crop):
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if not (is_real_number(fps) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if not (is_real_number(start_s) and math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s must be a finite number >= 0 (seconds), got {start_s!r}")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")


def resized_frame_shape(width: int, height: int, sar: Fraction, short_side: int) -> tuple[int, int]:
    # Anamorphic video (non-square pixels) is resized to its display aspect ratio.
    display_w = width * sar if sar > 0 else Fraction(width)
    if display_w <= height:
        new_w = short_side
        new_h = max(short_side, int(round(height * short_side / display_w)))
    else:
        new_h = short_side
        new_w = max(short_side, int(round(display_w * short_side / height)))
    return new_h, new_w


def crop_offsets(rh, rw, size, crop, generator) -> tuple[int, int]:
    out_h, out_w = size
    if crop == "center":
        return (rh - out_h) // 2, (rw - out_w) // 2
    top = int(torch.randint(0, rh - out_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, rw - out_w + 1, (1,), generator=generator))
    return top, left


def resize_rgb(frame, rh, rw) -> np.ndarray:
    # swscale converts to RGB and resizes in one pass; AREA averages when shrinking, which
    # avoids the aliasing bilinear gives at 4-8x reduction.
    return frame.reformat(width=rw, height=rh, format="rgb24", interpolation="AREA").to_ndarray()


class _FrameConverter:
    """Resize (shorter side to ``max(size)``) + crop, applied identically to every frame."""

    def __init__(self, size, crop, generator):
        self.size = (int(size[0]), int(size[1]))
        self.crop = crop
        self.generator = generator
        self.geometry = None  # (resized_h, resized_w, top, left), fixed by the first frame

    def _plan(self, frame, sar):
        rh, rw = resized_frame_shape(frame.width, frame.height, sar, max(self.size))
        self.geometry = (rh, rw, *crop_offsets(rh, rw, self.size, self.crop, self.generator))

    def __call__(self, frame, sar) -> np.ndarray:
        if self.geometry is None:
            self._plan(frame, sar)
        rh, rw, top, left = self.geometry
        return resize_rgb(frame, rh, rw)[top:top + self.size[0], left:left + self.size[1]]


def to_time_base_units(seconds: Fraction, time_base: Fraction) -> int:
    return math.floor(seconds / time_base)


def read_clip_opened(path, container, stream, num_frames, fps, start_s, size, crop, generator,
                     rewind=False, timeout_s=None):
    """:func:`~fastlam.data.read_clip` on an already open ``(container, stream)``.

    ``rewind``: the container was read before (a retry), so reading from the start must seek
    back first. Raises :class:`ClipTooShort` (with the frames read) when the video ends first.
    """
    deadline = None if timeout_s is None else (time.monotonic(), float(timeout_s))
    tb = stream_time_base(path, stream)
    origin = stream_origin(stream)
    rate = stream_rate(stream)
    thresholds = frame_thresholds(origin, tb, start_s, fps, num_frames)
    sar = stream_sar(stream)
    convert = _FrameConverter(size, crop, generator)

    sought = thresholds[0] > origin
    if sought:
        # Lands on the keyframe at or before the first wanted instant; frames before it are
        # decoded (needed for the picture) but not kept.
        container.seek(thresholds[0], stream=stream, backward=True, any_frame=False)
    elif rewind:
        # The container was read before (a retry): go back to the first frame.
        _rewind(container, stream, origin)
    out, last_pts, frame_dur = _pick_frames(container, stream, thresholds, convert, sar, rate,
                                            tb, stop_if_late=sought, deadline=deadline, path=path)
    if out is None:
        # The demuxer's seek overshot (imprecise in MPEG-PS and some AVI files): decode from
        # the beginning instead, which is always correct, only slower.
        _rewind(container, stream, origin)
        out, last_pts, frame_dur = _pick_frames(container, stream, thresholds, convert, sar,
                                                rate, tb, stop_if_late=False, deadline=deadline,
                                                path=path)
    have = sum(o is not None for o in out)
    if have < num_frames:
        end_s = (float((last_pts - origin + frame_dur) * tb) if last_pts is not None else 0.0)
        raise too_short_error(path, out[:have], end_s, num_frames, fps, start_s, size)
    return torch.from_numpy(np.stack(out))


def _rewind(container, stream, origin: int) -> None:
    # Not seek(origin): MPEG-PS seeking by timestamp can land on the *next* keyframe even
    # when asked for the first frame's own timestamp; a target at or before 0 cannot.
    container.seek(min(origin, 0), stream=stream, backward=True, any_frame=False)


def frame_thresholds(origin: int, tb: Fraction, start_s, fps, num_frames: int) -> list[int]:
    """Output frame i is the last frame with pts <= thresholds[i] (exact integer compares)."""
    step = Fraction(fps).limit_denominator(1_000_000)
    start = Fraction(start_s).limit_denominator(1_000_000)
    return [origin + to_time_base_units(start + Fraction(i) / step, tb) for i in range(num_frames)]


def stream_sar(stream) -> Fraction:
    sar = stream.sample_aspect_ratio
    return Fraction(sar.numerator, sar.denominator) if sar else Fraction(1)


def too_short_error(path, got, end_s, num_frames, fps, start_s, size) -> ClipTooShort:
    frames = (torch.from_numpy(np.stack(got)) if len(got)
              else torch.empty((0, size[0], size[1], 3), dtype=torch.uint8))
    need_s = float(start_s) + (num_frames - 1) / float(fps)
    return ClipTooShort(
        path,
        f"too short: video ends at {end_s:.3f} s but the clip needs {num_frames} frames at "
        f"{float(fps):g} fps from {float(start_s):.3f} s (up to {need_s:.3f} s); got {len(got)}",
        frames=frames, needed=num_frames)


def _pick_frames(container, stream, thresholds, convert, sar, rate, tb, *, stop_if_late,
                 deadline=None, path=None):
    n = len(thresholds)
    out = [None] * n
    j = 0
    prev = prev_pts = None
    prev_arr = None  # conversion of `prev`, cached: upsampling maps one frame to many outputs
    deltas = []
    default_dur = nominal_frame_units(rate, tb)
    for frame in container.decode(stream):
        if deadline is not None and time.monotonic() - deadline[0] > deadline[1]:
            raise VideoDecodeError(path, f"decoding timed out after {deadline[1]:g} s")
        pts = frame.pts
        if pts is None:
            # Streams without timestamps (rare raw formats): step by the nominal rate.
            pts = (prev_pts + default_dur) if prev_pts is not None else thresholds[0]
        if prev_pts is None and pts > thresholds[0] and stop_if_late:
            return None, None, 0
        if prev_pts is not None and pts <= prev_pts:
            continue  # a repeated/out-of-order timestamp cannot be "the frame on screen"
        if prev_pts is not None:
            deltas.append(pts - prev_pts)
        while j < n and pts > thresholds[j]:
            if prev is None:
                # The very first frame starts after the wanted instant (stream origin slightly
                # before the first picture): the first picture is the closest there is.
                prev, prev_pts, prev_arr = frame, pts, None
            if prev_arr is None:
                prev_arr = convert(prev, sar)
            out[j] = prev_arr
            j += 1
        if j == n:
            return out, prev_pts, default_dur
        prev, prev_pts, prev_arr = frame, pts, None
    if prev is None:
        return out, None, 0
    # End of stream: the last frame is on screen for its own duration.
    dur = last_frame_units(int(getattr(prev, "duration", 0) or 0), deltas, default_dur)
    while j < n and thresholds[j] < prev_pts + dur:
        if prev_arr is None:
            prev_arr = convert(prev, sar)
        out[j] = prev_arr
        j += 1
    return out, prev_pts, dur
