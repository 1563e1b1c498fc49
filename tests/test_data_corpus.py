"""Corpus-scale data: manifests (index), WebDataset shards, the exactly resumable shard stream
(including a 4 -> 2 rank resume), and fsspec sources (memory filesystem, local HTTP server).

Tiny videos are generated with PyAV; frame i of video k has grey level 10 + 6 * (i % 40)."""
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("pyarrow")

from fastlam.data import VideoClipDataset  # noqa: E402
from fastlam.data import dataset as dataset_mod  # noqa: E402
from fastlam.data import manifest as manifest_mod  # noqa: E402
from fastlam.data.manifest import build_manifest, load_manifest, scan_sources  # noqa: E402
from fastlam.data.remote import FileCache  # noqa: E402
from fastlam.data.shards import (  # noqa: E402
    ShardLoader, ShardStream, expand_braces, merge_states, write_shards)
from shard_corpus import make_corpus, ramp_video  # noqa: E402
from simulated_crash import crash_in_forward  # noqa: E402

CLIP = dict(num_frames=4, fps=4.0, size=(32, 32))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 good videos (1.2-2.3 s), a manifest of them, and shards of ~3 samples."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), 12, lambda paths: 3 * 2600)


# ------------------------------------------------------------------------------ index
def _bad_files(folder: Path, good: Path):
    data = good.read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("not a video\n" * 30)
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with av.open(str(folder / "audio.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for k in range(5):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, k * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return {"empty.mp4": "zero-length", "notes.mp4": "cannot open", "truncated.mp4": "",
            "garbage.mp4": "cannot open", "audio.mp4": "no video stream"}


def test_index_sources_bad_files_and_summary(tmp_path, corpus):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = [ramp_video(folder / "a.mp4", 40), ramp_video(folder / "b.mp4", 50, rate=30)]
    expected_bad = _bad_files(folder, good[0])
    # A V-JEPA 2-style list ("path label", relative to the list) and a plain path list.
    (tmp_path / "train.csv").write_text("mixed/a.mp4 3\nmixed/b.mp4 7\n")
    (tmp_path / "more.txt").write_text(f"# a comment\n{corpus['paths'][0]}\n")
    items = scan_sources([tmp_path / "train.csv", folder, tmp_path / "more.txt"])
    assert items[:2] == [(str(good[0]), 3), (str(good[1]), 7)]  # first listing wins (labels kept)
    assert len(items) == 2 + len(expected_bad) + 1

    out = tmp_path / "m.parquet"
    s = build_manifest([tmp_path / "train.csv", folder, tmp_path / "more.txt"], out,
                       workers=0, progress=False)
    assert s["complete"] and s["files"] == 8 and s["ok"] == 3 and s["bad"] == 5
    assert s["codecs"] == {"h264": 3}
    assert s["hours"] == pytest.approx((40 / 25 + 50 / 30 + 30 / 25) / 3600, rel=0.05)
    bad = {Path(b["path"]).name: b["reason"] for b in s["bad_files"]}
    assert set(bad) == set(expected_bad)
    for name, reason in expected_bad.items():
        assert reason in bad[name] and bad[name], (name, bad[name])
    assert json.loads((tmp_path / "m.parquet.summary.json").read_text())["bad"] == 5
    assert not (tmp_path / "m.parquet.partial.jsonl").exists()

    import pyarrow.parquet as pq

    t = pq.read_table(out).to_pylist()
    row = next(r for r in t if r["path"] == str(good[1]))
    assert row["ok"] and row["label"] == 7 and row["fps"] == pytest.approx(30)
    assert row["num_frames"] == 50 and (row["width"], row["height"]) == (64, 48)
    assert row["bytes"] == good[1].stat().st_size
    m = load_manifest(out)
    assert len(m) == 3 and m.bad == 5 and list(m.paths) == sorted(m.paths)
    assert m.row_of(str(good[1])) >= 0 and m.row_of(str(folder / "empty.mp4")) == -1


def test_index_interrupted_and_resumed(tmp_path, corpus, monkeypatch):
    calls = []
    real = manifest_mod.probe_file
    monkeypatch.setattr(manifest_mod, "probe_file", lambda it: calls.append(it[0]) or real(it))
    out = tmp_path / "m.jsonl"
    first = build_manifest([corpus["videos"]], out, workers=0, progress=False, limit=5)
    assert not first["complete"] and first["remaining"] == 7 and len(calls) == 5
    journal = tmp_path / "m.jsonl.partial.jsonl"
    assert len(journal.read_text().splitlines()) == 5
    with open(journal, "a") as f:
        f.write('{"path": "cut mid-wri')  # a kill during a write leaves half a line
    calls.clear()
    done = build_manifest([corpus["videos"]], out, workers=0, progress=False)
    assert done["complete"] and done["ok"] == 12 and done["probed_this_run"] == 7
    assert len(calls) == 7 and not set(calls) & {str(p) for p in corpus["paths"][:5]}
    # Same rows as an uninterrupted run (the corpus fixture's parquet).
    a = [json.loads(x) for x in out.read_text().splitlines()]
    b = load_manifest(corpus["manifest"]).table.to_pylist()
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert [r["duration_s"] for r in a] == [r["duration_s"] for r in b]


def test_index_process_pool(tmp_path, corpus):
    out = tmp_path / "m.parquet"
    s = build_manifest([corpus["videos"]], out, workers=2, progress=True)
    assert s["complete"] and s["ok"] == 12
    assert load_manifest(out).table.to_pylist() == load_manifest(corpus["manifest"]).table.to_pylist()


def test_dataset_from_manifest_never_probes(corpus, monkeypatch):
    plain = VideoClipDataset(corpus["videos"], seed=3, **CLIP)
    want = [plain[i] for i in (0, 5, 11)]

    def no_probe(*a, **k):
        raise AssertionError("a manifest-backed dataset probed a file")

    monkeypatch.setattr(dataset_mod, "probe_opened", no_probe)
    ds = VideoClipDataset(corpus["manifest"], seed=3, **CLIP)
    assert len(ds) == 12 and list(ds.paths) == [str(p) for p in corpus["paths"]]
    for i, w in zip((0, 5, 11), want):
        assert torch.equal(ds[i], w)


# ------------------------------------------------------------------------------ shards
def test_shards_are_webdataset_and_reencode(tmp_path, corpus):
    wds = pytest.importorskip("webdataset")
    index = corpus["index"]
    assert index["samples"] == 12 and len(index["shards"]) >= 3
    assert all(s["bytes"] <= 3 * 2600 + 10240 for s in index["shards"])  # fixed size, one over at most
    urls = [str(corpus["shards"] / s["url"]) for s in index["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert sample["mp4"] == Path(meta["source"]).read_bytes()
        seen[meta["source"]] = meta
    assert sorted(seen) == [str(p) for p in corpus["paths"]]

    out = write_shards(corpus["manifest"], tmp_path / "re", fps=4.0, short_side=24,
                       shard_bytes=1 << 20, progress=False)
    assert out["samples"] == 12 and len(out["shards"]) == 1
    loader = ShardLoader(ShardStream(str(tmp_path / "re" / "shards.json"), **CLIP), batch_size=4)
    metas = []
    for sample in wds.WebDataset(str(tmp_path / "re" / "shard-000000.tar"), shardshuffle=False):
        metas.append(json.loads(sample["json"]))
    assert all(m["fps"] == pytest.approx(4.0) and min(m["width"], m["height"]) == 24 for m in metas)
    src = {str(p): p for p in corpus["paths"]}
    for m in metas:  # every output instant k/4 s of the source is kept
        n_src = int(Path(src[m["source"]]).name[1:3]) * 3 + 30
        assert m["num_frames"] == int(np.ceil(n_src / 25 * 4 - 1e-9))
    batches = list(loader)
    assert sum(b.shape[0] for b in batches) == 12 and batches[0].shape[1:] == (3, 4, 32, 32)


def _epoch_ids(loader, batches=None):
    ids = []
    for k, _ in enumerate(loader):
        ids += loader.last_ids
        if batches is not None and k + 1 == batches:
            break
    return ids


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_stream_exact_resume(corpus, workers):
    src = str(corpus["shards"] / "shards.json")

    def make():
        return ShardLoader(ShardStream(src, seed=5, shuffle_buffer=4, **CLIP), batch_size=2,
                           num_workers=workers)

    full = make()
    order = _epoch_ids(full)
    assert sorted(order) == list(range(12)) and full.epoch == 1  # one epoch, each clip once
    assert order != sorted(order)  # shuffled (shards and buffer)

    a = make()
    first = _epoch_ids(a, batches=2)
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    assert len(b) == 4
    rest = _epoch_ids(b)
    assert sorted(first + rest) == list(range(12)) and b.epoch == 1
    # The resumed clips are the same clips (start and crop depend on (seed, epoch, id) only).
    c = make()
    c.load_state_dict(state)
    it = iter(c)
    batch = next(it)
    ids = list(c.last_ids)
    ref = ShardStream(src, seed=5, shuffle_buffer=1, **CLIP)
    clips = {g: clip for clip, g, _ in ref}
    for k, g in enumerate(ids):
        assert torch.equal(batch[k], clips[g])
    # Next epoch: a new order, again each clip once.
    nxt = _epoch_ids(b)
    assert sorted(nxt) == list(range(12)) and nxt != order and b.epoch == 2


def test_resume_from_4_ranks_on_2(corpus):
    src = str(corpus["shards"] / "shards.json")

    def ranks(world):
        return [ShardLoader(ShardStream(src, seed=2, rank=r, world_size=world, shuffle_buffer=3,
                                        drop_last=True, **CLIP), batch_size=1) for r in range(world)]

    four = ranks(4)
    assert [len(l) for l in four] == [3, 3, 3, 3]
    seen = []
    for loader in four:  # lock-step: every rank trains 2 of its 3 batches, then the checkpoint
        seen += _epoch_ids(loader, batches=2)
    assert len(set(seen)) == 8
    merged = merge_states([l.state_dict() for l in four])
    two = ranks(2)
    for loader in two:
        loader.load_state_dict(merged)
    assert [len(l) for l in two] == [2, 2]
    after = [_epoch_ids(l) for l in two]
    assert sorted(seen + after[0] + after[1]) == list(range(12))
    assert all(l.epoch == 1 for l in two)
    # merging ranks at different epochs is refused
    with pytest.raises(ValueError, match="epoch"):
        merge_states([two[0].state_dict(), four[0].state_dict()])


def test_shard_stream_argument_errors(corpus):
    src = str(corpus["shards"] / "shards.json")
    with pytest.raises(ValueError, match="rank"):
        ShardStream(src, rank=2, world_size=2)
    with pytest.raises(ValueError, match="shuffle_buffer"):
        ShardStream(src, shuffle_buffer=0)
    loader = ShardLoader(ShardStream(src, **CLIP), batch_size=2)
    bad = dict(loader.state_dict(), seed=9)
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict(bad)
    assert expand_braces("s-{008..010}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar"]


# ------------------------------------------------------------------------------ fsspec
def test_fsspec_memory_shards_and_bounded_cache(tmp_path, corpus):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    try:
        index = write_shards(corpus["manifest"], "memory://fastlam-test/shards",
                             shard_bytes=3 * 2600, progress=False, seed=1)
        assert index["index_path"] == "memory://fastlam-test/shards/shards.json"
        assert fs.exists("/fastlam-test/shards/shard-000000.tar")
        biggest = max(s["bytes"] for s in index["shards"])
        cache = FileCache(tmp_path / "cache", max_bytes=2 * biggest)
        loader = ShardLoader(ShardStream(index["index_path"], cache=cache, **CLIP), batch_size=3)
        assert sorted(_epoch_ids(loader)) == list(range(12))
        assert cache.bytes_used() <= 2 * biggest  # bounded: older shards were evicted
        assert cache.fetched == len(index["shards"])
        # The brace pattern works without the index (sample counts from the tar headers).
        n = len(index["shards"])
        pattern = "memory://fastlam-test/shards/shard-{000000..%06d}.tar" % (n - 1)
        assert ShardStream(pattern, cache=cache, **CLIP).n == 12
    finally:
        fs.rm("/fastlam-test", recursive=True)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges (what fsspec's HTTP reads use), quiet."""

    def log_message(self, *a):
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        a, _, b = rng.split("=", 1)[1].partition("-")
        a, b = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
        self.send_header("Content-Length", str(b - a + 1))
        self.end_headers()
        import io

        return io.BytesIO(data[a:b + 1])


def test_local_http_server_manifest_and_shards(tmp_path, corpus):
    pytest.importorskip("aiohttp")
    import functools

    handler = functools.partial(_RangeHandler, directory=str(corpus["root"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # No timer shuts the server down mid-test (under load this test can take minutes): the
    # finally below always does, and the client's reads carry their own timeouts.
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        # index: remote videos probed through range reads
        urls = [f"{base}/videos/{p.name}" for p in corpus["paths"][:2]]
        s = build_manifest(urls, tmp_path / "remote.parquet", workers=0, progress=False)
        assert s["ok"] == 2, s
        local = load_manifest(corpus["manifest"])
        remote = load_manifest(tmp_path / "remote.parquet")
        assert [remote.meta(i)["num_frames"] for i in range(2)] == \
               [local.meta(local.row_of(str(p)))["num_frames"] for p in corpus["paths"][:2]]
        # shards streamed over HTTP through the cache
        cache = FileCache(tmp_path / "cache", max_bytes=1 << 20)
        loader = ShardLoader(ShardStream(f"{base}/shards/shards.json", cache=cache, **CLIP),
                             batch_size=4)
        assert sorted(_epoch_ids(loader)) == list(range(12))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_train_on_shards_resumes_exactly(tmp_path, corpus, monkeypatch):
    from fastlam.config import load_config
    from fastlam.train import TrainConfig, train

    def cfg(out, *extra):
        return load_config(TrainConfig, "configs/tiny_cpu.yaml", [
            f"data.source={corpus['shards'] / 'shards.json'}", "data.shuffle_buffer=4",
            "model.image_size=32", "model.frames=8", "model.encoder.patch_size=8",
            "model.idm.width=32", "model.predictor.width=32", "batch_size=4", "progress=false",
            "log_every=1", "steps=5", "ckpt_every=3", f"out_dir={out}", *extra])

    train(cfg(tmp_path / "full"))
    part = tmp_path / "part"
    crash_in_forward(lambda: train(cfg(part)), 4, monkeypatch)
    state = json.loads((part / "checkpoints" / "data_state_0000003.json").read_text())
    assert state["epoch"] == 0 and state["n"] == 12  # the whole first epoch (3 x 4 clips) consumed
    train(cfg(part), resume=True)
    loss = lambda run: [(r["step"], r["loss"]) for r in  # noqa: E731
                        map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert loss(part) == loss(tmp_path / "full")


# ------------------------------------------------------------------------------ DALI stream
@pytest.mark.slow
def test_dali_stream_loader_fallback_matches_pyav_and_resumes(corpus, monkeypatch):
    """H.264 on the CPU is not DALI-decodable: every clip takes the per-file PyAV fallback
    inside the pipeline's workers and must equal the dataset's clip; state_dict resumes."""
    pytest.importorskip("nvidia.dali")
    monkeypatch.setenv("FASTLAM_NO_EXT", "1")
    from fastlam.data.dali_stream import DaliStreamLoader
    from fastlam.data.sampler import ShardedClipSampler

    kw = dict(batch_size=3, seed=4, device="cpu", py_workers=1, prefetch=2, **CLIP)
    loader = DaliStreamLoader(corpus["manifest"], **kw)
    assert len(loader) == 4
    it = iter(loader)
    first = next(it)
    state = loader.state_dict()
    assert state["sampler"]["consumed"] == 3
    ds = VideoClipDataset(corpus["manifest"], seed=4, **CLIP)
    order = ShardedClipSampler(len(ds), seed=4, drop_last=True).shard(0).tolist()
    want = torch.stack([ds[i] for i in order[:3]])
    assert torch.allclose(first, want, atol=1e-6)
    del it
    resumed = DaliStreamLoader(corpus["manifest"], **kw)
    resumed.load_state_dict(state)
    second = next(iter(resumed))
    assert torch.allclose(second, torch.stack([ds[i] for i in order[3:6]]), atol=1e-6)
