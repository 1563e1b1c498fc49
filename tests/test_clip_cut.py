"""The clip cut handed to DALI (fastlam.data.video_index): the cut's packets decode to the very
frames of the full file, for every container/codec pair the DALI loaders route, and a cut
reads O(clip) bytes, not the whole file."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest

av = pytest.importorskip("av")

from fastlam.data.video_index import ClipCutter, cut_stream, index_video  # noqa: E402


def _write(path, codec, *, n=120, size=64, options=None, gop=12, pix="yuv420p"):
    """Noise over a moving grey level: every frame differs from its neighbours, so a frame
    decoded from the wrong reference cannot pass for the right one."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25, options=options or {})
        s.width = s.height = size
        s.pix_fmt = pix
        s.codec_context.gop_size = gop
        for i in range(n):
            img = rng.integers(0, 64, (size, size, 3), dtype=np.uint8) + np.uint8(2 * i % 190)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _frames(data) -> np.ndarray:
    with av.open(io.BytesIO(bytes(data))) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


CASES = {
    "h264_bframes_mp4": ("libx264", ".mp4", {"bf": "3"}, "yuv420p"),
    "h264_open_gop_mkv": ("libx264", ".mkv", {"bf": "3", "x264-params": "open-gop=1"}, "yuv420p"),
    "vp9_webm": ("libvpx-vp9", ".webm", {}, "yuv420p"),
    # AVI seeks by decode time: a seek to a keyframe's pts lands on a later keyframe.
    "mpeg4_bframes_avi": ("mpeg4", ".avi", {"bf": "2"}, "yuv420p"),
    "mjpeg_avi": ("mjpeg", ".avi", {}, "yuvj420p"),
}
CLIPS = [[50, 52, 55, 58, 61], [12, 13], [30], [100, 105, 110, 119], [40, 40, 41, 47], [0, 3, 5]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_cut_decodes_to_the_full_files_frames(tmp_path, name):
    codec, suffix, options, pix = CASES[name]
    path = _write(tmp_path / f"{name}{suffix}", codec, options=options, pix=pix)
    idx = index_video(path)
    full = _frames(np.fromfile(path, np.uint8))
    assert len(full) == len(idx.pts) == 120
    cutter = ClipCutter()
    for clip in CLIPS:
        frames = np.asarray(clip, dtype=np.int32)
        data, local = cutter.cut(idx, frames)
        np.testing.assert_array_equal(_frames(data)[local], full[frames], err_msg=f"{name} frames {clip}")
    # Every clip has a keyframe after it, so none needed the whole file.
    assert cutter.whole_file_reads == 0
    cutter.close()


def test_cut_reads_the_clip_not_the_file(tmp_path):
    """Bytes read (header included) stay within the clip's GOPs plus a fixed slack, far below
    the file size; a second clip of the same (still open) file reads no header again."""
    path = _write(tmp_path / "big.mp4", "libx264", n=600, size=96, gop=10, options={"bf": "2"})
    size = len(np.fromfile(path, np.uint8))
    idx = index_video(path)
    frames = np.arange(300, 316, 2, dtype=np.int32)
    k0 = idx.keyframes[idx.keyframes <= idx.pts[frames[0]]][-1]
    k1 = idx.keyframes[idx.keyframes > idx.pts[frames[-1]]][0]
    with av.open(path) as c:
        gop_bytes = sum(p.size for p in c.demux(video=0) if p.pts is not None and k0 <= p.pts < k1)
    cutter = ClipCutter()
    data, local = cutter.cut(idx, frames)
    first = cutter.bytes_read
    slack = 128 << 10  # the demuxer's read buffer and the MP4 header (sample tables)
    assert first <= gop_bytes + slack, (first, gop_bytes)
    assert first < size / 8, (first, size)
    assert len(data) < 2 * gop_bytes
    cutter.cut(idx, frames + 200)
    second = cutter.bytes_read - first
    assert second <= gop_bytes + (64 << 10), (second, gop_bytes)
    assert cutter.whole_file_reads == 0
    cutter.close()


def test_clip_spanning_the_whole_file_is_the_file(tmp_path):
    path = _write(tmp_path / "one_gop.mp4", "libx264", n=24, gop=100)
    idx = index_video(path)
    data, local = cut_stream(idx, np.array([2, 10, 20], dtype=np.int32))
    np.testing.assert_array_equal(data, np.fromfile(path, np.uint8))
    np.testing.assert_array_equal(local, [2, 10, 20])


def test_threads_cut_with_their_own_inputs(tmp_path):
    """cut_stream keeps one cutter (and open inputs) per thread: parallel cuts agree."""
    path = _write(tmp_path / "t.webm", "libvpx-vp9")
    idx = index_video(path)
    want = [cut_stream(idx, np.asarray(c, dtype=np.int32)) for c in CLIPS]
    got: dict = {}

    def work(k):
        got[k] = [cut_stream(idx, np.asarray(c, dtype=np.int32)) for c in CLIPS]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        for (d0, l0), (d1, l1) in zip(want, got[k]):
            np.testing.assert_array_equal(l0, l1)
            np.testing.assert_array_equal(_frames(d0)[l0], _frames(d1)[l1])
