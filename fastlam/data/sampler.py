"""Rank-sharded, resumable clip order for distributed training.

:class:`ShardedClipSampler` yields the clip indices of one rank for one epoch:

* every epoch is a fresh permutation of ``range(n)`` drawn from ``(seed, epoch)`` only, so
  all ranks compute the same permutation without communicating;
* rank ``r`` of ``world_size`` takes positions ``r, r + world_size, ...`` of it: the shards
  are disjoint and together cover every clip exactly once per epoch (``drop_last=False``;
  shard lengths then differ by at most one), or, with ``drop_last=True``, all shards have
  ``n // world_size`` clips and the few left over (different ones each epoch) are skipped,
  which keeps ranks in lock-step for collectives;
* :meth:`state_dict` is ``{epoch, consumed}`` (plus the settings to check against), and a
  sampler loaded from it continues with the next unseen clip of the same epoch, so a
  resumed run never sees a clip twice within an epoch.

``fastlam/train.py``'s ``ResumableBatches`` shards each *global batch* by rank instead (its
state is a single batch counter); this sampler is for loaders that consume a flat stream of
indices per rank, e.g. :class:`fastlam.data.dali.DaliVideoLoader` or a ``DataLoader`` with
``sampler=`` and ``batch_size=``.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ShardedClipSampler", "epoch_permutation"]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: a pure function of ``(n, seed, epoch)``."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(n, generator=g)


class ShardedClipSampler(Sampler):
    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (number of clips) must be a positive int, got {n!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        if drop_last and n < world_size:
            raise ValueError(f"drop_last=True with n={n} clips < world_size={world_size} "
                             f"leaves every rank empty")
        self.n, self.rank, self.world_size = n, rank, world_size
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.epoch = 0
        self.consumed = 0  # indices of this epoch's shard already handed out

    def __len__(self) -> int:
        """Length of this rank's shard (the whole epoch, not what is left of it)."""
        if self.drop_last:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (a no-op when already positioned in it)."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, in order."""
        order = epoch_permutation(self.n, self.seed, epoch) if self.shuffle else torch.arange(self.n)
        if self.drop_last:
            order = order[: (self.n // self.world_size) * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        """The rest of the current epoch's shard; when exhausted, the next epoch begins."""
        if self.consumed >= len(self):
            self.epoch, self.consumed = self.epoch + 1, 0
        shard = self.shard(self.epoch)
        while self.consumed < len(shard):
            i = int(shard[self.consumed])
            # Counted before yielding: a state saved after a clip was handed out (and
            # trained on) resumes after it.
            self.consumed += 1
            yield i

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "n": self.n, "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank, "drop_last": int(self.drop_last),
                "shuffle": int(self.shuffle)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("n", "seed", "world_size", "drop_last", "shuffle"):
            if key in state and int(state[key]) != int(getattr(self, key)):
                raise ValueError(f"sampler state was saved with {key}={state[key]} but this sampler "
                                 f"has {key}={int(getattr(self, key))}: the clip order would differ")
        consumed = int(state["consumed"])
        if not 0 <= consumed <= len(self):
            raise ValueError(f"sampler state: consumed={consumed} outside [0, {len(self)}]")
        self.epoch, self.consumed = int(state["epoch"]), consumed
