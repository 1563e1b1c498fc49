"""A store of frozen-encoder states: encode a corpus once, train many runs from it.

The encoder is frozen, so every run of a sweep decodes the same clips and runs the same encoder
forward again. A state store keeps the encoder's output per clip instead, as WebDataset-style
tar shards that :class:`StateStream` reads with the shard stream's planning, so training from
states has the video shards' exact resume, rank sharding, fsspec paths and bad-sample policy.

Layout (``<out>/``): ``states-000000.tar, ...``, one per video shard and holding the same
samples in the same order (so a sample keeps its global id, and an epoch's order from
``(seed, epoch)`` is the one training from the video shards would use); each sample is
``<key>.json`` (source video, label, clip start in seconds, fps, frames, the resize and crop
box, the states' shape, dtype and sha256, the encoder fingerprint) and ``<key>.states`` (the
raw little-endian states, ``(T, N, D)``); a sample that could not be decoded keeps its slot as
``<key>.json`` with ``bad`` (the reason) and an empty ``<key>.bad``, and reads as a bad sample.
``encode.json`` (written first) holds the settings and the encoder's fingerprint, which a
resumed encode must match; ``states.json`` (written last, after every shard is in place) is the
index: shard URLs, sample counts, byte sizes and sha256 checksums, the bad samples, and the
header. A shard is written under a temporary name and renamed when complete, so an encode
killed at any point resumes by writing only the shards that are not there yet, and a reader
never sees a store without its index.

What is stored is each sample's epoch-0 clip (start and crop drawn from ``(seed, 0, id)``, the
shard stream's rule): every epoch trains on the same clip of a video, where training from the
video shards draws a new start and crop each epoch. That is the price of encoding once.

Knows nothing of the models: the encoding itself (``fastlam.encode_states``) hands this module
tensors and an opaque fingerprint string.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..checkpoint import atomic_write
from .decoding import crop_offsets, resized_frame_shape
from .remote import FileCache, default_cache, is_remote, open_binary
from .shards import ShardStream, placed_clip_from_bytes
from .shuffle_buffer import shuffle_buffered
from .video import clip_to_tensor

__all__ = ["INDEX_NAME", "HEADER_NAME", "STORE_DTYPES", "StateStoreError", "StateStoreWriter", "StateStream",
           "is_state_store", "read_store_header", "sample_clip", "shard_samples", "states_from_bytes"]

INDEX_NAME = "states.json"
HEADER_NAME = "encode.json"
FORMAT = "fastlam-states-1"
STORE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class StateStoreError(ValueError):
    """A store that does not fit what reads or resumes it (another encoder, other settings)."""


def is_state_store(source) -> bool:
    """True for a state store's index (``.../states.json``)."""
    return str(source).rstrip("/").rsplit("/", 1)[-1] == INDEX_NAME


def read_store_header(source: str) -> dict:
    """The index of a store (``states.json``): its ``header`` holds the encoder fingerprint and
    the clip settings (frames, fps, size, crop, dtype, state shape)."""
    with open_binary(str(source)) as f:
        index = json.loads(f.read().decode("utf-8"))
    if index.get("format") != FORMAT:
        raise StateStoreError(f"{source}: not a fastlam state store index (format {index.get('format')!r}, "
                              f"expected {FORMAT!r})")
    return index


# ---- reading video shards for the encoder ---------------------------------------------------
def shard_samples(url: str, cache: FileCache | None = None) -> Iterator[tuple[str, dict, bytes | None]]:
    """``(key, meta, video bytes)`` of a video shard's samples in file order (``None`` bytes for a
    sample whose video member is missing)."""
    cache = cache or default_cache()
    with cache.open(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        key, meta, parts = None, None, {}

        def finish():
            ext = meta.get("ext") or next((e for e in parts if e != "json"), None)
            return key, meta, parts.get(ext)

        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            if key is not None and k != key:
                yield finish()
                meta, parts = None, {}
            key = k
            data = tar.extractfile(member).read()
            if ext == "json":
                meta = json.loads(data.decode("utf-8"))
            else:
                parts[ext] = data
        if key is not None:
            yield finish()


def sample_clip(data: bytes, meta: dict, *, num_frames: int, fps: float, size: tuple[int, int], crop: str,
                short_policy: str, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The clip :class:`~fastlam.data.shards.ShardStream` decodes for a sample (float
    ``(3, F, H, W)`` in [0, 1]) and where it came from: start (seconds), resized frame size and
    crop box, and whether it was padded. Same draws as the stream: a start in
    ``[0, duration - span)``, then the crop offsets; a clip the video ends before is read again
    from 0 (whose reader draws its crop afresh), then padded (``short_policy='pad'``)."""
    sar = meta.get("sar") or [1, 1]
    rh, rw = resized_frame_shape(int(meta["width"]), int(meta["height"]), Fraction(int(sar[0]), int(sar[1])),
                                 max(size))
    placed = placed_clip_from_bytes(data, meta, num_frames=num_frames, fps=fps, size=size, crop=crop,
                                    short_policy=short_policy, generator=generator)
    replay = torch.Generator()  # the crop offsets the read drew, drawn again from its state
    replay.set_state(placed.crop_state)
    top, left = crop_offsets(rh, rw, size, crop, replay)
    return clip_to_tensor(placed.frames), {"start_s": placed.start_s, "resized": [rh, rw],
                                           "crop_box": [top, left, size[0], size[1]], "padded": placed.padded}


# ---- writing --------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def states_to_bytes(states: torch.Tensor, dtype: torch.dtype) -> bytes:
    t = states.detach().to("cpu", dtype).contiguous()
    return t.view(torch.uint8).numpy().tobytes()


def states_from_bytes(data: bytes, meta: dict) -> torch.Tensor:
    """float32 ``(T, N, D)`` states of a sample; ``ValueError`` when the bytes are not the
    states its meta describes (size or sha256)."""
    dtype = STORE_DTYPES[meta["dtype"]]
    shape = [int(v) for v in meta["shape"]]
    want = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    if len(data) != want:
        raise ValueError(f"{len(data)} bytes of states, expected {want} for {shape} {meta['dtype']}")
    if meta.get("sha256") and _sha256(data) != meta["sha256"]:
        raise ValueError("states checksum mismatch (sha256): the shard is damaged")
    return torch.frombuffer(bytearray(data), dtype=dtype).view(shape).float()


class StateStoreWriter:
    """Writes a store's shards atomically and resumably; see the module docstring.

    ``header``: everything the states depend on (encoder fingerprint, clip settings, seed, the
    video shards' index, dtype). A store begun with another header is refused, not mixed."""

    def __init__(self, out: str, header: dict, counts: Sequence[int]):
        self.out = str(out).rstrip("/")
        self.header = dict(header, format=FORMAT)
        self.counts = [int(c) for c in counts]
        self.remote = is_remote(self.out)
        if self.remote:
            import fsspec  # optional: fsspec (the remote extra)

            self.fs, self.root = fsspec.core.url_to_fs(self.out)
            self.fs.makedirs(self.root, exist_ok=True)
        else:
            self.fs, self.root = None, self.out
            Path(self.root).mkdir(parents=True, exist_ok=True)
        found = self._read_bytes(HEADER_NAME)
        if found is None:
            self._write(HEADER_NAME, json.dumps(self.header, indent=1, sort_keys=True).encode("utf-8"))
        else:
            old = json.loads(found)
            diff = sorted(k for k in set(old) | set(self.header) if old.get(k) != self.header.get(k))
            if diff:
                what = "; ".join(f"{k}: {old.get(k)!r} there, {self.header.get(k)!r} now" for k in diff[:4])
                raise StateStoreError(f"{self.out} holds a store begun with other settings ({what}); "
                                      f"encode into a new folder, or remove it to start over")

    @staticmethod
    def shard_name(i: int) -> str:
        return f"states-{i:06d}.tar"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _exists(self, name: str) -> bool:
        return self.fs.exists(self._path(name)) if self.remote else os.path.exists(self._path(name))

    def _read_bytes(self, name: str) -> bytes | None:
        if not self._exists(name):
            return None
        if self.remote:
            with self.fs.open(self._path(name), "rb") as f:
                return f.read()
        return Path(self._path(name)).read_bytes()

    def _write(self, name: str, data: bytes) -> None:
        """Publish ``data`` as ``name`` in one rename: a reader or a resume sees all of it or none."""
        if not self.remote:
            atomic_write(self._path(name), lambda p: p.write_bytes(data))
            return
        tmp = self._path(f".{name}.tmp")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, self._path(name))

    def done(self, shard: int) -> bool:
        """True when shard ``shard`` was written completely (by this or an earlier run)."""
        return self._exists(self.shard_name(shard))

    def write_shard(self, shard: int, samples: Iterable[tuple[str, dict, bytes | None]]) -> None:
        """Write shard ``shard`` from ``(key, meta, states bytes or None for a bad sample)``;
        published only once complete. The sample count must be the video shard's."""
        buf = io.BytesIO()
        n = 0
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, meta, data in samples:
                ext = "states" if data is not None else "bad"
                body = json.dumps(dict(meta, ext=ext), sort_keys=True).encode("utf-8")
                for name, payload in ((f"{key}.json", body), (f"{key}.{ext}", data or b"")):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
                n += 1
        if n != self.counts[shard]:
            raise StateStoreError(f"shard {shard}: {n} samples written, the video shard holds {self.counts[shard]}")
        self._write(self.shard_name(shard), buf.getvalue())

    def finish(self) -> dict:
        """Write the index (sizes, checksums, bad samples) once every shard is in place."""
        shards, bad = [], []
        for i, count in enumerate(self.counts):
            name = self.shard_name(i)
            if not self._exists(name):
                raise StateStoreError(f"{self.out}: shard {name} is missing; encode again to finish the store")
            data = self._read_bytes(name)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    if member.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(member).read().decode("utf-8"))
                        if "bad" in meta:
                            bad.append({"source": meta.get("source"), "sample": meta.get("sample"),
                                        "reason": meta["bad"]})
            shards.append({"url": name, "samples": count, "bytes": len(data), "sha256": _sha256(data)})
        index = {"format": FORMAT, "samples": sum(self.counts), "bytes": sum(s["bytes"] for s in shards),
                 "shards": shards, "bad": bad, "header": self.header}
        self._write(INDEX_NAME, json.dumps(index, indent=1).encode("utf-8"))
        index["index_path"] = self._path(INDEX_NAME) if not self.remote else f"{self.out}/{INDEX_NAME}"
        return index


# ---- reading --------------------------------------------------------------------------------
class StateStream(ShardStream):
    """A state store's samples as a shard stream: yields ``(states or None, global id, reason)``
    with ``states`` float32 ``(T, N, D)``. Planning, shuffle-buffer draws, rank sharding and
    exact resume are :class:`~fastlam.data.shards.ShardStream`'s (through
    :class:`~fastlam.data.shards.ShardLoader`), so a store made from video shards gives the
    order training from those shards gives; a sample whose states do not check out (size,
    sha256) or that could not be encoded is a bad sample, reported and counted as consumed."""

    def __init__(self, source: str, **stream_args):
        """``stream_args``: the shard stream's (seed, rank, world_size, shuffle_buffer,
        drop_last, cache, and its bad-sample settings); the clip settings are the store's."""
        self.index = read_store_header(source)
        h = self.index["header"]
        super().__init__(source, num_frames=int(h["num_frames"]), fps=float(h["fps"]), size=tuple(h["size"]),
                         crop=h["crop"], short_policy=h["short_policy"], **stream_args)
        self.header = h

    def __iter__(self):
        # The shard stream's iteration with the states read instead of a clip decoded; the draws
        # are the stream's, so the order is the one training from the video shards has.
        keys, plan_worker = self._worker_keys()
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, self.rank, plan_worker]))
        skip = self.mine.copy()

        def load(item):
            g, data, meta = item
            if "bad" in meta:  # not encodable when the store was written, or lost to the shard's damage
                return None, g, f"{meta.get('source', g)}: {meta['bad']}"
            try:
                return states_from_bytes(data, meta), g, ""
            except (ValueError, KeyError) as e:
                return None, g, f"{meta.get('source', g)}: {type(e).__name__}: {e}"

        for item in shuffle_buffered(self._read(keys, skip), self.shuffle_buffer, rng):
            yield load(item)

