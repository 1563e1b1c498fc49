"""What the DALI loaders hand DALI: a video's demux index (:func:`index_video`: timestamps,
keyframes and geometry from one pass over the packets, no decoding, so unusable files are
found before DALI sees them) and the in-memory cut of the packets one clip needs
(:func:`cut_stream`, as DALI's decoder does not seek in an in-memory stream).

The cut costs O(clip), not O(file): the demuxer seeks through the container's own index
(MP4 sample tables, Matroska cues, AVI idx1) to the keyframe at or before the clip's first
frame and reads packets only until every frame the clip needs has arrived; the whole file is
read only when the clip spans all of it or the cut cannot deliver the frames. Each thread
keeps a few inputs open (:class:`ClipCutter`), so clips of a file already seen skip the
header parse too. Bytes read are counted (``ClipCutter.bytes_read``), which is what the tests
and ``benchmarks/bench_clip_cut.py`` check.
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .decoding import (
    VideoDecodeError,
    last_frame_units,
    nominal_frame_units,
    opened_video,
    probe_opened,
    stream_origin,
    stream_rate,
    stream_sar,
    stream_time_base,
)

__all__ = ["VideoIndex", "index_video", "cut_stream", "ClipCutter", "CountingFile", "thread_cutter"]


@dataclass(frozen=True)
class VideoIndex:
    """What planning a clip needs, from one demux pass (no decoding)."""

    path: str
    codec: str
    duration_s: float  # header duration, as VideoClipDataset uses for clip starts
    pts: np.ndarray  # int64, presentation order (sorted packet timestamps)
    origin: int
    time_base: Fraction
    end_pts: int
    width: int
    height: int
    sar: Fraction
    keyframes: np.ndarray  # int64 pts of keyframe packets, sorted
    # Where to seek for each keyframe: min(its dts, its pts). Containers seek by dts (AVI,
    # MP4) or pts (Matroska); seeking to a keyframe's pts in AVI lands on the packet whose
    # *dts* is that value, which with B-frames is a later keyframe.
    keyframe_seek: np.ndarray | None = None


def index_video(path: str) -> VideoIndex:
    """Demux ``path`` once; raises :class:`VideoDecodeError` for unusable files."""
    with opened_video(path, "cannot demux") as (container, stream):
        info = probe_opened(path, container, stream, exact=False)
        tb = stream_time_base(path, stream)
        pts, durs, keys = [], [], []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts.append(int(packet.pts))
            durs.append(int(packet.duration or 0))
            if packet.is_keyframe:
                keys.append((int(packet.pts), min(int(packet.pts), int(packet.dts if packet.dts is not None
                                                                     else packet.pts))))
        if not pts:
            raise VideoDecodeError(path, "no video packets with timestamps")
        order = np.argsort(pts, kind="stable")
        pts_arr = np.asarray(pts, dtype=np.int64)[order]
        pts_arr, keep = np.unique(pts_arr, return_index=True)
        keys = sorted(keys) or [(int(pts_arr[0]), int(pts_arr[0]))]
        last_dur = last_frame_units(int(np.asarray(durs)[order][keep][-1]), np.diff(pts_arr),
                                    nominal_frame_units(stream_rate(stream), tb))
        return VideoIndex(path=str(path), codec=info.codec, duration_s=info.duration_s,
                          pts=pts_arr, origin=stream_origin(stream), time_base=tb,
                          end_pts=int(pts_arr[-1]) + last_dur, width=int(stream.width),
                          height=int(stream.height), sar=stream_sar(stream),
                          keyframes=np.asarray([k for k, _ in keys], dtype=np.int64),
                          keyframe_seek=np.asarray([t for _, t in keys], dtype=np.int64))


class CountingFile(io.RawIOBase):
    """A read-only file that counts the bytes it hands out: PyAV reads through it, so the
    count is every byte the demuxer asked for (header, index and packets)."""

    def __init__(self, path: str):
        super().__init__()
        self._f = open(path, "rb", buffering=0)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self.bytes_read += n or 0
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()


class ClipCutter:
    """Cuts clips out of video files for one thread, keeping up to ``max_open`` inputs open
    (least recently used closed first). Not thread-safe: one per thread (:func:`cut_stream`
    keeps one per thread and per process)."""

    def __init__(self, max_open: int = 8):
        self.max_open = max_open
        self._inputs: OrderedDict[str, tuple[CountingFile, object]] = OrderedDict()
        self.bytes_read = 0  # by the inputs, headers included
        self.whole_file_reads = 0  # cuts that read the whole file (see cut)

    def _input(self, path: str):
        import av  # optional dependency: PyAV (the data extra)

        got = self._inputs.pop(path, None)
        if got is None:
            raw = CountingFile(path)
            try:
                container = av.open(raw, "r")
            except BaseException:
                self.bytes_read += raw.bytes_read
                raw.close()
                raise
            got = (raw, container)
            while len(self._inputs) >= self.max_open:
                self._release(*self._inputs.popitem(last=False)[1])
        self._inputs[path] = got
        return got

    def _release(self, raw: CountingFile, container) -> None:
        self.bytes_read += raw.bytes_read
        raw.bytes_read = 0
        container.close()
        raw.close()

    def _settle(self, raw: CountingFile) -> None:
        self.bytes_read += raw.bytes_read
        raw.bytes_read = 0

    def close(self) -> None:
        while self._inputs:
            self._release(*self._inputs.popitem()[1])

    def _whole(self, idx: VideoIndex, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        data = np.fromfile(idx.path, dtype=np.uint8)
        self.bytes_read += len(data)
        self.whole_file_reads += 1
        return data, frames

    def cut(self, idx: VideoIndex, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The packets the clip (``frames``: indices into ``idx.pts``) needs, remuxed in memory
        as Matroska: (encoded bytes, the frames' indices in the cut's presentation order).

        DALI's decoder does not seek in an in-memory stream (measured: its cost grows with
        the clip's position, ~1 s for frames 190-205 of a 480p VP9 file against 0.15 s at
        frame 0), so it gets the packets from the keyframe at or before the first frame until
        every frame up to the last one has arrived. Packets before that keyframe in
        presentation order (an open GOP's leading frames, which need the previous GOP) are
        left out. If the frames are not all in the cut, the cut starts one keyframe earlier;
        then the whole file is returned (``whole_file_reads`` counts it), as it is when the
        clip's GOPs are the whole file anyway.
        """
        frames = np.asarray(frames)
        first_pts, last_pts = int(idx.pts[int(frames.min())]), int(idx.pts[int(frames.max())])
        keys = idx.keyframes
        at = max(0, int(np.searchsorted(keys, first_pts, side="right")) - 1)
        if at == 0 and not (keys > last_pts).any():
            return self._whole(idx, frames)  # the clip's GOPs are the whole file
        for start in (at, at - 1):
            if start < 0:
                break
            seek = int(idx.keyframe_seek[start]) if idx.keyframe_seek is not None else int(keys[start])
            got = self._cut_from(idx, frames, int(keys[start]), seek, last_pts)
            if got is not None:
                return got
        return self._whole(idx, frames)

    def _cut_from(self, idx: VideoIndex, frames: np.ndarray, k0: int, seek: int,
                  last_pts: int) -> tuple[np.ndarray, np.ndarray] | None:
        import av  # optional dependency: PyAV (the data extra)

        # Every frame shown from k0 to the clip's last frame must be decoded: stop when all
        # have arrived (in decode order a B-frame can follow a later P-frame), or, should the
        # index and the demuxer disagree, two keyframes past the clip.
        lo, hi = np.searchsorted(idx.pts, [k0, last_pts], side="left")
        needed = int(hi - lo + 1)
        later = idx.keyframes[idx.keyframes > last_pts]
        give_up = int(later[1]) if len(later) > 1 else None
        raw, inp = self._input(idx.path)
        try:
            ist = inp.streams.video[0]
            inp.seek(seek, stream=ist, backward=True, any_frame=False)
            buf = io.BytesIO()
            kept: list[int] = []
            seen = 0
            with av.open(buf, "w", format="matroska") as out:
                ost = out.add_stream_from_template(ist)
                started = False
                for packet in inp.demux(ist):
                    if packet.size == 0 or packet.pts is None:
                        continue
                    pts = int(packet.pts)
                    if not started:
                        if pts != k0 or not packet.is_keyframe:
                            if packet.is_keyframe and pts > k0:
                                return None  # the demuxer landed past the wanted keyframe
                            continue  # it landed before it
                        started = True
                    if give_up is not None and packet.is_keyframe and pts >= give_up:
                        break
                    if pts < k0:
                        continue  # a leading frame of an open GOP: it needs the previous GOP
                    kept.append(pts)
                    packet.stream = ost
                    out.mux(packet)
                    if pts <= last_pts:
                        seen += 1
                        if seen >= needed:
                            break
        except av.error.FFmpegError:
            # A failed seek or demux can leave the input anywhere: open it afresh next time.
            self._release(*self._inputs.pop(idx.path))
            return None
        finally:
            if idx.path in self._inputs:
                self._settle(raw)
        cut_pts = np.unique(np.asarray(kept, dtype=np.int64))
        wanted = idx.pts[frames]
        local = np.searchsorted(cut_pts, wanted)
        if len(cut_pts) == 0 or (local >= len(cut_pts)).any() or \
                (cut_pts[np.minimum(local, len(cut_pts) - 1)] != wanted).any():
            return None
        return np.frombuffer(buf.getvalue(), dtype=np.uint8), local.astype(np.int32)


_local = threading.local()


def thread_cutter() -> ClipCutter:
    """This thread's :class:`ClipCutter`; a new one after a fork (a forked DALI worker must not
    share the parent's open files: their offsets are shared across the fork)."""
    cutter = getattr(_local, "cutter", None)
    if cutter is None or _local.pid != os.getpid():
        _local.cutter, _local.pid = ClipCutter(), os.getpid()
    return _local.cutter


def cut_stream(idx: VideoIndex, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packets a clip needs, remuxed in memory: (encoded bytes, frame indices in them);
    see :meth:`ClipCutter.cut`. Uses this thread's cutter."""
    return thread_cutter().cut(idx, frames)
