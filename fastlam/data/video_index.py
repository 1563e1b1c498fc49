"""What the DALI loaders hand DALI: a video's demux index (:func:`index_video`: timestamps,
keyframes and geometry from one pass over the packets, no decoding, so unusable files are
found before DALI sees them) and the in-memory cut of the packets one clip needs
(:func:`cut_stream`, as DALI's decoder does not seek in an in-memory stream)."""
from __future__ import annotations

import io
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

__all__ = ["VideoIndex", "index_video", "cut_stream"]


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
                keys.append(int(packet.pts))
        if not pts:
            raise VideoDecodeError(path, "no video packets with timestamps")
        order = np.argsort(pts, kind="stable")
        pts_arr = np.asarray(pts, dtype=np.int64)[order]
        pts_arr, keep = np.unique(pts_arr, return_index=True)
        last_dur = last_frame_units(int(np.asarray(durs)[order][keep][-1]), np.diff(pts_arr),
                                    nominal_frame_units(stream_rate(stream), tb))
        return VideoIndex(path=str(path), codec=info.codec, duration_s=info.duration_s,
                          pts=pts_arr, origin=stream_origin(stream), time_base=tb,
                          end_pts=int(pts_arr[-1]) + last_dur, width=int(stream.width),
                          height=int(stream.height), sar=stream_sar(stream),
                          keyframes=np.asarray(sorted(keys) or [int(pts_arr[0])], dtype=np.int64))


def cut_stream(idx: VideoIndex, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packets a clip needs, remuxed in memory: (encoded bytes, frame indices in them).

    DALI's decoder does not seek in an in-memory stream (measured: its cost grows with the
    clip's position, ~1 s for frames 190-205 of a 480p VP9 file against 0.15 s at frame 0),
    so it is handed only the packets from the keyframe before the clip's first frame to the
    keyframe after its last one, as a Matroska stream. Returns the whole file (and the
    indices unchanged) when the cut would not help or the needed frames are not all in it.
    """
    import av  # optional dependency: PyAV (the data extra)

    first_pts, last_pts = int(idx.pts[int(frames.min())]), int(idx.pts[int(frames.max())])
    k0 = int(idx.keyframes[max(0, np.searchsorted(idx.keyframes, first_pts, side="right") - 1)])
    after = idx.keyframes[idx.keyframes > last_pts]
    k1 = int(after[0]) if len(after) else None
    whole = np.fromfile(idx.path, dtype=np.uint8)
    if k0 <= int(idx.pts[0]) and k1 is None:
        return whole, frames
    buf = io.BytesIO()
    with av.open(idx.path) as inp:
        ist = inp.streams.video[0]
        inp.seek(k0, stream=ist, backward=True, any_frame=False)
        kept = []
        with av.open(buf, "w", format="matroska") as out:
            ost = out.add_stream_from_template(ist)
            started = False
            for packet in inp.demux(ist):
                if packet.size == 0 or packet.pts is None:
                    continue
                if not started:
                    if not (packet.is_keyframe and packet.pts >= k0):
                        continue  # the demuxer landed before the wanted keyframe
                    started = True
                if k1 is not None and packet.is_keyframe and packet.pts >= k1:
                    break
                kept.append(int(packet.pts))
                packet.stream = ost
                out.mux(packet)
    cut_pts = np.unique(np.asarray(kept, dtype=np.int64))
    wanted = idx.pts[frames]
    local = np.searchsorted(cut_pts, wanted)
    if len(cut_pts) == 0 or (local >= len(cut_pts)).any() or (cut_pts[np.minimum(local, len(cut_pts) - 1)] != wanted).any():
        return whole, frames  # e.g. an open GOP whose leading frames precede the keyframe
    return np.frombuffer(buf.getvalue(), dtype=np.uint8), local.astype(np.int32)
