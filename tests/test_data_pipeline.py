"""The data pipeline beyond the PyAV reader: the csrc/ preprocessing op, rank sharding and
resumable sampling, DALI decoding (CPU here; GPU tests need CUDA and DALI), codec routing,
and the hard decode timeout."""
import fractions
import logging
import os
import shutil
import time

import numpy as np
import pytest
import torch
from subprocess_guard import run_guarded

from fastlam.data import VideoClipDataset, clip_to_tensor
from fastlam.data.preprocess import CSRC_DIR, load_extension, preprocess_frames, preprocess_reference
from fastlam.data.sampler import ShardedClipSampler
from fastlam.data.watchdog import DecodeTimeout, GuardedClipDataset, Watchdog

av = pytest.importorskip("av")
from simulated_crash import crash_in_forward  # noqa: E402
from video_files import encode_video  # noqa: E402

try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI not installed (the `dali` extra)")

MARK_STEP = 8  # frame i (< 32) carries grey level MARK_STEP * i in its top half


def _marked_frame(i, size):
    img = np.zeros((size, size, 3), np.uint8)
    img[: size // 2] = MARK_STEP * i  # flat area: survives lossy coding, names the frame
    img[size // 2 :, :, 0] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    img[size // 2 :, (3 * i) % size, 1] = 255
    return img


def _write(path, codec, fps, n, size=64, pix="yuv420p"):
    frames = [_marked_frame(i, size) for i in range(n)]
    return str(encode_video(path, frames, codec=codec, rate=fractions.Fraction(fps).limit_denominator(1001),
                            pix_fmt=pix))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline_clips")
    return {
        "vp9_25": _write(d / "vp9_25.webm", "libvpx-vp9", 25, 32),
        "vp8_2997": _write(d / "vp8_2997.webm", "libvpx", fractions.Fraction(30000, 1001), 32),
        "mjpeg_30": _write(d / "mjpeg_30.avi", "mjpeg", 30, 32, pix="yuvj420p"),
        "h264_25": _write(d / "h264_25.mp4", "libx264", 25, 32),
    }


def _marks(frames_u8: torch.Tensor) -> list:
    """Frame numbers from the grey level of the top half, (F, H, W, 3) uint8 or (3, F, H, W)."""
    if frames_u8.shape[-1] != 3:
        frames_u8 = (frames_u8.permute(1, 2, 3, 0) * 255).round()
    top = frames_u8[:, 4 : frames_u8.shape[1] // 2 - 4].float()
    return [int(round(float(v) / MARK_STEP)) for v in top.mean(dim=(1, 2, 3))]


# ---- the csrc/ preprocessing op -------------------------------------------------------
@pytest.fixture(scope="module")
def ext():
    if os.environ.get("FASTLAM_NO_EXT") == "1":
        pytest.skip("FASTLAM_NO_EXT=1")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler for the JIT build")
    mod = load_extension()
    assert mod is not None, "the C++ extension failed to build (see the warning)"
    return mod


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["cfhw", "patches"])
def test_ext_bit_exact_vs_reference(ext, dtype, layout):
    x = torch.randint(0, 256, (2, 4, 8, 12, 3), dtype=torch.uint8)
    kw = dict(dtype=dtype, layout=layout, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
              tubelet=2, patch=4)
    got = preprocess_frames(x, backend="ext", **kw)
    ref = preprocess_reference(x, **kw)
    assert got.dtype == dtype and got.shape == ref.shape
    assert torch.equal(got, ref)
    # Unbatched input gives the unbatched output.
    assert torch.equal(preprocess_frames(x[1], backend="ext", **kw), ref[1])


def test_ext_defaults_equal_clip_to_tensor(ext):
    x = torch.randint(0, 256, (16, 20, 24, 3), dtype=torch.uint8)
    assert torch.equal(preprocess_frames(x, backend="ext"), clip_to_tensor(x))
    assert torch.equal(preprocess_reference(x), clip_to_tensor(x))


def test_patches_layout_is_conv3d_patch_embedding():
    x = torch.randint(0, 256, (1, 4, 8, 8, 3), dtype=torch.uint8)
    conv = torch.nn.Conv3d(3, 5, kernel_size=(2, 4, 4), stride=(2, 4, 4), bias=False).double()
    video = clip_to_tensor(x).double()
    want = conv(video).flatten(2).transpose(1, 2)  # (1, tokens, dim), tokens in (t, h, w)
    patches = preprocess_reference(x, layout="patches", tubelet=2, patch=4).double()
    got = patches @ conv.weight.view(5, -1).T
    torch.testing.assert_close(got, want)


def test_preprocess_bad_input():
    x = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(x.float())
    with pytest.raises(ValueError, match=r"\(F, H, W, C\)"):
        preprocess_frames(x[0])
    with pytest.raises(ValueError, match="divisible by tubelet"):
        preprocess_frames(x, layout="patches", tubelet=3, patch=4)
    with pytest.raises(ValueError, match="one value per channel"):
        preprocess_frames(x, mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="dtype"):
        preprocess_frames(x, dtype=torch.int32)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernel_compiles_for_sm90(tmp_path):
    out = tmp_path / "preprocess_cuda.o"
    r = run_guarded(["nvcc", "-c", str(CSRC_DIR / "preprocess_cuda.cu"), "-o", str(out),
                        "-std=c++17", "-O3", "-gencode", "arch=compute_90,code=sm_90"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size > 0


@pytest.mark.gpu
def test_cuda_kernel_matches_reference():
    mod = load_extension()
    if mod is None or not mod.has_cuda_kernel():
        pytest.skip("extension built without the CUDA kernel")
    x = torch.randint(0, 256, (2, 4, 16, 16, 3), dtype=torch.uint8, device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        for layout in ("cfhw", "patches"):
            kw = dict(dtype=dtype, layout=layout, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25], patch=8)
            assert torch.equal(preprocess_frames(x, backend="ext", **kw).cpu(),
                               preprocess_reference(x.cpu(), **kw))


# ---- sharding and resumable order -------------------------------------------------------
@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (12, 4), (5, 2)])
def test_shards_disjoint_and_cover_every_clip_once(n, world):
    for epoch in (0, 3):
        shards = []
        for r in range(world):
            s = ShardedClipSampler(n, rank=r, world_size=world, seed=7)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s)
        flat = [i for sh in shards for i in sh]
        assert sorted(flat) == list(range(n))  # disjoint and covering


def test_drop_last_equal_shards_and_epochs_reshuffle():
    shards = [list(ShardedClipSampler(11, rank=r, world_size=4, seed=1, drop_last=True)) for r in range(4)]
    assert {len(s) for s in shards} == {2}
    assert len({i for s in shards for i in s}) == 8
    a = ShardedClipSampler(50, seed=3)
    e0 = a.shard(0).tolist()
    assert e0 == ShardedClipSampler(50, seed=3).shard(0).tolist()  # deterministic from the seed
    assert e0 != a.shard(1).tolist() and sorted(a.shard(1).tolist()) == list(range(50))
    assert e0 != ShardedClipSampler(50, seed=4).shard(0).tolist()


def test_sampler_save_restore_mid_epoch():
    full = ShardedClipSampler(23, rank=1, world_size=2, seed=5)
    it = iter(full)
    uninterrupted = [next(it) for _ in range(5)]
    state = full.state_dict()
    uninterrupted += list(it) + list(full)  # the rest of epoch 0 and all of epoch 1
    resumed = ShardedClipSampler(23, rank=1, world_size=2, seed=5)
    resumed.load_state_dict(state)
    assert uninterrupted[:5] + list(resumed) + list(resumed) == uninterrupted
    with pytest.raises(ValueError, match="seed"):
        ShardedClipSampler(23, rank=1, world_size=2, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        ShardedClipSampler(23, rank=2, world_size=2)


# ---- hard timeout -----------------------------------------------------------------------
def test_watchdog_kills_a_call_stuck_inside_ffmpeg(tmp_path):
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    # A writer that never writes: FFmpeg's open blocks in read(2), where no Python-level
    # check runs (like a stalled network mount).
    fd = os.open(fifo, os.O_RDWR)
    try:
        w = Watchdog(1.0)
        # The open never returns on its own: raising at all is the watchdog's doing.
        with pytest.raises(DecodeTimeout, match="decoder hung") as e:
            w.call(av.open, str(fifo), what=str(fifo))
        assert e.value.path == str(fifo)
        assert w.call(sum, [1, 2, 3]) == 6  # a fresh child serves the next call
        with pytest.raises(ValueError):
            w.call(int, "not a number")  # the child's exceptions come back as they are
        w.close()
    finally:
        os.close(fd)


class _HangingDataset(VideoClipDataset):
    hang_on = ""

    def _try_read(self, path, *a, **k):
        if path == self.hang_on:
            time.sleep(3600)
        return super()._try_read(path, *a, **k)


def test_guarded_dataset_skips_a_hanging_file(clips):
    paths = [clips["h264_25"], clips["vp9_25"], clips["mjpeg_30"]]
    ds = _HangingDataset(paths, num_frames=2, fps=4, size=(16, 16))
    ds.hang_on = clips["vp9_25"]
    # A good 2-frame read takes ~0.05 s idle: 10 s holds on a heavily loaded machine, and only
    # the hanging file waits it out.
    guarded = GuardedClipDataset(ds, timeout_s=10.0)
    items = [guarded[i] for i in range(3)]
    assert all(it.shape == (3, 2, 16, 16) for it in items)
    assert list(guarded.bad_files) == [clips["vp9_25"]]
    assert "decoder hung" in guarded.bad_files[clips["vp9_25"]]
    assert guarded.timeouts == 1
    # The same items as the unguarded dataset that knows the file is bad (item 1 comes from
    # the next readable video).
    plain = VideoClipDataset(paths, num_frames=2, fps=4, size=(16, 16))
    plain._mark_bad(clips["vp9_25"], "known bad")
    assert all(torch.equal(items[i], plain[i]) for i in range(3))


# ---- DALI (CPU here) --------------------------------------------------------------------
def test_codec_routing_table():
    from fastlam.data.dali import choose_backend

    want_cpu = "dali" if HAS_DALI else "pyav"
    assert choose_backend("vp9", "cpu") == want_cpu
    assert choose_backend("mjpeg", "cpu") == want_cpu
    assert choose_backend("h264", "cpu") == "pyav"
    assert choose_backend("h264", "cuda") == ("dali" if HAS_DALI else "pyav")
    assert choose_backend("mpeg1video", "cuda") == "pyav"
    assert choose_backend("vp9", "cpu", dali=False) == "pyav"


def _all_frames(data) -> np.ndarray:
    import io

    with av.open(io.BytesIO(bytes(data))) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("libvpx-vp9", ".webm")])
def test_cut_stream_keeps_the_clip_frames(tmp_path, codec, suffix):
    """The in-memory cut handed to DALI (it cannot seek) decodes to the same frames."""
    from fastlam.data.dali import cut_stream, index_video

    path = tmp_path / f"gop{suffix}"
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=25)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    s.options = {"g": "8"} if codec == "libx264" else {"g": "8", "keyint_min": "8"}
    s.codec_context.gop_size = 8
    for i in range(60):
        img = np.full((32, 32, 3), 4 * i, np.uint8)
        img[:, i % 32] = 255
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    idx = index_video(str(path))
    assert len(idx.keyframes) > 3
    full = _all_frames(np.fromfile(path, np.uint8))
    frames = np.array([33, 35, 38, 41, 41, 44], dtype=np.int32)
    data, local = cut_stream(idx, frames)
    assert len(data) < path.stat().st_size / 2  # really a cut
    np.testing.assert_array_equal(_all_frames(data)[local], full[frames])


def test_loader_pyav_path_equals_dataset_in_sampler_order(clips):
    """Without DALI the loader is the dataset, batched in the rank's shard order."""
    from fastlam.data.dali import DaliVideoLoader

    paths = [clips["h264_25"], clips["vp9_25"], clips["mjpeg_30"], clips["vp8_2997"]]
    kw = dict(num_frames=2, fps=4.0, size=(16, 16), seed=2)
    loader = DaliVideoLoader(paths, batch_size=1, device="cpu", backend="pyav", rank=1, world_size=2, **kw)
    batches = list(loader)
    assert loader.counts["pyav"] == 2 and loader.counts["dali"] == 0
    ds = VideoClipDataset(paths, **kw)
    ds.set_epoch(0)
    order = ShardedClipSampler(4, rank=1, world_size=2, seed=2, drop_last=True).shard(0).tolist()
    assert all(torch.equal(b[0], ds[i]) for b, i in zip(batches, order))
    with pytest.raises(ValueError, match="batch_size=3 is larger than this rank's shard"):
        DaliVideoLoader(paths, batch_size=3, device="cpu", world_size=2, **kw)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            DaliVideoLoader(paths, batch_size=1, device="cuda", **kw)


def test_both_dali_loaders_set_up_the_same_clips(clips):
    """The two DALI loaders share one set-up (``rank_clips``): the same files, this rank's
    clip order, device index, default dtype and argument errors. Building either needs no DALI."""
    from fastlam.data.dali import DaliVideoLoader
    from fastlam.data.dali_stream import DaliStreamLoader

    paths = [clips["h264_25"], clips["vp9_25"], clips["mjpeg_30"], clips["vp8_2997"]]
    kw = dict(batch_size=1, num_frames=2, fps=4.0, size=(16, 16), seed=5, device="cpu", rank=1, world_size=2)
    thread, stream = DaliVideoLoader(paths, backend="pyav", **kw), DaliStreamLoader(paths, **kw)
    assert sorted(thread.dataset.paths) == sorted(paths) and stream.dataset.paths == thread.dataset.paths
    for loader in (thread, stream):
        assert loader.device_id is None and loader.dtype == torch.float32 and len(loader) == 2
    assert torch.equal(thread.sampler.shard(3), stream.sampler.shard(3))
    assert DaliStreamLoader(paths, **kw, dtype=torch.float16).pre["dtype"] == torch.float16
    for bad, error in ((dict(batch_size=0), "batch_size must be a positive int"),
                       (dict(device="tpu"), "device must be 'cuda' or 'cpu'"),
                       (dict(batch_size=3), "batch_size=3 is larger than this rank's shard")):
        for cls in (DaliVideoLoader, DaliStreamLoader):
            with pytest.raises(ValueError, match=error):
                cls(paths, **{**kw, **bad})


@needs_dali
@pytest.mark.parametrize("name,fps", [("vp9_25", 25), ("vp8_2997", 30000 / 1001), ("mjpeg_30", 30)])
def test_dali_cpu_frames_match_pyav(clips, name, fps):
    """Frame timing at 4 fps from 25 / 29.97 / 30 fps, and pixels vs PyAV (same size, no
    resize, so only the colour conversion differs)."""
    from fastlam.data.dali import DaliVideoLoader

    kw = dict(num_frames=4, fps=4.0, size=(64, 64), crop="center", seed=3)
    loader = DaliVideoLoader([clips[name]], batch_size=1, device="cpu", backend="dali", **kw)
    (batch,) = list(loader)
    assert loader.counts["dali"] == 1 and batch.shape == (1, 3, 4, 64, 64)
    ds = VideoClipDataset([clips[name]], **kw)
    ds.set_epoch(0)
    ref = ds[0]
    # The same frames: the ones on screen at start + k / 4 s.
    marks_dali, marks_pyav = _marks(batch[0]), _marks(ref)
    assert marks_dali == marks_pyav
    steps = np.diff(marks_dali)
    assert set(steps.tolist()) <= {int(np.floor(fps / 4)), int(np.ceil(fps / 4))}
    diff = (batch[0] - ref).abs() * 255
    # Measured: mean 0.3-1.5 levels, max up to ~40 on the 1-pixel chroma edges (YUV 4:2:0
    # upsampling differs between DALI's and swscale's converters).
    assert float(diff.mean()) < 3.0, float(diff.mean())


@needs_dali
def test_loader_routes_per_codec_logs_once_and_resumes(clips, caplog):
    from fastlam.data import dali as D

    D._logged_routes.clear()
    paths = [clips["vp9_25"], clips["h264_25"], clips["mjpeg_30"], clips["vp8_2997"]]
    kw = dict(batch_size=2, num_frames=4, fps=4.0, size=(32, 32), device="cpu", seed=1)
    with caplog.at_level(logging.INFO, logger="fastlam.data"):
        loader = D.DaliVideoLoader(paths, **kw)
        epoch0 = list(loader) + list(loader)  # two epochs
    assert len(epoch0) == 4 and all(b.shape == (2, 3, 4, 32, 32) for b in epoch0)
    assert loader.counts == {"dali": 6, "pyav": 2, "dali_errors": 0}
    routes = [r.getMessage() for r in caplog.records if "decoded with" in r.getMessage()]
    assert sorted(routes) == sorted({m for m in routes})  # once per codec
    assert any(m.startswith("h264") and "PyAV" in m for m in routes)
    assert any(m.startswith("vp9") and "DALI" in m for m in routes)
    # Save after the first batch, restore in a new loader: the same remaining batches.
    a = D.DaliVideoLoader(paths, **kw)
    it = iter(a)
    first = next(it)
    state = a.state_dict()
    del it
    b = D.DaliVideoLoader(paths, **kw)
    b.load_state_dict(state)
    rest = list(b) + list(b)
    assert torch.equal(first, epoch0[0])
    assert all(torch.equal(x, y) for x, y in zip(rest, epoch0[1:]))


@needs_dali
def test_loader_bad_files_counted_and_run_completes(clips, tmp_path):
    from fastlam.data.dali import DaliVideoLoader

    good = []
    for k in range(8):  # 8 good + 2 bad = 20% bad
        dst = tmp_path / f"good{k}.webm"
        shutil.copy(clips["vp9_25"], dst)
        good.append(dst)
    (tmp_path / "empty.webm").write_bytes(b"")
    data = open(clips["vp9_25"], "rb").read()
    (tmp_path / "garbage.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 8)
    assert len(data) > 0
    loader = DaliVideoLoader(tmp_path, batch_size=5, num_frames=4, fps=4.0, size=(32, 32),
                             device="cpu", seed=0, bad_file_log=tmp_path / "bad.jsonl")
    batches = list(loader)
    assert len(batches) == 2 and all(torch.isfinite(b).all() for b in batches)
    assert sorted(os.path.basename(p) for p in loader.bad_files) == ["empty.webm", "garbage.webm"]
    assert "2 of 10 video files unusable (20.0%)" in loader.report()


@pytest.mark.gpu
@needs_dali
def test_dali_gpu_matches_cpu_paths(clips):
    from fastlam.data.dali import DaliVideoLoader

    kw = dict(num_frames=4, fps=4.0, size=(64, 64), crop="center", seed=3, batch_size=1)
    for name in ("vp9_25", "h264_25"):
        gpu = next(iter(DaliVideoLoader([clips[name]], device="cuda", dtype=torch.float32, **kw)))
        ds = VideoClipDataset([clips[name]], num_frames=4, fps=4.0, size=(64, 64), crop="center", seed=3)
        ref = ds[0]
        assert gpu.is_cuda and _marks(gpu[0].cpu()) == _marks(ref)
        assert float(((gpu[0].cpu() - ref).abs() * 255).mean()) < 3.0


@needs_dali
def test_dali_cpu_vs_pyav_on_real_vp9_samples():
    """Real footage, resized 2-3x and cropped: the two paths differ only by colour
    conversion and resize filter. Measured on the VP9 copies of the samples: mean 0.2-2.2,
    p99 2-10, max 13-27 levels of 255."""
    from pathlib import Path

    from fastlam.data.dali import DaliVideoLoader

    vp9 = sorted((Path(__file__).resolve().parents[1] / "data/samples_vp9").glob("*.webm"))
    if not vp9:
        pytest.skip("no VP9 sample copies (python -m fastlam.data.samples --vp9 data/samples_vp9)")
    kw = dict(num_frames=16, fps=4.0, size=(128, 128), crop="center", seed=1)
    for path in vp9[:2]:
        batch = next(iter(DaliVideoLoader([str(path)], batch_size=1, device="cpu", backend="dali", **kw)))
        ds = VideoClipDataset([str(path)], **kw)
        ref = ds[0]
        diff = ((batch[0] - ref).abs() * 255).flatten()
        assert float(diff.mean()) < 3.0, (path, float(diff.mean()))
        assert float(diff.kthvalue(int(diff.numel() * 0.99)).values) <= 12.0, path


@pytest.mark.slow
@needs_dali
@pytest.mark.parametrize("loader", ["dali", "dali_stream"])
def test_training_uses_the_dali_loader_and_resumes_exactly(tmp_path, clips, monkeypatch, loader):
    """data.loader=dali (CPU decoding here, NVDEC on a GPU): training runs on it, and a run
    interrupted after its checkpoint resumes with exactly the batches it would have seen.
    dali_stream: the same with planning in DALI's workers and DALI's prefetch/async on."""
    import json

    import fastlam.trainer as ft
    from fastlam.config import load_config

    src = tmp_path / "videos"
    src.mkdir()
    for key in ("vp9_25", "vp8_2997", "h264_25"):
        os.symlink(clips[key], src / os.path.basename(clips[key]))
    base = [f"data.source={src}", f"data.loader={loader}", "data.fps=25", "data.clips_per_video=4",
            "model.image_size=32", "model.frames=8", "model.encoder.patch_size=8", "model.idm.width=32",
            "model.predictor.width=32", "batch_size=2", "progress=false", "log_every=1", "steps=4", "ckpt_every=2"]
    cfg = lambda out: load_config(ft.TrainConfig, "configs/tiny_cpu.yaml", base + [f"out_dir={out}"])
    routed = []
    real_iter = ft.iter_batches

    def spy(*args, **kwargs):
        routed.append(ft.use_dali(args[0], args[2]))
        return real_iter(*args, **kwargs)

    monkeypatch.setattr(ft, "iter_batches", spy)
    ft.train(cfg(tmp_path / "full"))
    assert routed == [True]

    crash_in_forward(lambda: ft.train(cfg(tmp_path / "part")), 3, monkeypatch)
    ft.train(cfg(tmp_path / "part"), resume=True)
    read = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert read(tmp_path / "part") == read(tmp_path / "full")
