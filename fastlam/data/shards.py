"""WebDataset-compatible tar shards and an exactly resumable shard stream.

Writing (``python -m fastlam.data shard MANIFEST --out DIR``): the manifest's usable videos,
in an order shuffled once by ``seed`` (so each shard mixes sources), go into
``shard-000000.tar, ...`` of about ``shard_bytes`` each, every sample being two members,
``<key>.<ext>`` (the video: the file as it is, or re-encoded to H.264 ``.mp4`` at the
training frame rate and resolution, which cuts decode cost by the ratio of pixel rates) and
``<key>.json`` (source path, label, and the stored video's duration, fps, frames, size,
codec). Any WebDataset reader reads them. ``shards.json`` next to them lists each shard's
sample count, which is all a reader needs at start-up (O(shards), not O(samples)).

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

import io
import json
import math
import multiprocessing as mp
import os
import re
import sys
import tarfile
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .decoding import (
    ClipTooShort,
    VideoDecodeError,
    check_clip_args,
    decode_errors,
    probe_opened,
    read_clip_opened,
    resized_frame_shape,
    stream_sar,
)
from .manifest import load_manifest, read_columns
from .remote import FileCache, default_cache, is_remote, open_binary
from .seeding import mix_seed
from .stream_state import load_stream_state, merge_states, prune_stream_states, save_stream_state
from .video import clip_to_tensor

__all__ = ["write_shards", "ShardStream", "ShardLoader", "merge_states", "read_shard_index",
           "clip_from_bytes", "expand_braces", "is_shard_source", "save_stream_state",
           "load_stream_state", "prune_stream_states"]

INDEX_NAME = "shards.json"


# ---- writing -------------------------------------------------------------------------------
def _reencode(path: str, fps: float | None, short_side: int | None,
              max_seconds: float | None) -> bytes:
    """H.264 MP4 of ``path`` at ``fps`` (frames picked by timestamp, the clip rule) with the
    shorter side scaled to ``short_side``; keyframe every second so clip reads seek close."""
    import av  # optional: PyAV (the data extra)

    buf = io.BytesIO()
    with av.open(path) as inp:
        ist = inp.streams.video[0]
        ist.thread_type = "AUTO"
        w, h = ist.codec_context.width, ist.codec_context.height
        if short_side:
            h, w = resized_frame_shape(w, h, stream_sar(ist), short_side)
        w, h = w - w % 2, h - h % 2  # yuv420p needs even sizes
        src_rate = ist.average_rate or ist.guessed_rate or Fraction(25)
        rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(src_rate)
        with av.open(buf, "w", format="mp4") as out:
            ost = out.add_stream("libx264", rate=rate)
            ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
            ost.options = {"preset": "veryfast", "crf": "20", "g": str(max(1, round(float(rate))))}
            origin = ist.start_time or 0
            k, held = 0, None
            tb = ist.time_base

            def emit(frame):
                nonlocal k
                img = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
                img.pts, img.time_base = k, 1 / rate
                for packet in ost.encode(img):
                    out.mux(packet)
                k += 1

            for frame in inp.decode(ist):
                if frame.pts is None:
                    continue
                t = (frame.pts - origin) * tb
                if max_seconds is not None and t > max_seconds:
                    break
                # Output frame k is the frame on screen at k / rate: emit ``held`` for every
                # output instant before this frame's start.
                while held is not None and k / rate < t:
                    emit(held)
                held, held_t = frame, t
            if held is not None:
                # The last frame stays on screen for one source frame duration.
                dur = (Fraction(held.duration) * tb if getattr(held, "duration", None)
                       else 1 / Fraction(src_rate))
                while k / rate < held_t + dur:
                    emit(held)
            for packet in ost.encode():
                out.mux(packet)
    return buf.getvalue()


def _stored_meta(data: bytes) -> dict:
    import av  # optional: PyAV (the data extra)

    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        info = probe_opened("<bytes>", c, s, exact=True)
        sar = stream_sar(s)
        return {"duration_s": info.duration_s, "fps": info.fps, "num_frames": info.num_frames,
                "width": info.width, "height": info.height, "codec": info.codec,
                "sar": [sar.numerator, sar.denominator] if sar > 0 else [1, 1]}


def _sample(job) -> tuple[int, bytes | None, dict]:
    i, path, label, meta, fps, short_side, max_seconds = job
    try:
        if fps is None and short_side is None and max_seconds is None:
            with open_binary(path) as f:
                data = f.read()
            ext = Path(path).suffix.lstrip(".").lower() or "mp4"
            m = dict(meta)
        else:
            data = _reencode(path, fps, short_side, max_seconds)
            ext = "mp4"
            m = _stored_meta(data)
        m.update(source=path, label=label, ext=ext)
        return i, data, m
    except Exception as e:  # a file that went bad since indexing: left out, reported
        return i, None, {"source": path, "reason": f"{type(e).__name__}: {e}"}


def write_shards(manifest, out, *, shard_bytes: int = 512 << 20, fps: float | None = None,
                 short_side: int | None = None, max_seconds: float | None = None,
                 workers: int | None = None, progress: bool = True, seed: int = 0) -> dict:
    """Write the manifest's usable videos into tar shards under ``out``; returns the index."""
    if not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise ValueError(f"shard_bytes must be a positive int, got {shard_bytes!r}")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number or None (copy), got {fps!r}")
    if short_side is not None and (not isinstance(short_side, int) or short_side < 2):
        raise ValueError(f"short_side must be an int >= 2 or None (keep), got {short_side!r}")
    m = load_manifest(manifest)
    order = np.random.default_rng(seed).permutation(len(m))
    extra = read_columns(str(manifest), ["path", "ok", "label", "codec", "fps"])
    extra = extra.filter(extra["ok"])  # the same rows, in the same (path) order, as m
    labels = extra["label"].to_numpy()
    jobs = []
    for i in order:
        meta = m.meta(int(i))
        jobs.append((len(jobs), m.paths[int(i)], int(labels[i]),
                     {"duration_s": meta["duration_s"], "fps": float(extra["fps"][int(i)].as_py()),
                      "num_frames": meta["num_frames"], "width": meta["width"],
                      "height": meta["height"], "codec": extra["codec"][int(i)].as_py(),
                      "sar": [meta["sar"].numerator, meta["sar"].denominator]},
                     fps, short_side, max_seconds))
    out_s = str(out)
    remote = is_remote(out_s)
    stage = Path(tempfile.mkdtemp(prefix="fastlam-shards-")) if remote else Path(out_s)
    stage.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    bad: list[dict] = []
    state = {"tar": None, "bytes": 0, "n": 0}

    def close():
        if state["tar"] is not None:
            state["tar"].close()
            name = f"shard-{len(shards):06d}.tar"
            shards.append({"url": name, "samples": state["n"],
                           "bytes": os.path.getsize(stage / name)})
            state["tar"] = None

    def add(key: str, ext: str, data: bytes):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        state["tar"].addfile(info, io.BytesIO(data))

    bar = None
    if progress:
        bar = tqdm(total=len(jobs), unit="video", desc="shard", file=sys.stderr)
    workers = 1 if workers is None else workers
    if workers > 1 and (fps is not None or short_side is not None or max_seconds is not None):
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap(_sample, jobs, chunksize=1)  # ordered: shard contents are fixed
    else:
        pool, results = None, map(_sample, jobs)
    try:
        for i, data, meta in results:
            if bar is not None:
                bar.update(1)
            if data is None:
                bad.append(meta)
                continue
            body = json.dumps(meta, sort_keys=True).encode("utf-8")
            size = len(data) + len(body) + 2048  # two headers + padding, roughly
            if state["tar"] is not None and state["bytes"] + size > shard_bytes:
                close()
            if state["tar"] is None:
                state["tar"] = tarfile.open(stage / f"shard-{len(shards):06d}.tar", "w",
                                            format=tarfile.USTAR_FORMAT)
                state["bytes"], state["n"] = 0, 0
            key = f"{i:09d}"
            add(key, "json", body)
            add(key, meta["ext"], data)
            state["bytes"] += size
            state["n"] += 1
        close()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    index = {"format": "fastlam-shards-1", "samples": sum(s["samples"] for s in shards),
             "bytes": sum(s["bytes"] for s in shards), "shards": shards, "bad": bad,
             "settings": {"fps": fps, "short_side": short_side, "max_seconds": max_seconds,
                          "shard_bytes": shard_bytes, "seed": seed, "manifest": str(manifest)}}
    with open(stage / INDEX_NAME, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    if remote:
        import fsspec  # optional: fsspec (the remote extra)

        fs, root = fsspec.core.url_to_fs(out_s)
        fs.makedirs(root, exist_ok=True)
        for name in [s["url"] for s in shards] + [INDEX_NAME]:
            fs.put_file(str(stage / name), f"{root.rstrip('/')}/{name}")
            os.unlink(stage / name)
        os.rmdir(stage)
    index["index_path"] = f"{out_s.rstrip('/')}/{INDEX_NAME}"
    return index


# ---- the shard list ------------------------------------------------------------------------
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar, a-001.tar, a-002.tar`` (zero padding kept)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for v in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[:m.start()] + str(v).zfill(width) + pattern[m.end():])
    return out


def _join(base: str, name: str) -> str:
    if is_remote(name) or os.path.isabs(name):
        return name
    return f"{base.rstrip('/')}/{name}" if is_remote(base) else os.path.join(base, name)


def _tar_samples(f) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """[(key, {ext: (data offset, size)})] in file order, from the tar headers only."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    with tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = (member.offset_data, member.size)
    return samples


def read_shard_index(source: str, cache: FileCache | None = None) -> tuple[list[str], list[int]]:
    """(shard URLs, samples per shard) from a ``shards.json`` or a brace pattern of tars."""
    source = str(source)
    if source.endswith(".json"):
        with open_binary(source) as f:
            index = json.loads(f.read().decode("utf-8"))
        base = source.rsplit("/", 1)[0] if "/" in source else "."
        return ([_join(base, s["url"]) for s in index["shards"]],
                [int(s["samples"]) for s in index["shards"]])
    urls = expand_braces(source)
    cache = cache or default_cache()
    counts = []
    for u in urls:  # no index: count from the tar headers (fetches each shard once)
        with cache.open(u) as f:
            counts.append(len(_tar_samples(f)))
    return urls, counts


# ---- decoding one sample -------------------------------------------------------------------
def clip_from_bytes(data: bytes, meta: dict, *, num_frames: int, fps: float, size: tuple[int, int],
                    crop: str, short_policy: str, generator: torch.Generator) -> torch.Tensor:
    """A clip of an encoded video held in memory, uint8 (F, H, W, 3), with the start and crop
    rules of ``VideoClipDataset`` (start drawn in [0, duration - span), then crop)."""
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
            try:
                return read_clip_opened("<shard sample>", c, stream, num_frames, fps, s, size, crop,
                                        generator, rewind=rewind)
            except ClipTooShort as e:
                short = e
        got = len(short.frames) if short.frames is not None else 0
        if short_policy == "pad" and got > 0:
            return torch.cat([short.frames, short.frames[-1:].expand(num_frames - got, -1, -1, -1)])
        raise short


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
                 drop_last: bool = False, cache: FileCache | None = None):
        check_clip_args(num_frames, fps, 0.0, tuple(size), crop)
        if short_policy not in ("pad", "skip"):
            raise ValueError(f"short_policy must be 'pad' or 'skip', got {short_policy!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be an int >= 1 (1: no shuffling), got {shuffle_buffer!r}")
        self.cache = cache
        self.urls, counts = read_shard_index(source, cache)
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
        with nothing left to read is not opened)."""
        cache = self.cache or default_cache()
        shard_of = np.searchsorted(self.offsets, keys, side="right") - 1
        i = 0
        while i < len(keys):
            s = int(shard_of[i])
            j = i
            while j < len(keys) and shard_of[j] == s:
                j += 1
            group = keys[i:j]
            if skip[group].all():
                for g in group:
                    yield int(g), None, None
                i = j
                continue
            with cache.open(self.urls[s]) as f:
                members = _tar_samples(f)
                for g in group:
                    if skip[g]:
                        yield int(g), None, None
                        continue
                    key, parts = members[int(g - self.offsets[s])]
                    off, size = parts["json"]
                    f.seek(off)
                    meta = json.loads(f.read(size).decode("utf-8"))
                    ext = meta.get("ext") or next(e for e in parts if e != "json")
                    off, size = parts[ext]
                    f.seek(off)
                    yield int(g), f.read(size), meta
            i = j

    def __iter__(self):
        keys, plan_worker = self._worker_keys()
        # The draws depend on nothing a resume changes: a resumed worker replays them all,
        # consumed clips included, so the clips still to come leave the buffer in the same order.
        rng = np.random.default_rng(np.random.SeedSequence(
            [self.seed, self.epoch, self.rank, plan_worker]))
        skip = self.mine.copy()  # handed out before this iteration began (a resume, or a re-iteration)
        buf: list[tuple[int, bytes | None, dict | None]] = []

        def decode(item):
            g, data, meta = item
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

        for item in self._read(keys, skip):
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            k = int(rng.integers(len(buf)))
            out, buf[k] = buf[k], item
            if out[1] is not None:
                yield decode(out)
        for k in rng.permutation(len(buf)):
            if buf[int(k)][1] is not None:
                yield decode(buf[int(k)])


class ShardLoader:
    """Batches ``(B, 3, F, H, W)`` for one rank from a :class:`ShardStream`, with exact resume.

    Iterating yields the rest of the current epoch (the last batch may be short), then moves
    to the next epoch. ``state_dict()`` holds the epoch and the bitmap of clips handed out by
    this rank; :func:`merge_states` ORs the states of all ranks into one that any world size
    can load. Bad samples are skipped (counted as consumed) and listed in ``bad``.
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
        self.bad: dict[int, str] = {}
        self.last_ids: list[int] = []  # global ids of the clips in the batch last yielded

    @property
    def epoch(self) -> int:
        return self.stream.epoch

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
                self.bad[int(g)] = reason
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
