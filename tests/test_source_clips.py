"""Fixed clips (the training diagnostics' and the evaluations' held-out batch) from every source
type through one data-layer function: folder, text list, ``path label`` .csv list, JSONL and
Parquet manifests, shards. Video k shows one grey level, so a clip says which video it is."""
import warnings

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from fastlam.clips import load_clips  # noqa: E402
from fastlam.config import load_config  # noqa: E402
from fastlam.data.manifest import build_manifest  # noqa: E402
from fastlam.data.shards import write_shards  # noqa: E402
from fastlam.data.source_clips import fixed_clips, source_kind, source_videos  # noqa: E402
from fastlam.diagnostics import held_out_clips  # noqa: E402
from fastlam.train import TrainConfig  # noqa: E402
from video_files import encode_video  # noqa: E402

LEVELS = (40, 90, 140, 190)
CLIP = dict(num_frames=4, fps=4.0, size=(32, 32), seed=3)


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401  # optional: pyarrow (Parquet manifests)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    vids = root / "videos"
    vids.mkdir()
    paths = [encode_video(vids / f"v{k}.mp4", [np.full((40, 48, 3), level, np.uint8)] * (30 + 5 * k))
             for k, level in enumerate(LEVELS)]
    (root / "list.txt").write_text("".join(f"videos/{p.name}\n" for p in paths))
    (root / "list.csv").write_text("".join(f"videos/{p.name} {k}\n" for k, p in enumerate(paths)))
    out = {"folder": vids, "text list": root / "list.txt", "csv list": root / "list.csv"}
    build_manifest([vids], root / "m.jsonl", workers=0, progress=False)
    out["jsonl manifest"] = root / "m.jsonl"
    if _has_pyarrow():
        build_manifest([vids], root / "m.parquet", workers=0, progress=False)
        out["parquet manifest"] = root / "m.parquet"
    write_shards(out["jsonl manifest"], root / "shards", shard_bytes=2 * 2000, progress=False, seed=1)
    out["shards"] = root / "shards" / "shards.json"
    return out


def _levels(clips: torch.Tensor) -> list[int]:
    """The grey level each clip shows (mean over its pixels, in 0..255)."""
    return [int(round(float(c.mean()) * 255)) for c in clips]


def _near(level: int) -> int:
    return min(LEVELS, key=lambda v: abs(v - level))


@pytest.mark.parametrize("kind", ["folder", "text list", "csv list", "jsonl manifest", "parquet manifest"])
def test_video_sources_give_the_same_clips(sources, kind):
    if kind not in sources:
        pytest.skip("pyarrow is not installed (Parquet manifests)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "missing file" noise, nothing else either
        clips = fixed_clips(str(sources[kind]), 8, **CLIP)
        reference = fixed_clips(str(sources["folder"]), 8, **CLIP)
    assert clips.shape == (8, 3, 4, 32, 32)
    assert torch.equal(clips, reference)
    # Spread over the videos: two clips from each, in order.
    assert [_near(v) for v in _levels(clips)] == [lv for lv in LEVELS for _ in range(2)]


def test_shard_source_clips_are_its_samples(sources):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clips = fixed_clips(str(sources["shards"]), 3, **CLIP)
        again = fixed_clips(str(sources["shards"]), 3, **CLIP)
    assert clips.shape == (3, 3, 4, 32, 32)
    assert torch.equal(clips, again)  # fixed
    levels = _levels(clips)
    assert all(abs(v - _near(v)) <= 3 for v in levels), levels  # each clip is one of the videos
    assert len(set(map(_near, levels))) == 3  # three different samples
    # More clips than samples: every sample once.
    assert fixed_clips(str(sources["shards"]), 50, **CLIP).shape[0] == len(LEVELS)


def test_source_kinds_and_videos(sources):
    assert source_kind(str(sources["shards"])) == "shards"
    assert source_kind(str(sources["jsonl manifest"])) == "manifest"
    assert source_kind(str(sources["csv list"])) == "csv"
    assert source_kind(str(sources["folder"])) == "videos"
    names = [p.rsplit("/", 1)[-1] for p in source_videos(str(sources["folder"]))]
    assert names == [f"v{k}.mp4" for k in range(len(LEVELS))]
    for kind in ("text list", "csv list", "jsonl manifest"):
        assert [p.rsplit("/", 1)[-1] for p in source_videos(str(sources[kind]))] == names
    with pytest.raises(ValueError, match="shard source"):
        source_videos(str(sources["shards"]))


@pytest.mark.parametrize("kind", ["shards", "parquet manifest", "csv list"])
def test_training_diagnostics_read_every_source(sources, kind):
    """held_out_clips (what TrainDiagnostics.for_config uses) on the sources it used to misread:
    a Parquet manifest was read as text (no diagnostics), a shards.json line by line (one
    "missing file" warning a line)."""
    if kind not in sources:
        pytest.skip("pyarrow is not installed (Parquet manifests)")
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml",
                      [f"data.source={sources[kind]}", "model.frames=4", "model.image_size=32"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        video = held_out_clips(cfg, 4)
    assert video.shape == (4, 3, 4, 32, 32)
    assert all(abs(v - _near(v)) <= 3 for v in _levels(video))
    # The evaluations' load_clips is the same function.
    assert torch.equal(load_clips(str(sources[kind]), cfg.model, 4, seed=cfg.seed + 1, fps=cfg.data.fps), video)
