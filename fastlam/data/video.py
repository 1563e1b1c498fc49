"""Decoding clips from real video files with PyAV.

Times are measured from the start of the video stream (its first presentation timestamp),
so ``start_s=0`` is the first frame even for MPEG program streams whose timestamps start at
0.5 s. Frames are picked by presentation timestamp, never by frame index, so constant,
fractional (29.97) and variable frame rates are handled the same way: output frame ``i`` is
the last decoded frame whose timestamp is ``<= start_s + i / fps``, i.e. the frame on screen
at that instant. A frame stays on screen until the next one starts (the last one for its own
duration); asking for an instant after that raises :class:`ClipTooShort`.

Everything returned is uint8 ``(frames, H, W, 3)`` RGB; :func:`clip_to_tensor` converts to
the float ``(3, frames, H, W)`` layout in ``[0, 1]`` that the models take.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

try:  # PyAV is the `data` extra: importing fastlam must not need it.
    import av
except ImportError:  # pragma: no cover - exercised only where av is absent
    av = None

PathLike = Union[str, Path]

__all__ = [
    "VideoInfo",
    "VideoDecodeError",
    "ClipTooShort",
    "probe_video",
    "read_clip",
    "clip_to_tensor",
    "DecodedVideo",
    "decode_video",
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

    def __init__(self, path: PathLike, reason: str, frames: Optional[torch.Tensor] = None,
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


def _require_av():
    if av is None:
        raise ImportError("fastlam.data needs PyAV: pip install 'av>=12' (or the `data` extra)")


# Errors PyAV and the OS raise for files that are not (readable) video. Anything else is a bug
# in the caller or here, and must not be hidden as a "bad file".
def _decode_errors():
    return (av.error.FFmpegError, OSError, EOFError, ValueError, IndexError,
            UnicodeDecodeError, MemoryError)


def _open(path: PathLike):
    _require_av()
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(p, "file does not exist")
    if p.is_dir():
        raise VideoDecodeError(p, "is a directory, not a video file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(p, "zero-length file")
    try:
        container = av.open(str(p), mode="r")
    except _decode_errors() as e:
        raise VideoDecodeError(p, f"cannot open: {type(e).__name__}: {e}") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(p, f"no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.width or not stream.height:
        container.close()
        raise VideoDecodeError(p, "video stream has no decodable codec or frame size")
    return container, stream


def _stream_rate(stream) -> Optional[Fraction]:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate.numerator, rate.denominator)
    return None


def _stream_origin(stream) -> int:
    return int(stream.start_time) if stream.start_time is not None else 0


# Containers whose header duration is only an estimate from the bit rate (MPEG program and
# transport streams, raw elementary streams): exact figures need a pass over the packets.
_ESTIMATED_DURATION_FORMATS = {"mpeg", "mpegts", "mpegvideo", "h264", "hevc", "m4v"}


def _info(path: PathLike, container, stream, exact: bool = True) -> VideoInfo:
    """Facts from the headers; with ``exact``, counted from the packets when headers guess.

    Counting demuxes (reads) the whole file without decoding it: cheap for the clip lengths
    seen in training, but the dataset passes ``exact=False`` and lives with estimates.
    """
    tb = stream.time_base
    rate = _stream_rate(stream)
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


def _count_packets(path, container, stream) -> Tuple[int, float]:
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
    except _decode_errors() as e:
        raise VideoDecodeError(path, f"cannot demux: {type(e).__name__}: {e}") from e
    if count == 0 or first is None:
        return count, 0.0
    return count, float((last - first + last_dur) * tb)


def probe_video(path: PathLike) -> VideoInfo:
    """Container-level facts about ``path``'s first video stream, without decoding frames.

    Raises :class:`VideoDecodeError` for a missing, empty, unreadable or video-less file.
    """
    container, stream = _open(path)
    try:
        return _info(path, container, stream)
    finally:
        container.close()


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_clip_args(num_frames, fps, start_s, size, crop):
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if not (_is_real(fps) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if not (_is_real(start_s) and math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s must be a finite number >= 0 (seconds), got {start_s!r}")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")


def _resized_shape(width: int, height: int, sar: Fraction, short_side: int) -> Tuple[int, int]:
    # Anamorphic video (non-square pixels) is resized to its display aspect ratio.
    display_w = width * sar if sar > 0 else Fraction(width)
    if display_w <= height:
        new_w = short_side
        new_h = max(short_side, int(round(height * short_side / display_w)))
    else:
        new_h = short_side
        new_w = max(short_side, int(round(display_w * short_side / height)))
    return new_h, new_w


def _crop_offsets(rh, rw, size, crop, generator) -> Tuple[int, int]:
    out_h, out_w = size
    if crop == "center":
        return (rh - out_h) // 2, (rw - out_w) // 2
    top = int(torch.randint(0, rh - out_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, rw - out_w + 1, (1,), generator=generator))
    return top, left


def _resize_rgb(frame, rh, rw) -> np.ndarray:
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
        rh, rw = _resized_shape(frame.width, frame.height, sar, max(self.size))
        self.geometry = (rh, rw, *_crop_offsets(rh, rw, self.size, self.crop, self.generator))

    def __call__(self, frame, sar) -> np.ndarray:
        if self.geometry is None:
            self._plan(frame, sar)
        rh, rw, top, left = self.geometry
        return _resize_rgb(frame, rh, rw)[top:top + self.size[0], left:left + self.size[1]]


def _to_units(seconds: Fraction, time_base: Fraction) -> int:
    return math.floor(seconds / time_base)


def read_clip(
    path: PathLike,
    *,
    num_frames: int = 16,
    fps: float = 4.0,
    start_s: float = 0.0,
    size: Sequence[int] = (256, 256),
    crop: str = "center",
    generator: Optional[torch.Generator] = None,
    timeout_s: Optional[float] = None,
) -> torch.Tensor:
    """Read ``num_frames`` frames sampled at ``fps`` starting ``start_s`` seconds in.

    Returns uint8 ``(num_frames, size[0], size[1], 3)`` RGB. The shorter side is resized to
    ``max(size)`` keeping the aspect ratio, then a ``size`` window is cropped (centre, or at a
    random offset drawn from ``generator``, the same for all frames of the clip).

    ``timeout_s`` bounds the decoding time (checked between frames): a file that makes the
    decoder crawl (damaged streams with endless error concealment, absurd resolutions) is
    reported as a :class:`VideoDecodeError` instead of stalling a training run. A call that
    blocks inside FFmpeg itself cannot be interrupted from Python.

    Raises :class:`VideoDecodeError` for files that cannot be decoded and
    :class:`ClipTooShort` (with the frames that were read) when the video ends first.
    """
    _check_clip_args(num_frames, fps, start_s, size, crop)
    if timeout_s is not None and not (_is_real(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds or None, "
                         f"got {timeout_s!r}")
    container, stream = _open(path)
    try:
        return _read_open(path, container, stream, num_frames, fps, start_s, size, crop,
                          generator, timeout_s=timeout_s)
    except VideoDecodeError:
        raise
    except _decode_errors() as e:
        raise VideoDecodeError(path, f"decoding failed: {type(e).__name__}: {e}") from e
    finally:
        container.close()


def _read_open(path, container, stream, num_frames, fps, start_s, size, crop, generator,
               rewind=False, timeout_s=None):
    deadline = None if timeout_s is None else (time.monotonic(), float(timeout_s))
    tb = stream.time_base
    if tb is None or tb <= 0:
        raise VideoDecodeError(path, "video stream has no time base")
    tb = Fraction(tb.numerator, tb.denominator)
    origin = _stream_origin(stream)
    rate = _stream_rate(stream)
    thresholds = _thresholds(origin, tb, start_s, fps, num_frames)
    sar = _stream_sar(stream)
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
        raise _too_short(path, out[:have], end_s, num_frames, fps, start_s, size)
    return torch.from_numpy(np.stack(out))


def _rewind(container, stream, origin: int) -> None:
    # Not seek(origin): MPEG-PS seeking by timestamp can land on the *next* keyframe even
    # when asked for the first frame's own timestamp; a target at or before 0 cannot.
    container.seek(min(origin, 0), stream=stream, backward=True, any_frame=False)


def _thresholds(origin: int, tb: Fraction, start_s, fps, num_frames: int) -> List[int]:
    """Output frame i is the last frame with pts <= thresholds[i] (exact integer compares)."""
    step = Fraction(fps).limit_denominator(1_000_000)
    start = Fraction(start_s).limit_denominator(1_000_000)
    return [origin + _to_units(start + Fraction(i) / step, tb) for i in range(num_frames)]


def _stream_sar(stream) -> Fraction:
    sar = stream.sample_aspect_ratio
    return Fraction(sar.numerator, sar.denominator) if sar else Fraction(1)


def _too_short(path, got, end_s, num_frames, fps, start_s, size) -> ClipTooShort:
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
    default_dur = _to_units(1 / rate, tb) if rate else 1
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
    # End of stream: the last frame is on screen for its own duration, which the container
    # often does not state; the median spacing of the frames seen is the best estimate.
    dur = int(getattr(prev, "duration", 0) or 0)
    if dur <= 0:
        dur = int(np.median(deltas)) if deltas else default_dur
    while j < n and thresholds[j] < prev_pts + dur:
        if prev_arr is None:
            prev_arr = convert(prev, sar)
        out[j] = prev_arr
        j += 1
    return out, prev_pts, dur


def clip_to_tensor(clip: torch.Tensor) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(3, T, H, W)`` in ``[0, 1]`` (batched: a leading B)."""
    if not isinstance(clip, torch.Tensor):
        raise TypeError(f"clip must be a torch.Tensor, got {type(clip).__name__}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"clip must be uint8 (T, H, W, 3), got dtype {clip.dtype}")
    if clip.ndim not in (4, 5) or clip.shape[-1] != 3:
        raise ValueError(
            f"clip must have shape (T, H, W, 3) or (B, T, H, W, 3), got {tuple(clip.shape)}")
    perm = (3, 0, 1, 2) if clip.ndim == 4 else (0, 4, 1, 2, 3)
    # Reorder while still uint8 (a quarter of the bytes), then convert in place.
    return clip.permute(*perm).contiguous().float().div_(255.0)


@dataclass
class DecodedVideo:
    """A whole video decoded once and resized for one output ``size``, for repeated clips.

    Worth it for short videos sampled many times (``clips_per_video`` large, small corpora
    on CPU): every clip after the first costs an index instead of a decode. Clips are picked
    by the same timestamp rule as :func:`read_clip` and are bit-identical to it.
    """

    path: str
    frames: torch.Tensor  # uint8 (N, resized_h, resized_w, 3), presentation order
    pts: np.ndarray  # int64 (N,), strictly increasing, in time_base units
    origin: int
    time_base: Fraction
    end_pts: int  # the last frame stays on screen until here
    size: Tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.frames.numel()

    def clip(self, *, num_frames=16, fps=4.0, start_s=0.0, crop="center", generator=None):
        _check_clip_args(num_frames, fps, start_s, self.size, crop)
        thresholds = np.asarray(_thresholds(self.origin, self.time_base, start_s, fps,
                                            num_frames), dtype=np.int64)
        # Before the first picture the first picture is the closest there is (as read_clip).
        idx = np.maximum(np.searchsorted(self.pts, thresholds, side="right") - 1, 0)
        have = int(np.searchsorted(thresholds, self.end_pts, side="left"))
        rh, rw = self.frames.shape[1:3]
        top, left = _crop_offsets(rh, rw, self.size, crop, generator)
        window = self.frames[:, top:top + self.size[0], left:left + self.size[1]]
        if have < num_frames:
            end_s = float((self.end_pts - self.origin) * self.time_base)
            got = window[torch.from_numpy(idx[:have])].numpy()
            raise _too_short(self.path, list(got), end_s, num_frames, fps, start_s, self.size)
        return window[torch.from_numpy(idx)].contiguous()


def resized_shape(path: PathLike, size: Sequence[int]) -> Tuple[int, int]:
    """(height, width) the frames of ``path`` take before cropping to ``size``."""
    container, stream = _open(path)
    try:
        return _resized_shape(stream.width, stream.height, _stream_sar(stream), max(size))
    finally:
        container.close()


def decode_video(path: PathLike, *, size: Sequence[int] = (256, 256),
                 timeout_s: Optional[float] = None) -> DecodedVideo:
    """Decode every frame of ``path``, resized so its shorter side is ``max(size)``."""
    _check_clip_args(1, 1.0, 0.0, size, "center")
    size = (int(size[0]), int(size[1]))
    container, stream = _open(path)
    start_time = time.monotonic()
    try:
        tb = stream.time_base
        if tb is None or tb <= 0:
            raise VideoDecodeError(path, "video stream has no time base")
        tb = Fraction(tb.numerator, tb.denominator)
        rate = _stream_rate(stream)
        default_dur = _to_units(1 / rate, tb) if rate else 1
        geometry = None
        arrays, pts_list, last = [], [], None
        for frame in container.decode(stream):
            if timeout_s is not None and time.monotonic() - start_time > timeout_s:
                raise VideoDecodeError(path, f"decoding timed out after {timeout_s:g} s")
            pts = frame.pts
            if pts is None:
                pts = (pts_list[-1] + default_dur) if pts_list else _stream_origin(stream)
            if pts_list and pts <= pts_list[-1]:
                continue  # same rule as read_clip: only strictly later frames count
            if geometry is None:
                geometry = _resized_shape(frame.width, frame.height, _stream_sar(stream),
                                          max(size))
            arrays.append(_resize_rgb(frame, *geometry))
            pts_list.append(pts)
            last = frame
        if not arrays:
            raise ClipTooShort(path, "no decodable frames", frames=torch.empty(
                (0, size[0], size[1], 3), dtype=torch.uint8), needed=1)
        dur = int(getattr(last, "duration", 0) or 0)
        if dur <= 0:
            dur = int(np.median(np.diff(pts_list))) if len(pts_list) > 1 else default_dur
        return DecodedVideo(path=str(path), frames=torch.from_numpy(np.stack(arrays)),
                            pts=np.asarray(pts_list, dtype=np.int64),
                            origin=_stream_origin(stream), time_base=tb,
                            end_pts=pts_list[-1] + dur, size=size)
    except VideoDecodeError:
        raise
    except _decode_errors() as e:
        raise VideoDecodeError(path, f"decoding failed: {type(e).__name__}: {e}") from e
    finally:
        container.close()
