"""``python -m fastlam.data shard``: a manifest's videos into WebDataset tar shards, atomically.

The manifest's usable videos, in an order shuffled once by ``seed`` (so each shard mixes
sources), go into tars of about ``shard_bytes`` each, every sample being two members,
``<key>.json`` (source path, label, the stored video's duration, fps, frames, size, codec, and
the sha256 of the video member) and ``<key>.<ext>`` (the video: the file as it is, or re-encoded
to H.264 ``.mp4`` at the training frame rate and resolution, which cuts decode cost by the ratio
of pixel rates). ``shards.json`` lists each shard's sample count, byte size and sha256, which is
all a reader needs at start-up (O(shards), not O(samples)) and what it verifies.

Nothing a reader can see is ever half written, and a kill at any moment leaves the published set
(the last ``shards.json`` and the tars it lists) intact and readable:

* a tar is written as ``.<name>.part``, fsynced, then renamed; ``shards.json`` is written last
  (``.shards.json.part``, fsync, rename), and only then are the tars of the set it replaces
  deleted;
* a set written over an existing one uses new tar names (``shard-g<generation>-NNNNNN.tar``), so
  the old ``shards.json`` never meets a new tar;
* an existing folder follows the run-folder rule: refused unless ``resume`` (continue an
  interrupted write: the finished shards, recorded in ``.shards-progress.jsonl`` as each is
  renamed, are kept and the rest written) or ``overwrite`` (write a new set, publish it, then
  delete the old one);
* copying (no ``--fps/--size/--max-seconds``) is byte for byte reproducible, and so a resumed
  copy equals an uninterrupted one (tested). Re-encoding is NOT byte for byte reproducible,
  though x264 and swscale run on one thread: in tests, two writes in one process gave
  identical decoded-and-scaled input planes (Y, U, V, hashed per frame) and the same x264
  option string (``threads=1 lookahead_threads=1 sliced_threads=0``), yet in about 1 of 3
  test-file runs every encoded video of the second write differed by a few bytes from the
  first's; alone in a process 12 of 12 writes were identical. The cause inside libx264 / PyAV
  was not found. What holds (tested): the same samples in the same shards with the same
  metadata (fps, frames, size, duration), each video checked by its own sha256; a resumed
  re-encoding is a valid set, not necessarily the uninterrupted one's bytes.

Videos that cannot be read or encoded are left out and listed with the reason in the index's
``bad`` (the CLI prints each one and the count).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import sys
import tarfile
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .decoding import probe_opened, resized_frame_shape, stream_sar
from .manifest import load_manifest, read_columns
from .remote import default_cache, is_remote, read_bytes

__all__ = ["write_shards", "ShardFolderError", "INDEX_NAME", "PROGRESS_NAME", "file_sha256"]

INDEX_NAME = "shards.json"
PROGRESS_NAME = ".shards-progress.jsonl"


class ShardFolderError(ValueError):
    """The output folder does not fit the request (a set is there, or nothing to resume)."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reencode(path: str, fps: float | None, short_side: int | None,
              max_seconds: float | None) -> bytes:
    """H.264 MP4 of ``path`` at ``fps`` (frames picked by timestamp, the clip rule) with the
    shorter side scaled to ``short_side``; keyframe every second so clip reads seek close. A
    URL is read from a local copy (one GET, retried; see :mod:`fastlam.data.remote`)."""
    import av  # optional: PyAV (the data extra)

    buf = io.BytesIO()
    with av.open(default_cache().local_path(path)) as inp:
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
            # One encoder (and scaler) thread: x264's output depends on how frames are split
            # between threads. Not enough for identical bytes, though: see the module docstring.
            ost.codec_context.thread_count = 1
            ost.options = {"preset": "veryfast", "crf": "20", "g": str(max(1, round(float(rate)))),
                           "threads": "1"}
            origin = ist.start_time or 0
            k, held = 0, None
            tb = ist.time_base

            def emit(frame):
                nonlocal k
                img = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA", threads=1)
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
            data = read_bytes(path)  # one GET for a URL, retried: no range requests needed
            ext = Path(path.split("?")[0]).suffix.lstrip(".").lower() or "mp4"
            m = dict(meta)
        else:
            data = _reencode(path, fps, short_side, max_seconds)
            ext = "mp4"
            m = _stored_meta(data)
        m.update(source=path, label=label, ext=ext, sha256=hashlib.sha256(data).hexdigest())
        return i, data, m
    except Exception as e:  # a file that went bad since indexing: left out, reported
        return i, None, {"source": path, "reason": f"{type(e).__name__}: {e}"}


def _jobs(manifest, fps, short_side, max_seconds, seed) -> list[tuple]:
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
    return jobs


def _read_json(fs, path: str) -> dict | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def _read_progress(path: Path) -> list[dict]:
    """The finished shards an interrupted write recorded (whole lines only: a kill may cut the
    last one)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def _check_folder(fs, root: str, remote: bool, resume: bool, overwrite: bool,
                  settings: dict) -> tuple[dict | None, list[dict]]:
    """(the published index there or None, the finished shards to keep) under the run-folder
    rule; raises :class:`ShardFolderError` when the request does not fit the folder."""
    if resume and overwrite:
        raise ShardFolderError("--resume and --overwrite: pass one (--resume continues an interrupted "
                               "write, --overwrite writes a new set that replaces the one there)")
    old = _read_json(fs, f"{root}/{INDEX_NAME}")
    progress = [] if remote else _read_progress(Path(root) / PROGRESS_NAME)
    if resume:
        if remote:
            raise ShardFolderError("--resume: not supported for an fsspec --out (its shards are "
                                   "staged locally); pass --overwrite to write the set again")
        if not progress:
            raise ShardFolderError(f"--resume: no interrupted write in {root} ({PROGRESS_NAME} "
                                   f"is missing or empty); drop --resume to write a new set there")
        if progress[0]["settings"] != settings:
            raise ShardFolderError(f"--resume: the interrupted write in {root} had other settings "
                                   f"({progress[0]['settings']}); pass the same ones, or --overwrite")
        return old, progress
    if (old is not None or progress) and not overwrite:
        what = (f"a set of {old['samples']} samples in {len(old['shards'])} shards" if old is not None
                else "an interrupted write")
        raise ShardFolderError(
            f"--out {root} already holds {what}; pass --resume to continue an interrupted write, "
            f"--out <another folder> to write a new set, or --overwrite to replace it (the old "
            f"set stays readable until the new {INDEX_NAME} is published)")
    return old, []


def write_shards(manifest, out, *, shard_bytes: int = 512 << 20, fps: float | None = None,
                 short_side: int | None = None, max_seconds: float | None = None,
                 workers: int | None = None, progress: bool = True, seed: int = 0,
                 resume: bool = False, overwrite: bool = False) -> dict:
    """Write the manifest's usable videos into tar shards under ``out``; returns the index
    (its ``bad``: every video left out, with the reason)."""
    if not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise ValueError(f"shard_bytes must be a positive int, got {shard_bytes!r}")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number or None (copy), got {fps!r}")
    if short_side is not None and (not isinstance(short_side, int) or short_side < 2):
        raise ValueError(f"short_side must be an int >= 2 or None (keep), got {short_side!r}")
    import fsspec  # optional: fsspec (the remote extra; a local folder is its "file" system)

    out_s = str(out).rstrip("/")
    remote = is_remote(out_s)
    fs, root = fsspec.core.url_to_fs(out_s)
    root = root.rstrip("/") or "/"
    settings = {"fps": fps, "short_side": short_side, "max_seconds": max_seconds,
                "shard_bytes": shard_bytes, "seed": seed, "manifest": str(manifest)}
    old, kept = _check_folder(fs, root, remote, resume, overwrite, settings)
    jobs = _jobs(manifest, fps, short_side, max_seconds, seed)
    # New names whenever a set is there, so its index never lists a tar of this one.
    generation = (old.get("generation", 0) + 1) if old is not None else 0
    if kept:
        generation = kept[0]["generation"]
    prefix = "shard-" if generation == 0 else f"shard-g{generation}-"
    stage = Path(tempfile.mkdtemp(prefix="fastlam-shards-")) if remote else Path(root)
    stage.mkdir(parents=True, exist_ok=True)
    for p in stage.glob(".*.part"):  # a killed write's unfinished files
        p.unlink()
    progress_file = stage / PROGRESS_NAME
    if not kept and progress_file.exists():
        progress_file.unlink()  # --overwrite over an interrupted write
    shards = [k["shard"] for k in kept]
    bad: list[dict] = [b for k in kept for b in k["bad"]]
    start = kept[-1]["next_job"] if kept else 0
    for s in shards:  # a kept shard must be the file that was recorded
        f = stage / s["url"]
        if not f.is_file() or f.stat().st_size != s["bytes"] or file_sha256(f) != s["sha256"]:
            raise ShardFolderError(f"--resume: {f} no longer matches what the interrupted write "
                                   f"recorded; pass --overwrite to write the set again")
    state = {"tar": None, "bytes": 0, "n": 0, "bad": []}

    def part_of(name: str) -> Path:
        return stage / f".{name}.part"

    def close(next_job: int):
        if state["tar"] is None:
            return
        state["tar"].close()
        name = f"{prefix}{len(shards):06d}.tar"
        with open(part_of(name), "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part_of(name), stage / name)
        entry = {"url": name, "samples": state["n"], "bytes": os.path.getsize(stage / name),
                 "sha256": file_sha256(stage / name)}
        shards.append(entry)
        if not remote:  # what --resume keeps: recorded only once the tar is in place
            with open(progress_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"shard": entry, "next_job": next_job, "bad": state["bad"],
                                    "generation": generation, "settings": settings}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        state["tar"], state["bad"] = None, []

    def add(key: str, ext: str, data: bytes):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        state["tar"].addfile(info, io.BytesIO(data))

    todo = jobs[start:]
    bar = None
    if progress:
        bar = tqdm(total=len(jobs), initial=start, unit="video", desc="shard", file=sys.stderr)
    workers = 1 if workers is None else workers
    if workers > 1 and (fps is not None or short_side is not None or max_seconds is not None):
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap(_sample, todo, chunksize=1)  # ordered: shard contents are fixed
    else:
        pool, results = None, map(_sample, todo)
    try:
        for i, data, meta in results:
            if bar is not None:
                bar.update(1)
            if data is None:
                bad.append(meta)
                state["bad"].append(meta)
                continue
            body = json.dumps(meta, sort_keys=True).encode("utf-8")
            size = len(data) + len(body) + 2048  # two headers + padding, roughly
            if state["tar"] is not None and state["bytes"] + size > shard_bytes:
                close(i)
            if state["tar"] is None:
                state["tar"] = tarfile.open(part_of(f"{prefix}{len(shards):06d}.tar"), "w",
                                            format=tarfile.USTAR_FORMAT)
                state["bytes"], state["n"] = 0, 0
            key = f"{i:09d}"
            add(key, "json", body)
            add(key, meta["ext"], data)
            state["bytes"] += size
            state["n"] += 1
        close(len(jobs))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    index = {"format": "fastlam-shards-2", "generation": generation,
             "samples": sum(s["samples"] for s in shards),
             "bytes": sum(s["bytes"] for s in shards), "shards": shards, "bad": bad,
             "settings": settings}
    published = _publish(fs, root, stage, remote, index, old)
    index["index_path"] = f"{out_s}/{INDEX_NAME}"
    index["replaced"] = published
    return index


def _publish(fs, root: str, stage: Path, remote: bool, index: dict, old: dict | None) -> int:
    """Make ``index`` the published set: its tars are in place, ``shards.json`` goes last, and
    only then are the old set's tars deleted. Returns how many old tars were deleted."""
    body = json.dumps(index, indent=1).encode("utf-8")
    new_names = {s["url"] for s in index["shards"]}
    if remote:
        fs.makedirs(root, exist_ok=True)
        for name in sorted(new_names):
            fs.put_file(str(stage / name), f"{root}/{name}")
        with fs.open(f"{root}/{INDEX_NAME}", "wb") as f:  # one PUT: the store swaps it whole
            f.write(body)
        for name in sorted(new_names):
            os.unlink(stage / name)
        (stage / PROGRESS_NAME).unlink(missing_ok=True)
        os.rmdir(stage)
    else:
        part = stage / f".{INDEX_NAME}.part"
        with open(part, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, stage / INDEX_NAME)
        _fsync_dir(stage)
        (stage / PROGRESS_NAME).unlink(missing_ok=True)
    deleted = 0
    for s in (old or {}).get("shards", []):
        name = s["url"]
        if name in new_names or "/" in name or is_remote(name):
            continue  # only the old set's own tars in this folder
        path = f"{root}/{name}"
        if fs.exists(path):
            fs.rm_file(path)
            deleted += 1
    return deleted
