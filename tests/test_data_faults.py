"""Faults injected into the data path and the run folder (issue 26); every case must end with
nothing lost: an exact resume, or a clear report of exactly what was skipped.

Grouped by the issue's findings:

* finding 1: a training run killed with SIGKILL mid-epoch (not at an epoch boundary) and
  resumed gives the uninterrupted run's losses and final weights bit for bit (shards, with and
  without loader workers; the DALI stream on CPU where DALI is installed), and the shard stream
  itself resumes in the same order from any batch;
* finding 5: a kill between the data-state and model-checkpoint writes, a full disk at the
  first checkpoint, an unreadable directory, a manifest missing a column, a manifest whose
  videos moved, a manifest that overstates durations.

Tiny videos are made with PyAV: frame i of video k has grey level 10 + 6 * ((i + 7k) % 40).
"""
import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import fastlam.local_runner as local_runner  # noqa: E402
import fastlam.trainer as trainer  # noqa: E402

from fastlam.config import load_config  # noqa: E402
from fastlam.data import VideoClipDataset  # noqa: E402
from fastlam.data.__main__ import main as data_main  # noqa: E402
from fastlam.data.manifest import build_manifest, load_manifest, scan_sources  # noqa: E402
from fastlam.data.shards import ShardLoader, ShardStream, merge_states  # noqa: E402
from fastlam.data.stream_state import load_stream_state, save_stream_state  # noqa: E402
from fastlam.data.walk import UnreadableWarning  # noqa: E402
from fastlam.inputs import InputError, MissingInputError  # noqa: E402
from fastlam.run_folder import RunFolderError  # noqa: E402
from fastlam.train import TrainConfig, train  # noqa: E402
from shard_corpus import make_corpus, ramp_frame  # noqa: E402
from simulated_crash import sigkill_in_forward  # noqa: E402

CLIP = dict(num_frames=4, fps=4.0, size=(32, 32))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 videos (1.2-2.3 s) of distinct content, their manifest, and shards of ~3 samples."""
    made = make_corpus(tmp_path_factory.mktemp("faults"), 12, lambda paths: 3 * 2600,
                       frame=lambda k, i: ramp_frame(i, offset=7 * k))
    return {**made, "shards": made["shards"] / "shards.json"}


def tiny(source, out, *extra) -> TrainConfig:
    return load_config(TrainConfig, "configs/tiny_cpu.yaml", [
        f"data.source={source}", "model.image_size=32", "model.frames=8", "model.encoder.patch_size=8",
        "model.idm.width=32", "model.predictor.width=32", "progress=false", "log_every=1",
        f"out_dir={out}", *extra])


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest |a - b| over the final models' tensors; asserts the same keys (inf if any differ in shape)."""
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].shape == wb[k].shape else float("inf"))
               for k in wa if wa[k].numel())


def tiny_overrides(source, out, *extra) -> list[str]:
    return [f"data.source={source}", "model.image_size=32", "model.frames=8", "model.encoder.patch_size=8",
            "model.idm.width=32", "model.predictor.width=32", "progress=false", "log_every=1",
            f"out_dir={out}", *extra]


# ============================================================================ finding 1
def _batches(loader, count=None) -> list[list[int]]:
    out = []
    for k, _ in enumerate(loader):
        out.append(list(loader.last_ids))
        if count is not None and k + 1 == count:
            break
    return out


@pytest.mark.parametrize("workers, batch", [(0, 2), (2, 3)])
def test_shard_stream_resumes_mid_epoch_in_the_uninterrupted_order(corpus, workers, batch):
    """From any batch of the epoch, a resumed loader hands out the clips the uninterrupted one
    would, in its order (with 2 workers and batches of 3 the resume lands between workers'
    turns: the plan's workers are rotated to match)."""
    def make():
        return ShardLoader(ShardStream(str(corpus["shards"]), seed=5, shuffle_buffer=4, **CLIP),
                           batch_size=batch, num_workers=workers)

    full = _batches(make())
    assert sorted(sum(full, [])) == list(range(12))
    for cut in range(1, len(full)):
        first = make()
        done = _batches(first, cut)
        resumed = make()
        resumed.load_state_dict(first.state_dict())
        assert done + _batches(resumed) == full, f"resumed after batch {cut}"
        assert resumed.epoch == 1


@pytest.mark.slow  # 2 x 3 loaders with 2 workers each: ~13 s on 2 cores
def test_two_ranks_resume_mid_epoch_in_the_uninterrupted_order(corpus):
    """Two ranks checkpointed after 1 or 2 batches (bitmaps merged, as the trainer saves them)
    and resumed on two ranks: each rank continues its own uninterrupted order."""
    def ranks():
        return [ShardLoader(ShardStream(str(corpus["shards"]), seed=7, rank=r, world_size=2, shuffle_buffer=3,
                                        drop_last=True, **CLIP), batch_size=1, num_workers=2) for r in range(2)]

    full = [_batches(loader) for loader in ranks()]
    for cut in (1, 2):
        first = ranks()
        done = [_batches(loader, cut) for loader in first]
        merged = merge_states([loader.state_dict() for loader in first])
        resumed = ranks()
        for loader in resumed:
            loader.load_state_dict(merged)
        assert [d + _batches(loader) for d, loader in zip(done, resumed)] == full


def test_shard_loader_leaves_the_global_rng_alone(corpus):
    """Making the shard DataLoader draws nothing from torch's global RNG (the noisy
    regularizer's noise comes from it, and a resumed run makes one more loader)."""
    loader = ShardLoader(ShardStream(str(corpus["shards"]), seed=5, shuffle_buffer=4, **CLIP), batch_size=2)
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    next(iter(loader))
    assert torch.equal(torch.rand(4), want)


def _kill_and_resume(tmp_path, source, extra: list[str], kill_at: int, ckpt_step: int, killed=lambda part: None):
    """Train uninterrupted; train again, SIGKILLed in step ``kill_at`` (``killed(run folder)``
    checks what it left), and resume: losses and final weights must be the same."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny(source, full, *extra))
    sigkill_in_forward(tiny_overrides(source, part, *extra), kill_at)
    latest = torch.load(part / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["step"] == ckpt_step
    killed(part)
    train(tiny(source, part, *extra), resume=True)
    assert losses(part) == losses(full)
    assert max_weight_difference(part, full) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("workers, batch, steps", [(0, 2, 8), (2, 3, 6)])
def test_sigkill_mid_epoch_on_shards_resumes_bit_for_bit(tmp_path, corpus, workers, batch, steps):
    """12 clips an epoch; checkpoint at step 3 (6 or 9 clips consumed: mid-epoch), SIGKILL in
    step 5, --resume: same losses at every step (across the epoch boundary) and the same final
    weights as the run that was never killed."""
    extra = [f"data.num_workers={workers}", f"batch_size={batch}", f"steps={steps}", "ckpt_every=3",
             "data.shuffle_buffer=4"]

    def mid_epoch(part):
        state = load_stream_state(part / "checkpoints", 3)
        consumed = int(np.unpackbits(np.frombuffer(state["consumed"], np.uint8), count=12).sum())
        assert state["epoch"] == 0 and consumed == 3 * batch < 12

    _kill_and_resume(tmp_path, corpus["shards"], extra, kill_at=5, ckpt_step=3, killed=mid_epoch)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["manifest", "videos"])
def test_sigkill_mid_epoch_on_a_manifest_or_folder_resumes_bit_for_bit(tmp_path, corpus, source):
    """The DataLoader path (manifest or folder, one clip per video: 6 steps an epoch): killed
    in step 5 after the step-3 checkpoint, resumed across the epoch boundary, the same run."""
    extra = ["data.clips_per_video=1", "batch_size=2", "steps=8", "ckpt_every=3"]
    _kill_and_resume(tmp_path, corpus[source], extra, kill_at=5, ckpt_step=3)


@pytest.mark.slow
def test_sigkill_mid_epoch_on_the_dali_stream_resumes_bit_for_bit(tmp_path, corpus, monkeypatch):
    """The DALI stream on CPU (H.264 takes the PyAV fallback in DALI's workers): same check."""
    pytest.importorskip("nvidia.dali")
    monkeypatch.setenv("FASTLAM_NO_EXT", "1")
    extra = ["data.loader=dali_stream", "device=cpu", "batch_size=3", "steps=6", "ckpt_every=3"]
    _kill_and_resume(tmp_path, corpus["manifest"], extra, kill_at=5, ckpt_step=3)


# ============================================================================ finding 5
@pytest.mark.slow
@pytest.mark.parametrize("interrupted", ["model checkpoint", "pruning"])
def test_kill_between_data_state_and_model_checkpoint_resumes(tmp_path, corpus, monkeypatch, interrupted):
    """keep_checkpoints=1, interrupted at the second checkpoint (step 4) after its data state
    was written and before (or after) the model checkpoint: latest names a step whose data state
    is on disk, and --resume continues exactly."""
    extra = ["batch_size=2", "steps=7", "ckpt_every=2", "keep_checkpoints=1", "data.shuffle_buffer=4"]
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny(corpus["shards"], full, *extra))
    # The model checkpoint is written by the local runner, the data states are pruned by the trainer.
    module, name = ((local_runner, "save_checkpoint_copies") if interrupted == "model checkpoint"
                    else (trainer, "prune_stream_states"))
    real, calls = getattr(module, name), {"n": 0}

    def dies_the_second_time(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed between the writes")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dies_the_second_time)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(corpus["shards"], part, *extra))
    monkeypatch.setattr(module, name, real)
    ckpts = part / "checkpoints"
    latest = torch.load(ckpts / "latest.pt", weights_only=True)["step"]
    assert latest == (2 if interrupted == "model checkpoint" else 4)
    assert (ckpts / f"data_state_{latest:07d}.json").is_file()
    train(tiny(corpus["shards"], part, *extra), resume=True)
    assert losses(part) == losses(full)
    assert max_weight_difference(part, full) == 0.0
    # Pruned after the model checkpoint: one data state, the final step's.
    assert sorted(p.name for p in ckpts.glob("data_state_*.json")) == ["data_state_0000007.json"]


def test_data_state_is_written_atomically_and_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    state = {"epoch": 1, "n": 9, "seed": 3, "consumed": b"\x81\x00", "plan_consumed": b"\x01\x00",
             "plan": {"world_size": 1, "workers": 1, "shuffle_buffer": 4, "drop_last": True}}
    path = save_stream_state(tmp_path, 5, state)
    assert len(synced) == 1 and str(synced[0]).startswith(str(tmp_path / ".data_state_0000005.json."))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    back = load_stream_state(tmp_path, 5)
    assert {k: back[k] for k in state} == state


TINY_SYNTHETIC = [
    "data.source=synthetic", "data.synthetic_clips=8", "model.image_size=16", "model.frames=4",
    "model.encoder.kind=vit", "model.encoder.patch_size=8", "model.encoder.width=16", "model.encoder.depth=1",
    "model.encoder.heads=2", "model.idm.width=16", "model.idm.depth=1", "model.idm.heads=2",
    "model.predictor.width=16", "model.predictor.depth=1", "model.predictor.heads=2", "model.action_dim=8",
    "batch_size=2", "progress=false", "log_every=1", "ckpt_every=2", "steps=4",
]


@pytest.mark.slow
def test_disk_full_at_the_first_checkpoint_then_resume_starts_from_step_0(tmp_path, monkeypatch, capsys):
    """ENOSPC while the first checkpoint is written: a plain rerun points at --resume, and
    --resume runs the whole thing from step 0 (saying so) instead of the old dead end."""
    cfg = lambda out: load_config(TrainConfig, "configs/tiny_cpu.yaml", TINY_SYNTHETIC + [f"out_dir={out}"])  # noqa: E731
    train(cfg(tmp_path / "full"))
    run = tmp_path / "run"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as e:
        train(cfg(run))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not list((run / "checkpoints").glob("*.pt")) and not list((run / "checkpoints").glob(".*.tmp"))
    with pytest.raises(RunFolderError, match=r"--resume to continue it \(no checkpoint was completed"):
        train(cfg(run))
    capsys.readouterr()
    train(cfg(run), resume=True)
    printed = capsys.readouterr().out
    assert "no checkpoint in" in printed and "starting from step 0" in printed
    assert losses(run) == losses(tmp_path / "full")
    assert max_weight_difference(run, tmp_path / "full") == 0.0


def test_resume_of_a_folder_with_no_run_is_still_refused(tmp_path):
    with pytest.raises(RunFolderError, match="drop --resume"):
        train(load_config(TrainConfig, "configs/tiny_cpu.yaml", TINY_SYNTHETIC + [f"out_dir={tmp_path / 'none'}"]),
              resume=True)


@pytest.fixture
def source_with_unreadable_dir(tmp_path, monkeypatch, corpus):
    """A source folder with a video in ``ok/`` and one in ``locked/``, which cannot be listed:
    chmod 000, or, as root (who reads it anyway), an os.scandir that raises PermissionError."""
    root = tmp_path / "src"
    for sub in ("ok", "locked"):
        (root / sub).mkdir(parents=True)
        shutil.copy(corpus["videos"] / "v00.mp4", root / sub / "a.mp4")
    locked = root / "locked"
    if os.geteuid() != 0:
        locked.chmod(0)
        yield root
        locked.chmod(0o755)  # so that tmp_path can be removed
        return
    real = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    yield root


def test_unreadable_directory_is_reported_by_index_and_dataset(tmp_path, source_with_unreadable_dir, capsys):
    root = source_with_unreadable_dir
    locked = str((root / "locked").resolve())
    with pytest.warns(UnreadableWarning, match="1 directory could not be read"):
        assert scan_sources([root]) == [(str((root / "ok" / "a.mp4").resolve()), -1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableWarning)
        assert data_main(["index", str(root), "--out", str(tmp_path / "m.jsonl"), "--workers", "0",
                          "--quiet"]) == 0
        out = capsys.readouterr().out
        ds = VideoClipDataset(str(root), **CLIP)
    assert f"unreadable directory (its videos are not indexed): {locked}" in out
    summary = json.loads((tmp_path / "m.jsonl.summary.json").read_text())
    assert [u["path"] for u in summary["unreadable_dirs"]] == [locked]
    assert [u["path"] for u in ds.unreadable] == [str(root / "locked")]
    assert "1 directory of the source could not be read" in ds.report() and str(root / "locked") in ds.report()


def test_manifest_missing_a_column_is_a_config_error(tmp_path, corpus, capsys):
    rows = pq.read_table(corpus["manifest"]).to_pylist()
    for column in ("label", "duration_s"):
        bad = tmp_path / f"no_{column}.jsonl"
        bad.write_text("".join(json.dumps({k: v for k, v in r.items() if k != column}) + "\n" for r in rows))
        assert data_main(["shard", str(bad), "--out", str(tmp_path / f"shards_{column}"), "--quiet"]) == 2
        assert f"has no column '{column}'" in capsys.readouterr().err
    pq.write_table(pq.read_table(corpus["manifest"]).drop(["num_frames"]), tmp_path / "no_frames.parquet")
    with pytest.raises(InputError, match="has no column 'num_frames'"):
        load_manifest(tmp_path / "no_frames.parquet")


def test_manifest_whose_videos_moved_fails_before_the_run_folder_exists(tmp_path, corpus):
    moved = tmp_path / "corpus"
    shutil.copytree(corpus["videos"], moved / "videos")
    build_manifest([moved / "videos"], moved / "m.parquet", workers=0, progress=False)
    shutil.move(moved / "videos", tmp_path / "elsewhere")
    out = tmp_path / "run"
    with pytest.raises(MissingInputError, match="the videos moved since it was indexed"):
        train(tiny(moved / "m.parquet", out, "batch_size=2", "steps=1"))
    assert not out.exists()


def test_overstated_durations_are_reported_not_silently_moved(tmp_path, corpus):
    """A manifest claiming 10x the real durations: every item still yields a clip (moved
    earlier), and the report lists the files whose drawn start found no frame."""
    rows = pq.read_table(corpus["manifest"]).to_pylist()
    wrong = tmp_path / "long.jsonl"
    wrong.write_text("".join(json.dumps(dict(r, duration_s=r["duration_s"] * 10)) + "\n" for r in rows))
    ds = VideoClipDataset(str(wrong), seed=0, bad_file_log=tmp_path / "bad.jsonl", **CLIP)
    clips = [ds[i] for i in range(len(ds))]
    assert all(c.shape == (3, 4, 32, 32) for c in clips) and not ds.bad_files
    assert len(ds.overstated) >= 8  # a start drawn in [0, 10 x duration) lands past the end 9 times in 10
    assert all("stated duration" in what for what in ds.overstated.values())
    assert "end before their stated duration" in ds.report()
    # What one copy (a DataLoader worker) found, another (the main process) reports.
    other = VideoClipDataset(str(wrong), seed=0, bad_file_log=tmp_path / "bad.jsonl", **CLIP)
    assert other.overstated == ds.overstated
    right = VideoClipDataset(str(corpus["manifest"]), seed=0, **CLIP)
    for i in range(len(right)):
        right[i]
    assert not right.overstated
