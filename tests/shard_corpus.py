"""A small corpus of real videos, its manifest and its shards, for the tests of the shard and
manifest pipeline (test_data_corpus, test_data_faults_remote); each test file builds its own
(module-scoped) with the video count and shard size its checks need."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fastlam.data.manifest import build_manifest
from fastlam.data.shards import write_shards
from video_files import encode_video


def ramp_frame(i: int, size=(48, 64), offset: int = 0) -> np.ndarray:
    """Frame ``i`` of a ramp: flat grey whose level steps by 6 each frame (wrapping every 40),
    so a wrong frame index shows in the pixels; ``offset`` shifts the ramp (one per video)."""
    return np.full((*size, 3), 10 + 6 * ((i + offset) % 40), np.uint8)


def ramp_video(path, frames: int, rate=25, size=(48, 64)) -> Path:
    return encode_video(path, [ramp_frame(i, size) for i in range(frames)], rate=rate)


def make_corpus(root: Path, count: int, shard_bytes: Callable[[list[Path]], int],
                frame: Callable[[int, int], np.ndarray] = lambda video, i: ramp_frame(i)) -> dict:
    """``count`` videos of 30, 33, 36, ... frames in ``root/videos`` (frame ``i`` of video ``k``
    is ``frame(k, i)``, 25 fps), their manifest ``root/m.parquet`` and shards in ``root/shards``
    of ``shard_bytes(video paths)`` bytes."""
    vids = root / "videos"
    vids.mkdir()
    paths = [encode_video(vids / f"v{k:02d}.mp4", [frame(k, i) for i in range(30 + 3 * k)], rate=25)
             for k in range(count)]
    manifest = root / "m.parquet"
    build_manifest([vids], manifest, workers=0, progress=False)
    shards = root / "shards"
    index = write_shards(manifest, shards, shard_bytes=shard_bytes(paths), progress=False, seed=1)
    return {"root": root, "videos": vids, "paths": paths, "manifest": manifest, "shards": shards, "index": index}
