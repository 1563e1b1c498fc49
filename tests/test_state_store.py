"""The frozen-encoder state store (issue 28, item 1): encode video shards once, train from states.

* encode -> train 3 steps from states gives training from the video shards' losses: exactly with
  float32 storage, within bf16 rounding with bfloat16 storage;
* a store made by another encoder (or for other clips) is refused, naming both fingerprints;
* an encode SIGKILLed mid-way and resumed writes the very store an uninterrupted encode writes,
  and a resume with other settings is refused;
* training from states SIGKILLed mid-epoch resumes with the uninterrupted run's losses;
* two ranks split an epoch's states between them; a damaged states member is a bad sample,
  reported, not fatal; ``python -m fastlam.data encode`` is the encode command.

Tiny videos are made with PyAV: frame i of video k is grey level 10 + 6 * ((i + 7k) % 40) with a
white square moving right, so states differ between clips and between frames.
"""
import json
import signal
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

av = pytest.importorskip("av")
pytest.importorskip("pyarrow")

from fastlam.config import ConfigError, load_config  # noqa: E402
from fastlam.data.__main__ import main as data_main  # noqa: E402
from fastlam.data.shards import ShardLoader  # noqa: E402
from fastlam.data.state_store import StateStoreError, StateStream, read_store_header  # noqa: E402
from fastlam.encode_states import encode_store  # noqa: E402
from fastlam.train import TrainConfig, train  # noqa: E402
from shard_corpus import make_corpus, ramp_frame  # noqa: E402
from simulated_crash import sigkill_in_forward  # noqa: E402
from subprocess_guard import run_guarded  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 videos (1.2-2.3 s), their video shards of ~3 samples, and a float32 state store of them."""
    def frame(k: int, i: int) -> np.ndarray:  # the ramp, and a white square moving across it
        f = ramp_frame(i, offset=7 * k)
        x = (2 * i + 5 * k) % 52
        f[16:28, x:x + 12] = 255
        return f

    root = tmp_path_factory.mktemp("states")
    shards = make_corpus(root, 12, lambda paths: 3 * 2600, frame=frame)["shards"] / "shards.json"
    encode_store(tiny(shards, root / "unused"), str(root / "f32"), dtype="float32", progress=False)
    return {"root": root, "shards": shards, "f32": root / "f32" / "states.json"}


def overrides(source, out, *extra) -> list[str]:
    return [f"data.source={source}", "model.image_size=32", "model.frames=8", "model.encoder.patch_size=8",
            "model.idm.width=32", "model.predictor.width=32", "progress=false", "log_every=1", "batch_size=4",
            "diagnostics_clips=0", f"out_dir={out}", *extra]


def tiny(source, out, *extra) -> TrainConfig:
    return load_config(TrainConfig, "configs/tiny_cpu.yaml", overrides(source, out, *extra))


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def store_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_from_states_gives_the_video_runs_losses(corpus, tmp_path, dtype):
    root = corpus["root"]
    store = corpus["f32"]
    if dtype != "float32":
        store = encode_store(tiny(corpus["shards"], tmp_path / "x"), str(tmp_path / dtype), dtype=dtype,
                             progress=False)["index_path"]
    index = read_store_header(store)
    assert index["samples"] == 12 and not index["bad"]
    assert index["header"]["dtype"] == dtype
    video_run = root / "run_video"
    if not video_run.exists():  # shared by both storage dtypes
        train(tiny(corpus["shards"], video_run, "steps=3"))
    train(tiny(store, tmp_path / "run_states", "steps=3"))
    want, got = losses(video_run), losses(tmp_path / "run_states")
    assert len(got) == 3
    if dtype == "float32":
        assert got == want  # the same clips, batches and encoder output, bit for bit
    else:  # bf16 keeps 8 bits of mantissa: the L1 loss moves by about its rounding
        assert got != want
        np.testing.assert_allclose(got, want, rtol=2e-2)


def test_each_sample_records_where_its_clip_came_from(corpus):
    metas = []
    for shard in sorted(corpus["f32"].parent.glob("states-*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert sorted(m["sample"] for m in metas) == list(range(12))
    header = read_store_header(corpus["f32"])["header"]
    for meta in metas:
        assert meta["source"].endswith(".mp4") and meta["fps"] == 4.0 and meta["num_frames"] == 8
        assert 0.0 <= meta["start_s"] < 2.3 - 7 / 4.0
        top, left, h, w = meta["crop_box"]
        rh, rw = meta["resized"]
        assert (h, w) == (32, 32) and 0 <= top <= rh - 32 and 0 <= left <= rw - 32 and (rh, rw) == (32, 43)
        assert meta["fingerprint"] == header["fingerprint"] and meta["shape"] == [4, 16, 24]
    assert len({m["crop_box"][1] for m in metas}) > 1  # random crops, drawn per sample
    assert any(m["padded"] for m in metas) and any(m["start_s"] > 0 for m in metas)  # 1.2 s videos are padded


def test_a_store_of_another_encoder_is_refused(corpus, tmp_path):
    with pytest.raises(ConfigError, match="another encoder") as e:
        train(tiny(corpus["f32"], tmp_path / "run", "steps=1", "model.encoder.token_norm=true"))
    fp = read_store_header(corpus["f32"])["header"]["fingerprint"]
    assert fp[:16] in str(e.value) and "fingerprint" in str(e.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="fps 4.0 in the store, 8.0 here"):
        train(tiny(corpus["f32"], tmp_path / "run2", "steps=1", "data.fps=8"))


ENCODE_KILLED = r"""
import os, signal, sys
from fastlam.data.state_store import StateStoreWriter
from fastlam.encode_states import main

calls = {"n": 0}
write = StateStoreWriter.write_shard

def killing_write(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return write(self, *args, **kwargs)

StateStoreWriter.write_shard = killing_write
sys.exit(main(sys.argv[1:]))
"""


def test_an_encode_killed_midway_resumes_into_the_uninterrupted_store(corpus, tmp_path):
    out = tmp_path / "store"
    args = ["--config", "configs/tiny_cpu.yaml", "--out", str(out), "--dtype", "float32", "--quiet",
            *overrides(corpus["shards"], tmp_path / "x")]
    proc = run_guarded([sys.executable, "-c", ENCODE_KILLED, *args], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    partial = store_files(out)
    assert "states.json" not in partial  # no index until every shard is in place
    assert sorted(n for n in partial if n.endswith(".tar")) == ["states-000000.tar", "states-000001.tar"]
    assert data_main(["encode", *args]) == 0  # the resume, through python -m fastlam.data encode
    assert store_files(out) == store_files(corpus["f32"].parent)
    # A resume with other settings would mix two stores: refused.
    with pytest.raises(StateStoreError, match="other settings"):
        encode_store(tiny(corpus["shards"], tmp_path / "x"), str(out), dtype="bfloat16", progress=False)


def test_training_from_states_killed_mid_epoch_resumes_exactly(corpus, tmp_path):
    """Batches of 2 from 12 states: 6 a epoch; killed in step 5 after the step-4 checkpoint (mid
    epoch), resumed: the uninterrupted run's losses for steps 5-8 (across the epoch boundary) and
    its final weights, bit for bit."""
    extra = ["steps=8", "ckpt_every=4", "batch_size=2", "data.shuffle_buffer=4"]
    train(tiny(corpus["f32"], tmp_path / "whole", *extra))
    cut = overrides(corpus["f32"], tmp_path / "cut", *extra)
    sigkill_in_forward(cut, 5)
    train(tiny(corpus["f32"], tmp_path / "cut", *extra), resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    whole, cut = (load_file(str(tmp_path / run / "final" / "model.safetensors")) for run in ("whole", "cut"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_two_ranks_split_an_epoch_and_a_damaged_member_is_a_bad_sample(corpus, tmp_path):
    seen = []
    for rank in range(2):
        stream = StateStream(str(corpus["f32"]), seed=3, rank=rank, world_size=2, shuffle_buffer=4)
        loader = ShardLoader(stream, batch_size=2)
        for batch in loader:
            assert batch.shape == (2, 4, 16, 24) and batch.dtype == torch.float32
            seen += loader.last_ids
            if loader.epoch > 0 or len(loader) == 0:
                break
    assert sorted(seen) == list(range(12))

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name, data in store_files(corpus["f32"].parent).items():
        (damaged / name).write_bytes(data)
    tar = bytearray((damaged / "states-000001.tar").read_bytes())
    with tarfile.open(damaged / "states-000001.tar") as t:
        member = next(m for m in t if m.name.endswith(".states"))
    tar[member.offset_data + 10] ^= 0xFF  # one byte of one sample's states
    (damaged / "states-000001.tar").write_bytes(bytes(tar))
    stream = StateStream(str(damaged / "states.json"), seed=3, shuffle_buffer=4,
                         bad_file_log=tmp_path / "bad.jsonl")
    loader = ShardLoader(stream, batch_size=1)
    got = [int(loader.last_ids[0]) for _ in zip(range(12), loader)]
    assert len(got) == 11 and len(loader.bad) == 1
    assert "sha256" in next(iter(loader.bad.values()))


def test_a_store_written_to_and_read_from_fsspec_memory(corpus, tmp_path):
    """The writer publishes through fsspec (temporary name, then a move); the reader fetches
    the shards through the FileCache: the same states as the local store's, the same index."""
    fsspec = pytest.importorskip("fsspec")
    from fastlam.data.remote import FileCache

    fs = fsspec.filesystem("memory")
    try:
        index = encode_store(tiny(corpus["shards"], tmp_path / "x"), "memory://fastlam-states-test/store",
                             dtype="float32", progress=False)
        assert index["index_path"] == "memory://fastlam-states-test/store/states.json"
        assert not [p for p in fs.ls("/fastlam-states-test/store", detail=False) if p.rsplit("/", 1)[-1].startswith(".")]
        local = read_store_header(corpus["f32"])
        assert [s["sha256"] for s in index["shards"]] == [s["sha256"] for s in local["shards"]]
        remote = ShardLoader(StateStream(index["index_path"], cache=FileCache(tmp_path / "cache"), shuffle_buffer=4),
                             batch_size=3)
        here = ShardLoader(StateStream(str(corpus["f32"]), shuffle_buffer=4), batch_size=3)
        for a, b in zip(remote, here):
            assert remote.last_ids == here.last_ids and torch.equal(a, b)
            if len(remote) == 0:
                break
    finally:
        fs.rm("/fastlam-states-test", recursive=True)


def test_a_vit_encoder_store_trains_like_its_video(corpus, tmp_path):
    """The ViT path (a V-JEPA 2 checkpoint's, here its seeded random init as the trainer builds
    it): the store's encoder is the run's (the fingerprint check passes) and 2 steps from the
    float32 store match the video run's losses (encoder batches of 3 vs 4: float rounding)."""
    vit = ["model.encoder.kind=vit", "model.encoder.pool=1", "model.encoder.width=32", "model.encoder.depth=1",
           "model.encoder.heads=2", "steps=2"]
    store = encode_store(tiny(corpus["shards"], tmp_path / "x", *vit), str(tmp_path / "vit"), dtype="float32",
                         batch_size=3, progress=False)["index_path"]
    assert read_store_header(store)["header"]["shape"] == [4, 16, 32]
    train(tiny(corpus["shards"], tmp_path / "video", *vit))
    train(tiny(store, tmp_path / "states", *vit))
    np.testing.assert_allclose(losses(tmp_path / "states"), losses(tmp_path / "video"), rtol=1e-5)
    with pytest.raises(ConfigError, match="another encoder"):  # another seed: another random ViT
        train(tiny(store, tmp_path / "seed1", *vit, "seed=1"))
