"""VP9 (or MJPEG) copies of sample videos, so DALI's CPU decoder runs on real content.

DALI decodes only VP8, VP9 and MJPEG on the CPU, and the sample videos that ship on PyPI
are H.264 / MPEG-1. ``python -m fastlam.data.transcode data/samples data/samples_vp9``
re-encodes each with PyAV (libvpx-vp9 in realtime mode, so a minute of 720p takes seconds
to tens of seconds on one core), keeping the frame timestamps, optionally cut to
``--max-seconds`` and scaled so the shorter side is at most ``--max-side``.
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

from ..cli_help import plain
from ..inputs import output_folder, require_folder
from .dataset import list_videos

__all__ = ["transcode", "transcode_folder"]

_CODECS = {"vp9": ("libvpx-vp9", ".webm", "yuv420p"), "vp8": ("libvpx", ".webm", "yuv420p"),
           "mjpeg": ("mjpeg", ".avi", "yuvj420p")}


def transcode(src, dst, *, codec: str = "vp9", max_seconds: float | None = None,
              max_side: int | None = None) -> Path:
    """Re-encode ``src``'s first video stream into ``dst`` (written atomically)."""
    import av  # optional: PyAV (the data extra)

    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    enc_name, _, pix = _CODECS[codec]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".part" + dst.suffix)  # keeps the extension for the muxer
    with av.open(str(src)) as inp:
        ist = inp.streams.video[0]
        ist.thread_type = "AUTO"
        w, h = ist.codec_context.width, ist.codec_context.height
        if max_side and min(w, h) > max_side:
            s = max_side / min(w, h)
            w, h = int(round(w * s / 2)) * 2, int(round(h * s / 2)) * 2
        rate = ist.average_rate or ist.guessed_rate or Fraction(25)
        with av.open(str(tmp), "w") as out:
            ost = out.add_stream(enc_name, rate=rate)
            ost.width, ost.height, ost.pix_fmt = w, h, pix
            if codec in ("vp9", "vp8"):
                ost.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}
            # Keep the source's timestamps (variable frame rate survives the copy).
            ost.time_base = ist.time_base
            origin = ist.start_time or 0
            last = None
            for frame in inp.decode(ist):
                if frame.pts is None:
                    continue
                t = float((frame.pts - origin) * ist.time_base)
                if max_seconds is not None and t > max_seconds:
                    break
                pts = frame.pts - origin
                if last is not None and pts <= last:
                    continue
                last = pts
                img = frame.reformat(width=w, height=h, format=pix)
                img.pts, img.time_base = pts, ist.time_base
                for packet in ost.encode(img):
                    out.mux(packet)
            for packet in ost.encode():
                out.mux(packet)
    tmp.replace(dst)
    return dst


def transcode_folder(src_dir, dst_dir, *, codec: str = "vp9", max_seconds: float | None = 60.0,
                     max_side: int | None = 480) -> list[Path]:
    """A ``codec`` copy of every video in ``src_dir`` (skipping copies already made)."""
    suffix = _CODECS[codec][1]
    out = []
    for path in list_videos(src_dir):
        dst = Path(dst_dir) / (Path(path).stem + suffix)
        if not (dst.exists() and dst.stat().st_size > 0):
            transcode(path, dst, codec=codec, max_seconds=max_seconds, max_side=max_side)
        out.append(dst)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fastlam.data.transcode", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src_dir", help="folder of videos to copy (searched recursively)")
    ap.add_argument("dst_dir", help="folder for the copies (created if missing); copies already there are kept")
    ap.add_argument("--codec", default="vp9", choices=sorted(_CODECS),
                    help="vp9 / vp8 (.webm) or mjpeg (.avi) (default: %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="keep at most this many seconds of each video (default: %(default)s)")
    ap.add_argument("--max-side", type=int, default=480,
                    help="scale so the shorter side is at most this many pixels (default: %(default)s)")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        require_folder(args.src_dir, "src_dir", "a folder of videos")
        output_folder(args.dst_dir, "dst_dir")
        paths = transcode_folder(args.src_dir, args.dst_dir, codec=args.codec,
                                 max_seconds=args.max_seconds, max_side=args.max_side)
    except ValueError as e:  # InputError, and list_videos' "no videos" error
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
