"""The bounded shuffle the shard streams share (``shards.ShardStream`` over videos,
``state_store.StateStream`` over encoder states): a buffer of ``size`` items; once full, each
new item takes the place of a uniformly drawn one, which is handed out; at the end the rest
comes out in a random order. The order is a pure function of the input and ``rng``, which is
what the streams' exact resume relies on."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


def shuffle_buffered(items: Iterable[tuple], size: int, rng: np.random.Generator) -> Iterator[tuple]:
    """``(id, data, meta)`` items of a shard read, shuffled through a buffer of ``size``;
    ``(id, None, None)`` placeholders (clips consumed before a resume) take their place in the
    buffer, so the draws stay those of the uninterrupted epoch, and are not handed out."""
    buf: list[tuple] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = int(rng.integers(len(buf)))
        out, buf[k] = buf[k], item
        if out[1] is not None or out[2] is not None:
            yield out
    for k in rng.permutation(len(buf)):
        if buf[int(k)][1] is not None or buf[int(k)][2] is not None:
            yield buf[int(k)]
