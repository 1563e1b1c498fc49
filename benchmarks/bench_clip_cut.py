"""The cost of cutting one clip's packets (what the DALI loaders hand DALI) against the size
of the file it comes from: it should be flat (issue 26, finding 6).

Makes H.264 test files of growing size in a scratch folder (not committed): one base video is
encoded with PyAV, then its packets are looped (remuxed with shifted timestamps, no re-encode)
into MP4 and Matroska files of about ``--sizes`` MB. For each file it times, ``--repeats``
times each, with a clip of 16 frames at 4 fps taken from the middle:

* ``whole_read``: reading the whole file into memory, the step the cut did per clip before
  (``np.fromfile``; the files were just written, so this is a page-cache read, as it was in
  the issue's measurement);
* ``cut_cold``: a fresh :class:`~fastlam.data.video_index.ClipCutter` per clip: open the file,
  parse its header, seek through its index, read and remux the clip's packets;
* ``cut_warm``: one cutter for all clips (the input stays open: no header parse), clips from
  varying middle positions;

with the bytes each cut read and the machine's load average (the CPU is shared). Writes
``clip_cut.json``, ``clip_cut.csv`` and ``clip_cut.md`` under ``--out``.

    python -m benchmarks.bench_clip_cut --sizes 10 100 500 --repeats 9 --out benchmarks/results/clip_cut
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks._common import git_commit
from benchmarks.result_files import write_rows_csv, write_text_atomic


def encode_base(path: Path, *, seconds: float, fps: int, width: int, height: int, gop: int) -> Path:
    """An H.264 video whose frames change a lot (noise on a moving gradient), so its bitrate
    makes file size grow quickly when it is looped."""
    import av  # optional dependency: PyAV (the data extra)

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 160, width, dtype=np.float32)[None, :, None]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "bf": "2", "crf": "23"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = gop
        for i in range(int(seconds * fps)):
            img = (np.roll(ramp, 4 * i, axis=1) + rng.integers(0, 32, (height, width, 3))).clip(0, 255)
            for p in s.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def loop_file(base: Path, out: Path, target_bytes: int) -> Path:
    """Remux ``base``'s video packets over and over, timestamps shifted by the base's span,
    until ``out`` holds about ``target_bytes``."""
    import av  # optional dependency: PyAV (the data extra)

    with av.open(str(base)) as inp:
        ist = inp.streams.video[0]
        packets = [(p.pts, p.dts, p.duration, p.is_keyframe, bytes(p)) for p in inp.demux(ist) if p.size]
        span = max(p[0] + (p[2] or 0) for p in packets) - min(p[0] for p in packets)
        per_loop = sum(len(p[4]) for p in packets)
        with av.open(str(out), "w") as o:
            ost = o.add_stream_from_template(ist)
            for k in range(max(1, round(target_bytes / per_loop))):
                for pts, dts, dur, key, data in packets:
                    pkt = av.Packet(data)
                    pkt.pts, pkt.dts, pkt.duration = pts + k * span, dts + k * span, dur
                    pkt.time_base, pkt.is_keyframe, pkt.stream = ist.time_base, key, ost
                    o.mux(pkt)
    return out


def clip_frames(idx, start_s: float, num_frames: int = 16, fps: float = 4.0) -> np.ndarray:
    """The frames on screen at start + i / fps (the loaders' rule, simplified to sorted pts)."""
    tb = idx.time_base
    want = [idx.origin + int((start_s + i / fps) / tb) for i in range(num_frames)]
    return np.maximum(np.searchsorted(idx.pts, want, side="right") - 1, 0).astype(np.int32)


def summary(times: list[float]) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "max_ms": 1e3 * max(times), "repeats": len(times)}


def measure(path: Path, repeats: int) -> list[dict]:
    from fastlam.data.video_index import ClipCutter, index_video

    t0 = time.perf_counter()
    idx = index_video(str(path))
    index_s = time.perf_counter() - t0
    duration = float((idx.end_pts - idx.origin) * idx.time_base)
    size = path.stat().st_size
    common = {"file": path.name, "container": path.suffix[1:], "file_mb": size / 1e6,
              "duration_s": duration, "frames": len(idx.pts), "index_once_s": index_s}
    rows = []

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = np.fromfile(path, dtype=np.uint8)
        times.append(time.perf_counter() - t0)
    rows.append(dict(common, method="whole_read", bytes_read=len(data), cut_bytes="", **summary(times)))
    del data

    times, read, out = [], [], 0
    for r in range(repeats):
        cutter = ClipCutter()
        frames = clip_frames(idx, duration / 2)
        t0 = time.perf_counter()
        enc, _ = cutter.cut(idx, frames)
        cutter.close()
        times.append(time.perf_counter() - t0)
        read.append(cutter.bytes_read)
        out = len(enc)
    rows.append(dict(common, method="cut_cold", bytes_read=int(statistics.median(read)), cut_bytes=out,
                     **summary(times)))

    cutter = ClipCutter()
    cutter.cut(idx, clip_frames(idx, duration / 2))  # opens the input: not timed
    times, read = [], []
    for r in range(repeats):
        frames = clip_frames(idx, duration * (0.4 + 0.2 * r / max(1, repeats - 1)))
        before = cutter.bytes_read
        t0 = time.perf_counter()
        enc, _ = cutter.cut(idx, frames)
        times.append(time.perf_counter() - t0)
        read.append(cutter.bytes_read - before)
    cutter.close()
    rows.append(dict(common, method="cut_warm", bytes_read=int(statistics.median(read)), cut_bytes=len(enc),
                     **summary(times)))
    if cutter.whole_file_reads:
        raise RuntimeError(f"{path.name}: {cutter.whole_file_reads} cut(s) fell back to the whole file")
    return rows


FIELDS = ["file", "container", "file_mb", "duration_s", "frames", "method", "median_ms", "min_ms", "max_ms",
          "repeats", "bytes_read", "cut_bytes", "index_once_s"]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Clip cut cost against file size ({meta['device']}, {meta['date']}, commit {meta['commit'][:10]})",
             "", f"Machine: {meta['machine']}. Load average (1 min) before / after: "
             f"{meta['load_before'][0]:.2f} / {meta['load_after'][0]:.2f} (other jobs were running).",
             f"Each time: median (min-max) of {meta['settings']['repeats']} repeats; one clip of 16 frames at "
             "4 fps from the middle of the file. Files page-cached (just written).", "",
             "| file | MB | frames | whole-file read ms (before) | cut, cold ms | cut, warm ms | bytes read cold / warm | cut bytes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_file: dict = {}
    for r in rows:
        by_file.setdefault(r["file"], {})[r["method"]] = r
    for name, m in by_file.items():
        w, c, h = m["whole_read"], m["cut_cold"], m["cut_warm"]

        def cell(r):
            return f"{r['median_ms']:.2f} ({r['min_ms']:.2f}-{r['max_ms']:.2f})"
        lines.append(f"| {name} | {w['file_mb']:.0f} | {w['frames']} | {cell(w)} | {cell(c)} | {cell(h)} | "
                     f"{c['bytes_read'] / 1e3:.0f} kB / {h['bytes_read'] / 1e3:.0f} kB | {c['cut_bytes'] / 1e3:.0f} kB |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_clip_cut",
                                 description="Time cutting one clip's packets from files of growing size "
                                             "(should be flat) against reading the whole file.")
    ap.add_argument("--sizes", type=float, nargs="+", default=[10, 100, 500], help="file sizes in MB")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per method and file")
    ap.add_argument("--work", default=None, help="scratch folder for the test files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the test files")
    ap.add_argument("--out", default=None, help="folder for clip_cut.{json,csv,md} (default: print only)")
    return ap


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="clip_cut_"))
    work.mkdir(parents=True, exist_ok=True)
    base = encode_base(work / "base.mp4", seconds=10, fps=30, width=320, height=240, gop=60)
    files = []
    for mb in a.sizes:
        for suffix in (".mp4", ".mkv"):
            files.append(loop_file(base, work / f"loop_{mb:g}MB{suffix}", int(mb * 1e6)))
    meta = {"device": "cpu", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "machine": f"{platform.processor() or platform.machine()}, "
                                              f"{os.cpu_count()} CPUs", "settings": vars(a),
            "load_before": list(os.getloadavg())}
    rows = []
    for f in files:
        got = measure(f, a.repeats)
        rows += got
        for r in got:
            print(f"{r['file']:>20} {r['method']:>10} {r['median_ms']:8.2f} ms "
                  f"({r['min_ms']:.2f}-{r['max_ms']:.2f}) read {r['bytes_read'] / 1e6:8.3f} MB", flush=True)
    meta["load_after"] = list(os.getloadavg())
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "clip_cut.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
        write_rows_csv(out / "clip_cut.csv", rows, meta, FIELDS)
        write_text_atomic(out / "clip_cut.md", markdown(rows, meta))
    if not a.keep and a.work is None:
        for f in files + [base]:
            f.unlink()
        work.rmdir()
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
