"""Corpus manifests: every video probed once, offline, into one Parquet table.

``python -m fastlam.data index SRC... --out manifest.parquet`` scans folders (recursively),
text files of paths (one per line) and V-JEPA 2-style CSV lists (``path label`` per line,
space separated, no header), probes each file once in a process pool (container, codec, frame
rate, duration, frames, size, pixel aspect, and whether its first frame decodes at all) and
writes one row per file, bad files included with the reason. Paths may be fsspec URLs
(``s3://``, ``gs://``, ``https://``): they are probed through range reads, not downloaded.

Why Parquet: a manifest of ten million clips is a table that is written once and read
column-wise (loaders want path, duration and geometry, never the reasons), by fastlam and by
the tools people already use to slice corpora (pandas, DuckDB, Spark). Parquet is columnar,
compressed and typed; pyarrow reads the columns a loader needs into contiguous Arrow buffers
(one string buffer for all paths, not one Python object per video), so start-up is a single
read whose cost per video is a few bytes and well under a microsecond (measured in the data
README). JSONL is accepted too (``--out x.jsonl``) for small corpora and for grepping.

Resumable: results are appended, one flushed JSON line per file, to ``<out>.partial.jsonl``
as they arrive; a rerun after an interruption reads it back and probes only the paths not yet
in it. The Parquet file and ``<out>.summary.json`` (counts, hours, codecs, bad files) are
written at the end, then the journal is removed.

Loaders never probe a file the manifest describes: :class:`~fastlam.data.VideoClipDataset`
(and so the DataLoader and DALI paths of ``fastlam.train``) accept a manifest as ``source``.
"""
from __future__ import annotations

import bisect
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..inputs import InputError, MissingInputError, check_path_list, describe_path
from .decoding import (VideoDecodeError, decode_errors, open_video, probe_opened, resized_frame_shape,
                       stream_sar)
from .remote import is_remote, open_binary
from .video import VIDEO_EXTENSIONS
from .walk import walk_videos, warn_unreadable

__all__ = ["scan_sources", "probe_file", "build_manifest", "load_manifest", "read_columns", "Manifest",
           "check_manifest_files",
           "is_manifest", "MANIFEST_SUFFIXES", "summarize", "write_manifest"]

MANIFEST_SUFFIXES = (".parquet", ".jsonl")
_COLUMNS = ("path", "label", "ok", "reason", "bytes", "container", "codec", "fps", "duration_s",
            "num_frames", "width", "height", "sar_num", "sar_den")


def is_manifest(source) -> bool:
    """True when ``source`` names a manifest file (by its suffix)."""
    return isinstance(source, (str, os.PathLike)) and str(source).endswith(MANIFEST_SUFFIXES)


# ---- scanning ------------------------------------------------------------------------------
def _read_list(src: str, csv: bool) -> Iterator[tuple[str, int]]:
    base = os.path.dirname(src) if not is_remote(src) else src.rsplit("/", 1)[0]
    with open_binary(src) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"source {src!r} is {describe_path(src) if not is_remote(src) else 'binary data'}, not a "
                         f"text list of video paths; pass {_SOURCES}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label = -1
        if csv:
            # V-JEPA 2 lists: "path label", space separated; the path itself may hold spaces.
            head, _, tail = line.rpartition(" ")
            if head and tail.lstrip("-").isdigit():
                line, label = head.strip(), int(tail)
        if not is_remote(line) and not os.path.isabs(os.path.expanduser(line)):
            # Relative entries are relative to the list, so a list travels with its data.
            line = f"{base}/{line}" if is_remote(base) else os.path.join(base, line)
        yield (line if is_remote(line) else os.path.abspath(os.path.expanduser(line))), label


def scan_sources(sources: Sequence[str | os.PathLike], extensions: Sequence[str] | None = None,
                 unreadable: list[dict] | None = None) -> list[tuple[str, int]]:
    """``(path, label)`` for every video the sources name, in order, duplicates dropped.

    A directory is walked recursively (``extensions`` filter, default the dataset's); a
    ``.csv`` is a V-JEPA 2 list (``path label``); any other file is a list of paths, unless its
    suffix is a video extension (then it is one video). ``label`` is -1 when there is none.
    Directories that cannot be listed are warned about (:class:`~fastlam.data.walk.UnreadableWarning`)
    and appended to ``unreadable`` (``{"path", "reason"}``) when a list is given.
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower()
                 for e in (extensions or VIDEO_EXTENSIONS))
    out: list[tuple[str, int]] = []
    seen = set()

    def add(path, label):
        if path not in seen:
            seen.add(path)
            out.append((path, label))

    for src in sources:
        s = str(src)
        if is_remote(s):
            if s.lower().endswith(exts):
                add(s, -1)
            else:
                for p, lab in _read_list(s, csv=s.lower().endswith(".csv")):
                    add(p, lab)
            continue
        p = Path(s).expanduser()
        if not p.exists():
            raise ValueError(f"source {s!r} does not exist (expected a directory of videos, a "
                             f"text file of paths, a 'path label' .csv list, or a video)")
        if p.is_dir():
            found, skipped = walk_videos(p, exts)
            for path in found:
                add(os.path.abspath(path), -1)
            warn_unreadable(s, skipped)
            if unreadable is not None:
                unreadable.extend(skipped)
        elif p.suffix.lower() in exts:
            add(str(p.absolute()), -1)
        else:
            listed = list(_read_list(str(p), csv=p.suffix.lower() == ".csv"))
            if not listed:
                raise InputError(f"source {s!r} is {describe_path(p)} that lists no paths (one per line; blank "
                                 f"lines and '#' comments are ignored); pass {_SOURCES}")
            check_path_list(p, [path for path, _ in listed], "source", _SOURCES)
            for path, lab in listed:
                add(path, lab)
    return out


_SOURCES = "a directory of videos, a text file of paths, a 'path label' .csv list, or a video"


# ---- probing -------------------------------------------------------------------------------
def _row(path: str, label: int, **kw) -> dict:
    row = {"path": path, "label": int(label), "ok": False, "reason": "", "bytes": -1,
           "container": "", "codec": "", "fps": 0.0, "duration_s": 0.0, "num_frames": 0,
           "width": 0, "height": 0, "sar_num": 1, "sar_den": 1}
    row.update(kw)
    return row


def probe_file(item: tuple[str, int]) -> dict:
    """One manifest row for ``(path, label)``: metadata, and whether a frame decodes.

    Never raises for a bad file: ``ok`` is False and ``reason`` says why.
    """
    import av  # optional: PyAV (the data extra; imported here so the pool's children load it)

    path, label = item
    container = None
    try:
        if is_remote(path):
            size = None
            fileobj = open_binary(path)
            try:
                container = av.open(fileobj, mode="r")
            except decode_errors() as e:
                fileobj.close()
                return _row(path, label, reason=f"cannot open: {type(e).__name__}: {e}")
            size = getattr(fileobj, "size", None)
            if not container.streams.video:
                return _row(path, label, reason="no video stream")
            stream = container.streams.video[0]
        else:
            size = os.path.getsize(path) if os.path.isfile(path) else None
            container, stream = open_video(path)
        info = probe_opened(path, container, stream, exact=True)
        sar = stream_sar(stream)
        # "Decodes at all": the first frame, from the start (``probe_opened`` may have demuxed it all).
        container.seek(0, stream=stream, backward=True, any_frame=False)
        frame = next(iter(container.decode(stream)), None)
        base = dict(bytes=int(size) if size is not None else -1, container=container.format.name,
                    codec=info.codec, fps=float(info.fps), duration_s=float(info.duration_s),
                    num_frames=int(info.num_frames), width=int(info.width), height=int(info.height),
                    sar_num=int(sar.numerator) if sar > 0 else 1,
                    sar_den=int(sar.denominator) if sar > 0 else 1)
        if frame is None:
            return _row(path, label, reason="no frame decodes", **base)
        if not (info.duration_s > 0 and math.isfinite(info.duration_s)):
            return _row(path, label, reason="no duration (neither headers nor packets give one)",
                        **base)
        return _row(path, label, ok=True, **base)
    except VideoDecodeError as e:
        return _row(path, label, reason=e.reason,
                    bytes=os.path.getsize(path) if os.path.isfile(path) else -1)
    except decode_errors() as e:
        return _row(path, label, reason=f"decoding failed: {type(e).__name__}: {e}")
    finally:
        if container is not None:
            container.close()


# ---- building ------------------------------------------------------------------------------
def _journal(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def _read_journal(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            # The last line of a run killed mid-write may be cut: that file is probed again.
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "path" in row:
                done[row["path"]] = row
    return done


def summarize(rows: Iterable[dict], max_bad: int = 1000) -> dict:
    """Counts, hours of (good) video, codecs, and the bad files with their reasons."""
    n = ok = 0
    seconds = 0.0
    codecs: Counter = Counter()
    reasons: Counter = Counter()
    bad = []
    for r in rows:
        n += 1
        if r["ok"]:
            ok += 1
            seconds += r["duration_s"]
            codecs[r["codec"]] += 1
        else:
            reasons[r["reason"].split(":")[0]] += 1
            if len(bad) < max_bad:
                bad.append({"path": r["path"], "reason": r["reason"]})
    return {"files": n, "ok": ok, "bad": n - ok, "hours": seconds / 3600.0,
            "codecs": dict(codecs.most_common()), "bad_reasons": dict(reasons.most_common()),
            "bad_files": bad, "bad_files_listed": len(bad)}


def write_manifest(rows: list[dict], out: Path) -> None:
    """Write manifest ``rows`` (dicts with every column) to ``out`` (.parquet, else JSONL), atomically."""
    rows = sorted(rows, key=lambda r: r["path"])  # sorted: loaders look paths up by bisection
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        import pyarrow as pa  # optional: pyarrow (the data extra)
        import pyarrow.parquet as pq  # optional: pyarrow

        schema = pa.schema([("path", pa.string()), ("label", pa.int64()), ("ok", pa.bool_()),
                            ("reason", pa.string()), ("bytes", pa.int64()), ("container", pa.string()),
                            ("codec", pa.string()), ("fps", pa.float64()), ("duration_s", pa.float64()),
                            ("num_frames", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
                            ("sar_num", pa.int32()), ("sar_den", pa.int32())])
        table = pa.table({c: [r[c] for r in rows] for c in _COLUMNS}, schema=schema)
        pq.write_table(table, tmp, compression="zstd")
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({c: r[c] for c in _COLUMNS}) + "\n")
    os.replace(tmp, out)


def build_manifest(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                   workers: int | None = None, extensions: Sequence[str] | None = None,
                   progress: bool = True, limit: int | None = None) -> dict:
    """Probe every video of ``sources`` into the manifest ``out``; returns the summary.

    ``limit`` stops after that many new probes (what an interruption looks like; the tests
    use it), leaving the journal for the next call to resume from.
    """
    out = Path(out)
    if not str(out).endswith(MANIFEST_SUFFIXES):
        raise ValueError(f"out must end in {' or '.join(MANIFEST_SUFFIXES)}, got {str(out)!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an int >= 0 (0: probe in this process), got {workers!r}")
    unreadable: list[dict] = []
    items = scan_sources(sources, extensions, unreadable)
    if not items:  # before anything is written: an empty manifest helps nobody
        raise InputError(f"sources: no video files in {[str(s) for s in sources]} (folders are searched "
                         f"recursively by extension); pass {_SOURCES}")
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = _journal(out)
    done = _read_journal(journal)
    todo = [it for it in items if it[0] not in done]
    if limit is not None:
        todo = todo[:limit]
    workers = (os.cpu_count() or 1) if workers is None else workers
    t0 = time.perf_counter()
    bar = None
    if progress:
        bar = tqdm(total=len(items), initial=len(items) - len(todo) if limit is None else len(done),
                   unit="video", desc="index", file=sys.stderr)
    with open(journal, "a", encoding="utf-8") as jf:
        def record(row):
            jf.write(json.dumps(row) + "\n")
            jf.flush()  # a kill loses at most the line being written
            done[row["path"]] = row
            if bar is not None:
                bar.update(1)

        if workers <= 1 or len(todo) <= 1:
            for it in todo:
                record(probe_file(it))
        else:
            # fork where there is one: spawned children would each import torch again (~10 s
            # on a loaded machine); probing uses no torch op, so no half-locked pool matters.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers, maxtasksperchild=2000) as pool:
                for row in pool.imap_unordered(probe_file, todo, chunksize=8):
                    record(row)
    if bar is not None:
        bar.close()
    wanted = {p for p, _ in items}
    complete = wanted.issubset(done)
    if not complete:
        return {"complete": False, "probed": len(todo), "remaining": len(wanted - done.keys()),
                "journal": str(journal)}
    rows = [done[p] for p, _ in items]
    write_manifest(rows, out)
    summary = summarize(rows)
    # Directories the walk could not list: their videos are in no row, so the summary says so.
    summary.update(complete=True, manifest=str(out), probe_seconds=time.perf_counter() - t0,
                   probed_this_run=len(todo), unreadable_dirs=unreadable)
    with open(out.with_name(out.name + ".summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    journal.unlink()
    return summary


# ---- loading -------------------------------------------------------------------------------
class _Column:
    """A read-only sequence over one Arrow column (no Python object per row until indexed)."""

    def __init__(self, array):
        self._a = array

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._a[j].as_py() for j in range(*i.indices(len(self._a)))]
        return self._a[i].as_py()

    def __iter__(self):
        for v in self._a:
            yield v.as_py()

    def __reduce__(self):  # DataLoader workers get the Arrow buffers, not a list of str
        return (_Column, (self._a,))


class Manifest:
    """The usable (``ok``) rows of a manifest, column-wise; ``bad`` counts the others.

    Rows are sorted by path; :meth:`row_of` finds a path by bisection (O(log n), no dict of
    all paths), which is what keeps start-up O(1) per video in time and memory.
    """

    def __init__(self, path: str | os.PathLike):
        import pyarrow as pa  # optional: pyarrow (the data extra)

        self.source = str(path)
        what = "a manifest written by 'python -m fastlam.data index' (.parquet or .jsonl)"
        if not is_remote(self.source):
            if not os.path.exists(self.source):
                raise MissingInputError(f"manifest {self.source!r}: no such file; pass {what}")
            if not os.path.isfile(self.source):
                raise InputError(f"manifest {self.source!r} is {describe_path(self.source)}, not a file; pass {what}")
        if not self.source.endswith((".parquet", ".jsonl")):
            found = describe_path(self.source) if not is_remote(self.source) else "a file"
            raise InputError(f"manifest {self.source!r} is {found}, not a .parquet or .jsonl manifest; pass {what}")
        # Only what a loader needs (reasons, codecs, labels stay on disk).
        table = read_columns(self.source, ["path", "ok", "duration_s", "num_frames", "width", "height",
                                           "sar_num", "sar_den"])
        n_all = table.num_rows
        ok = table["ok"].to_numpy()  # numpy, not pyarrow.compute (importing it costs ~1 s)
        if not ok.all():
            table = table.take(pa.array(np.flatnonzero(ok)))
        self.bad = n_all - table.num_rows
        table = table.combine_chunks()
        self.table = table
        # Rows are written sorted by path; a manifest from elsewhere that is not only makes
        # row_of miss, and the dataset then probes that file as it would without a manifest.
        self.paths = _Column(table["path"].chunk(0) if table.num_rows else pa.array([], pa.string()))
        self._duration = table["duration_s"].to_numpy()
        self._frames = table["num_frames"].to_numpy()
        self._wh = (table["width"].to_numpy(), table["height"].to_numpy())
        self._sar = (table["sar_num"].to_numpy(), table["sar_den"].to_numpy())

    def __len__(self) -> int:
        return len(self.paths)

    def row_of(self, path: str) -> int:
        """The row of ``path``, or -1 when the manifest does not list it."""
        i = bisect.bisect_left(self.paths, path)
        return i if i < len(self.paths) and self.paths[i] == path else -1

    def meta(self, row: int) -> dict:
        return {"duration_s": float(self._duration[row]), "num_frames": int(self._frames[row]),
                "width": int(self._wh[0][row]), "height": int(self._wh[1][row]),
                "sar": Fraction(int(self._sar[0][row]), int(self._sar[1][row]))}


def read_columns(source: str, columns: Sequence[str]):
    """The Arrow table of ``columns`` of the manifest ``source`` (.parquet or .jsonl). A file
    that is no manifest, or one without some of the columns, is an :class:`InputError` (one
    line naming the file and what is missing; exit status 2 from every command line), never
    pyarrow's multi-line error or a ``KeyError`` traceback."""
    what = "a manifest written by 'python -m fastlam.data index' (.parquet or .jsonl)"
    try:
        if source.endswith(".parquet"):
            import pyarrow.parquet as pq  # optional: pyarrow (the data extra)

            # One thread: arrow's reader pool costs more than it saves for a few columns (and
            # ~50 MiB of resident memory), measured on 100k rows.
            # ParquetFile, not read_table(path): that one imports pyarrow.dataset (~1-3 s).
            with open_binary(source) as f:
                pf = pq.ParquetFile(f)
                have = pf.schema_arrow.names
                missing = [c for c in columns if c not in have]
                table = None if missing else pf.read(columns=list(columns), use_threads=False)
        else:
            import pyarrow.json as pj  # optional: pyarrow (the data extra)

            with open_binary(source) as f:
                table = pj.read_json(f)
            have = table.column_names
            missing = [c for c in columns if c not in have]
            table = None if missing else table.select(list(columns))
    # pyarrow's errors (ArrowInvalid, OSError) span lines and never name the file: a text,
    # empty, truncated or foreign file gets one line instead.
    except Exception as e:  # noqa: BLE001
        found = describe_path(source) if not is_remote(source) else "unreadable"
        why = " ".join(str(e).split())[:200]
        raise InputError(f"manifest {source!r} is {found}, not a readable manifest ({why}); "
                         f"pass {what}") from None
    if missing:
        raise InputError(f"manifest {source!r} has no column {', '.join(map(repr, missing))} (it has "
                         f"{', '.join(have)}); pass {what}")
    return table


def load_manifest(path: str | os.PathLike) -> Manifest:
    return Manifest(path)


def check_manifest_files(source, sample: int = 16) -> None:
    """Before a run writes anything: ``source``, if it is a manifest, must load and its videos
    must still be where it says. Up to ``sample`` rows spread over the table are looked at
    (a stat each, so a manifest of millions costs the same); none of them there means the
    videos moved since indexing, a :class:`MissingInputError`. A few missing files are the
    bad-file policy's business (reported when read), not a reason to refuse the run."""
    if not is_manifest(source):
        return
    m = load_manifest(source)
    rows = sorted({int(i) for i in np.linspace(0, len(m) - 1, min(sample, len(m)))}) if len(m) else []
    local = [m.paths[i] for i in rows if not is_remote(m.paths[i])]
    if local and not any(os.path.exists(p) for p in local):
        raise MissingInputError(f"manifest {str(source)!r}: none of the {len(local)} videos looked at exists "
                                f"(e.g. {local[0]}); the videos moved since it was indexed: index them again "
                                f"where they are ('python -m fastlam.data index')")


class ManifestMeta:
    """``VideoClipDataset._meta`` for a manifest source: (header duration, estimated decoded
    bytes) looked up in the manifest instead of probed; what the dataset learns later (the
    real decoded size) goes in an overlay dict."""

    def __init__(self, manifest: Manifest, short_side: int):
        self.manifest, self.short_side = manifest, short_side
        self._overlay: dict[str, tuple[float, int]] = {}

    def __contains__(self, path) -> bool:
        return path in self._overlay or self.manifest.row_of(path) >= 0

    def __getitem__(self, path):
        got = self._overlay.get(path)
        if got is not None:
            return got
        row = self.manifest.row_of(path)
        if row < 0:
            raise KeyError(path)
        m = self.manifest.meta(row)
        rh, rw = resized_frame_shape(m["width"], m["height"], m["sar"], self.short_side)
        return (m["duration_s"], m["num_frames"] * rh * rw * 3)

    def __setitem__(self, path, value) -> None:
        self._overlay[path] = value
