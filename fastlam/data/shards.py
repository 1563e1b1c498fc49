"""WebDataset-compatible tar shards and an exactly resumable shard stream.

Writing (``python -m fastlam.data shard MANIFEST --out DIR``) is
:mod:`fastlam.data.shard_writer`'s (atomic: a kill leaves the published set readable): tars of
``<key>.json`` + ``<key>.<ext>`` samples that any WebDataset reader reads, and ``shards.json``
with each shard's sample count, byte size and sha256 (O(shards) to read at start-up), read and
checked by :mod:`fastlam.data.shard_index`.

Why plain ``tarfile`` rather than the ``webdataset`` library for reading: exact resume needs
control at the level of one sample (which members a worker reads, and skipping the ones a
checkpoint says were consumed), while WebDataset's pipeline (shard list -> tar expansion ->
shuffle buffer) resumes only approximately. The format stays WebDataset's (the tests read our
shards with ``webdataset.WebDataset``), so both can be used on the same data.

Reading (:class:`ShardStream` + :class:`ShardLoader`). An epoch's *canonical order* is the
shards in a permutation drawn from ``(seed, epoch)`` (per-shard shuffle), each shard's samples
in file order; sample ``g`` (its global id: shard offset + position) is one clip, whose start
and crop are drawn from ``(seed, epoch, g)`` with the rules of ``VideoClipDataset``. The
samples of the epoch *not yet consumed* are split into ``world_size`` contiguous, balanced
chunks (one per rank), each into one chunk per DataLoader worker; a worker reads its chunk's
members shard by shard and passes them through a shuffle buffer (encoded bytes are buffered,
decoding happens on the way out). The loader in the training process records the global id
of every clip it hands out, so ``state_dict()`` is ``{epoch, consumed-bitmap}`` plus the plan
the epoch was made from (its settings and the bitmap it started from; see
:mod:`fastlam.data.stream_state`). Resumed on the same world size, worker count and buffer, a
stream rebuilds that plan, replays each worker's shuffle-buffer draws (a pure function of
``(seed, epoch, rank, worker)``) while skipping the consumed clips unread, and hands out exactly
the clips, in exactly the order, of the run that was never interrupted. On other settings it
re-plans the unconsumed clips: none lost, none seen twice in the epoch. States of several ranks
merge by OR-ing their bitmaps (:func:`merge_states`), which is how a 4-rank checkpoint resumes
on 2 ranks.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .bad_log import BadLog
from .decoding import (
    ClipTooShort,
    VideoDecodeError,
    check_clip_args,
    decode_errors,
    read_clip_opened,
)
from .remote import FileCache, default_cache
from .shard_index import expand_braces, read_shard_index, shard_damage, tar_samples
from .shard_writer import write_shards
from .seeding import mix_seed
from .shuffle_buffer import shuffle_buffered
from .stream_state import load_stream_state, merge_states, prune_stream_states, save_stream_state
from .video import clip_to_tensor

__all__ = ["write_shards", "ShardStream", "ShardLoader", "merge_states", "read_shard_index",
           "clip_from_bytes", "placed_clip_from_bytes", "PlacedClip", "expand_braces", "is_shard_source", "save_stream_state",
           "load_stream_state", "prune_stream_states"]

# ---- decoding one sample -------------------------------------------------------------------
class PlacedClip(NamedTuple):
    """A clip read from a sample and where it came from: ``frames`` uint8 (F, H, W, 3), the
    start it was read from (seconds), the generator's state before that read (its crop draws
    replay from it) and how many frames were padded at the end."""
    frames: torch.Tensor
    start_s: float
    crop_state: torch.Tensor
    padded: int


def placed_clip_from_bytes(data: bytes, meta: dict, *, num_frames: int, fps: float, size: tuple[int, int],
                           crop: str, short_policy: str, generator: torch.Generator) -> PlacedClip:
    """A clip of an encoded video held in memory with the start and crop rules of
    ``VideoClipDataset``: a start drawn in [0, duration - span), then the crop; a clip the video
    ends before is read again from 0 (whose reader draws its crop afresh), then padded
    (``short_policy='pad'``). The state store records the returned place beside its states."""
    import av  # optional: PyAV (the data extra)

    span = (num_frames - 1) / fps
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    start = max(0.0, float(meta["duration_s"]) - span - 1e-3) * u
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        short = None
        for s, rewind in ((start, False), (0.0, True)):
            if short is not None and s >= start:
                break
            drawn = generator.get_state()
            try:
                clip = read_clip_opened("<shard sample>", c, stream, num_frames, fps, s, size, crop,
                                        generator, rewind=rewind)
                return PlacedClip(clip, s, drawn, 0)
            except ClipTooShort as e:
                short, short_at, short_drawn = e, s, drawn
        got = len(short.frames) if short.frames is not None else 0
        if short_policy == "pad" and got > 0:
            clip = torch.cat([short.frames, short.frames[-1:].expand(num_frames - got, -1, -1, -1)])
            return PlacedClip(clip, short_at, short_drawn, num_frames - got)
        raise short


def clip_from_bytes(data: bytes, meta: dict, *, num_frames: int, fps: float, size: tuple[int, int],
                    crop: str, short_policy: str, generator: torch.Generator) -> torch.Tensor:
    """The frames of :func:`placed_clip_from_bytes`, uint8 (F, H, W, 3)."""
    return placed_clip_from_bytes(data, meta, num_frames=num_frames, fps=fps, size=size, crop=crop,
                                  short_policy=short_policy, generator=generator).frames


# ---- streaming -----------------------------------------------------------------------------
def _perm(n: int, *key: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key])).permutation(n)


class ShardStream(torch.utils.data.IterableDataset):
    """This rank's (and DataLoader worker's) clips of one epoch, from tar shards.

    Yields ``(clip or None, global id, reason)``: ``clip`` is float ``(3, F, H, W)`` in [0, 1];
    ``None`` (with the reason) for a sample that cannot be decoded, so the consumer still counts
    it as consumed. Use it through :class:`ShardLoader`, which owns the epoch and the bitmap of
    consumed clips; set ``epoch`` / ``consumed`` before each iteration.
    """

    def __init__(self, source: str, *, num_frames: int = 16, fps: float = 4.0,
                 size: Sequence[int] = (256, 256), crop: str = "random", short_policy: str = "pad",
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 64,
                 drop_last: bool = False, cache: FileCache | None = None,
                 bad_file_log: str | os.PathLike | None = None, max_bad_fraction: float = 1.0):
        check_clip_args(num_frames, fps, 0.0, tuple(size), crop)
        if short_policy not in ("pad", "skip"):
            raise ValueError(f"short_policy must be 'pad' or 'skip', got {short_policy!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be an int >= 1 (1: no shuffling), got {shuffle_buffer!r}")
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
        self.max_bad_fraction = float(max_bad_fraction)
        self.cache = cache
        # Bad samples (path "<shard>#<position>", grouped by shard) and damaged shards: the
        # record every source keeps (fastlam.data.bad_log), shared with the workers by file.
        self.bad_log = BadLog(bad_file_log)
        self.urls, counts, self.checks, problems = read_shard_index(source, cache)
        for url, problem in problems:
            self.bad_log.add("damaged", url, f"{problem}: its samples are not in the epoch")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise ValueError(f"source {source!r}: the shards hold no samples")
        self.num_frames, self.fps, self.size = num_frames, float(fps), (int(size[0]), int(size[1]))
        self.crop, self.short_policy, self.seed = crop, short_policy, int(seed)
        self.rank, self.world_size, self.shuffle_buffer = rank, world_size, shuffle_buffer
        self.drop_last = bool(drop_last)
        self.epoch = 0
        # ``base``: clips consumed by all ranks when this epoch's plan was made (the same on
        # every rank: zeros at an epoch start, the merged checkpoint after a resume);
        # ``mine``: clips this rank has handed out since. Set by ShardLoader.
        self.base = np.zeros(self.n, dtype=bool)
        self.mine = np.zeros(self.n, dtype=bool)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("loader_state", None)  # a training loop's hook, not for DataLoader workers
        return state

    # ---- bad samples and damaged shards ------------------------------------------------------
    def sample_name(self, g: int) -> tuple[str, str]:
        """(``<shard>#<position>``, shard URL) naming global sample ``g``."""
        s = int(np.searchsorted(self.offsets, g, side="right") - 1)
        return f"{self.urls[s]}#{int(g - self.offsets[s])}", self.urls[s]

    def mark_bad(self, g: int, reason: str) -> None:
        """Record sample ``g`` as skipped; an error naming the worst shards once more than
        ``max_bad_fraction`` of the epoch is bad."""
        name, url = self.sample_name(g)
        if self.bad_log.add("bad", name, reason, group=url):
            self.bad_log.check_share(self.n, self.max_bad_fraction, "shard samples")

    @property
    def bad_files(self) -> dict[str, str]:
        """``<shard>#<position>`` -> reason for every sample skipped so far (all workers)."""
        return self.bad_log.reasons("bad")

    def report(self) -> str:
        bad = self.bad_files
        damaged = self.bad_log.reasons("damaged", sync=False)
        lines = [f"{len(bad)} of {self.n} shard samples unusable "
                 f"({100.0 * len(bad) / max(self.n, 1):.1f}%)" + (":" if bad else "")]
        for url, count in self.bad_log.worst_groups("bad", top=len(self.urls) + 1):
            lines.append(f"  {url}: {count} sample(s)")
            lines += [f"    {p.rsplit('#', 1)[1]}: {r}" for p, r in sorted(bad.items())
                      if p.rsplit("#", 1)[0] == url]
        if damaged:
            lines.append(f"{len(damaged)} shard(s) damaged (their readable, verified samples were used):")
            lines += [f"  {u}: {r}" for u, r in sorted(damaged.items())]
        return "\n".join(lines)

    # The plan: pure function of (seed, epoch, consumed, world size, rank, workers).
    def canonical(self, epoch: int) -> np.ndarray:
        shard_order = _perm(len(self.urls), self.seed, epoch)
        return np.concatenate([np.arange(self.offsets[s], self.offsets[s + 1]) for s in shard_order])

    def remaining(self, epoch: int, consumed: np.ndarray) -> np.ndarray:
        order = self.canonical(epoch)
        rest = order[~consumed[order]]
        if self.drop_last:
            # Equal share per rank: a few clips (the canonical order's tail) wait for next epoch.
            rest = rest[: len(rest) // self.world_size * self.world_size]
        return rest

    def rank_share(self) -> np.ndarray:
        """This rank's clips of the current plan that it has not handed out yet."""
        share = np.array_split(self.remaining(self.epoch, self.base), self.world_size)[self.rank]
        return share[~self.mine[share]]

    def _worker_keys(self) -> tuple[np.ndarray, int]:
        """The plan's chunk this DataLoader worker replays, and which worker of the plan it is.

        The DataLoader merges its workers' items round-robin, and the plan's chunks differ in
        length by at most one (longer first), so the uninterrupted run's order is item ``j``
        from worker ``j % nw``. Resumed after ``done`` of this rank's items, the DataLoader's
        worker ``k`` must therefore replay the plan's worker ``(k + done) % nw``."""
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        share = np.array_split(self.remaining(self.epoch, self.base), self.world_size)[self.rank]
        plan_worker = (wid + int(self.mine[share].sum())) % nw
        return np.array_split(share, nw)[plan_worker], plan_worker

    def _read(self, keys: np.ndarray, skip: np.ndarray) -> Iterator[tuple[int, bytes | None, dict | None]]:
        """(global id, encoded video, meta) for ``keys`` in order, opening each shard once;
        ``(id, None, None)`` for the ids set in ``skip``, whose bytes are not read (a shard
        with nothing left to read is not opened); ``(id, None, {"bad": reason})`` for a sample
        the shard's damage lost (missing shard, 404, truncated tar, corrupt member...)."""
        cache = self.cache or default_cache()
        shard_of = np.searchsorted(self.offsets, keys, side="right") - 1
        i = 0
        while i < len(keys):
            s = int(shard_of[i])
            j = i
            while j < len(keys) and shard_of[j] == s:
                j += 1
            group = keys[i:j]
            i = j
            if skip[group].all():
                for g in group:
                    yield int(g), None, None
                continue
            try:
                f = cache.open(self.urls[s])
            except OSError as e:  # missing (404, no file) or unavailable after the retries
                what = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
                for g in group:
                    yield int(g), None, (None if skip[g] else {"bad": f"shard {what}: {type(e).__name__}: {e}"})
                continue
            with f:
                yield from self._read_shard(f, s, group, skip)

    def _read_shard(self, f, s: int, group: np.ndarray, skip: np.ndarray):
        url = self.urls[s]
        damage = shard_damage(f, url, self.checks[s])
        f.seek(0)
        members, tar_damage = tar_samples(f, os.fstat(f.fileno()).st_size)
        if len(members) != self.counts[s]:
            tar_damage = "; ".join(x for x in (tar_damage, f"{len(members)} samples readable, "
                                               f"shards.json says {self.counts[s]}") if x)
        damage = "; ".join(x for x in (damage, tar_damage) if x)
        if damage:  # each sample still read is checked on its own (member sha256, JSON, decode)
            self.bad_log.add("damaged", url, damage)
        for g in group:
            if skip[g]:
                yield int(g), None, None
                continue
            pos = int(g - self.offsets[s])
            if pos >= len(members):
                yield int(g), None, {"bad": f"not in the shard ({damage})"}
                continue
            try:
                yield int(g), *self._member(f, members[pos][1])
            except (ValueError, KeyError, StopIteration, OSError) as e:
                yield int(g), None, {"bad": f"{type(e).__name__}: {e}"}

    @staticmethod
    def _member(f, parts: dict) -> tuple[bytes, dict]:
        """The video bytes and meta of one sample, checked against the meta's sha256."""
        if "json" not in parts:
            raise KeyError("no JSON member")
        off, size = parts["json"]
        f.seek(off)
        try:
            meta = json.loads(f.read(size).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt JSON member ({e})") from None
        if not isinstance(meta, dict):
            raise ValueError("corrupt JSON member (not an object)")
        ext = meta.get("ext") or next(e for e in parts if e != "json")
        if ext not in parts:
            raise KeyError(f"no .{ext} member")
        off, size = parts[ext]
        f.seek(off)
        data = f.read(size)
        if len(data) != size:
            raise ValueError(f"video member cut short ({len(data)} of {size} bytes)")
        if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError("video member's sha256 differs from its JSON member's")
        return data, meta

    def __iter__(self):
        keys, plan_worker = self._worker_keys()
        # The draws depend on nothing a resume changes: a resumed worker replays them all,
        # consumed clips included, so the clips still to come leave the buffer in the same order.
        rng = np.random.default_rng(np.random.SeedSequence(
            [self.seed, self.epoch, self.rank, plan_worker]))
        skip = self.mine.copy()  # handed out before this iteration began (a resume, or a re-iteration)

        def decode(item):
            g, data, meta = item
            if data is None:  # lost to the shard's damage
                return None, g, f"{meta['bad']}"
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, g))
            try:
                clip = clip_from_bytes(data, meta, num_frames=self.num_frames, fps=self.fps,
                                       size=self.size, crop=self.crop,
                                       short_policy=self.short_policy, generator=gen)
                return clip_to_tensor(clip), g, ""
            except VideoDecodeError as e:
                return None, g, f"{meta.get('source', g)}: {e.reason}"
            except decode_errors() as e:
                return None, g, f"{meta.get('source', g)}: {type(e).__name__}: {e}"

        for item in shuffle_buffered(self._read(keys, skip), self.shuffle_buffer, rng):
            yield decode(item)


class ShardLoader:
    """Batches ``(B, 3, F, H, W)`` for one rank from a :class:`ShardStream`, with exact resume.

    Iterating yields the rest of the current epoch (the last batch may be short), then moves
    to the next epoch. ``state_dict()`` holds the epoch and the bitmap of clips handed out by
    this rank; :func:`merge_states` ORs the states of all ranks into one that any world size
    can load. Bad samples are skipped (counted as consumed) and recorded in the stream's
    :class:`~fastlam.data.bad_log.BadLog` (``bad``, ``stream.report()``).
    """

    def __init__(self, stream: ShardStream, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, drop_last_batch: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.stream, self.batch_size = stream, batch_size
        # True: an epoch's short last batch is not yielded (static shapes); its clips are not
        # counted as consumed, they simply wait for the next epoch's new order.
        self.drop_last_batch = bool(drop_last_batch)
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.last_ids: list[int] = []  # global ids of the clips in the batch last yielded

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    @property
    def bad(self) -> dict[str, str]:
        """``<shard>#<position>`` -> reason: every sample skipped so far."""
        return self.stream.bad_files

    def __len__(self) -> int:
        """Batches left in this epoch for this rank."""
        n = len(self.stream.rank_share())
        return n // self.batch_size if self.drop_last_batch else -(-n // self.batch_size)

    def plan(self) -> dict:
        """The settings an epoch's plan and shuffle-buffer draws depend on (besides the seed,
        the epoch and the bitmap the plan started from)."""
        s = self.stream
        return {"world_size": s.world_size, "workers": max(1, self.num_workers),
                "shuffle_buffer": s.shuffle_buffer, "drop_last": s.drop_last}

    def state_dict(self) -> dict:
        """This rank's view: the plan's base plus what this rank handed out (merge ranks with
        :func:`merge_states`; one rank's state alone is enough only for world_size 1), and the
        plan, so that a resume on the same settings continues the same order."""
        s = self.stream
        return {"epoch": s.epoch, "n": s.n, "seed": s.seed,
                "consumed": np.packbits(s.base | s.mine).tobytes(),
                "plan_consumed": np.packbits(s.base).tobytes(), "plan": self.plan()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.stream.n:
            raise ValueError(f"shard stream state was saved for n={state['n']} samples but the "
                             f"shards hold {self.stream.n}")
        if int(state["seed"]) != self.stream.seed:
            raise ValueError(f"shard stream state was saved with seed={state['seed']}, this "
                             f"stream has seed={self.stream.seed}: the order would differ")
        s = self.stream
        s.epoch = int(state["epoch"])
        consumed = np.unpackbits(np.frombuffer(state["consumed"], dtype=np.uint8), count=s.n).astype(bool)
        if state.get("plan") == self.plan() and state.get("plan_consumed") is not None:
            # Same settings: the interrupted epoch's plan, and what was handed out from it.
            s.base = np.unpackbits(np.frombuffer(state["plan_consumed"], dtype=np.uint8),
                                   count=s.n).astype(bool)
            s.mine = consumed & ~s.base
        else:
            # Other settings (or a state from before plans were saved): a new plan of the rest.
            s.base, s.mine = consumed, np.zeros(s.n, dtype=bool)

    def _next_epoch(self) -> None:
        s = self.stream
        s.epoch += 1
        s.base = np.zeros(s.n, dtype=bool)
        s.mine = np.zeros(s.n, dtype=bool)

    def __iter__(self) -> Iterator[torch.Tensor]:
        s = self.stream
        if not len(s.rank_share()):
            self._next_epoch()
        # The workers get a copy of the stream (base and mine as they are now) and plan from it.
        # Its own generator: without one, making the DataLoader draws its base seed from the
        # global RNG, which moves the training's random stream (the noisy regularizer's noise)
        # differently in a resumed run than in an uninterrupted one. Nothing here uses the seed
        # (every clip's draws come from (seed, epoch, id)), so a fixed one per epoch does.
        loader = torch.utils.data.DataLoader(
            s, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(mix_seed(s.seed, s.epoch, s.rank)))
        clips: list[torch.Tensor] = []
        ids: list[int] = []
        for clip, g, reason in loader:
            if clip is None:
                s.mark_bad(int(g), reason)
                s.mine[int(g)] = True
                continue
            clips.append(clip)
            ids.append(int(g))
            if len(clips) == self.batch_size:
                # Marked before yielding: a state saved after this batch resumes after it.
                s.mine[ids] = True
                self.last_ids = ids
                yield torch.stack(clips)
                clips, ids = [], []
        if clips and not self.drop_last_batch:
            s.mine[ids] = True
            self.last_ids = ids
            yield torch.stack(clips)
        self._next_epoch()


def is_shard_source(source) -> bool:
    """True for a ``shards.json`` index or a tar URL / brace pattern (``.../shard-{0..9}.tar``)."""
    s = str(source)
    return s.endswith(".json") or s.endswith(".tar") or ".tar" in s.rsplit("/", 1)[-1]
