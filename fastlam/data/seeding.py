"""Seeds for the per-clip random draws (clip start, crop) shared by the dataset and the shard stream.

A clip's draws are a pure function of ``(seed, epoch, index)`` so every loader that follows
:class:`~fastlam.data.VideoClipDataset`'s rules (``fastlam.data.shards`` among them) picks the
same clip for the same item, whatever order workers ran in.
"""
from __future__ import annotations

import numpy as np

__all__ = ["mix_seed"]


def mix_seed(*parts: int) -> int:
    # SeedSequence hashes its entropy well, so neighbouring (seed, epoch, index) triples give
    # unrelated streams (a plain seed + index would correlate them).
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
               .generate_state(2, dtype=np.uint64)[0] >> 1)
