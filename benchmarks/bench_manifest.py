"""Start-up cost of a dataset over N videos: a manifest against a folder walk + lazy probing.

Makes an N-entry corpus from the sample videos *by reference* (N symbolic links in a temporary
folder, no video bytes copied), a manifest of it (rows copied from one real probe of each
sample, so no N probes are needed to build it), then measures, each in a fresh process:

  * ``manifest``: ``VideoClipDataset(manifest.parquet)``: wall time and resident-memory growth
    of construction, then the time of the first clip (no probe: metadata from the manifest);
  * ``folder``:   ``VideoClipDataset(folder)``: the walk of N files; each first read of a
    video then probes it (measured per video as ``probe_ms``, the cost a manifest removes).

    python benchmarks/bench_manifest.py --n 100000 --out benchmarks/results/data_manifest
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastlam.cli_help import plain
from fastlam.data.manifest import build_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, os
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import torch, av, pyarrow, pyarrow.parquet  # imports are not start-up cost
from fastlam.data import VideoClipDataset
from fastlam.data import dataset as dm
src = sys.argv[1]
r0, t0 = rss(), time.perf_counter()
ds = VideoClipDataset(src, num_frames=16, fps=4.0, size=(64, 64), seed=0)
t1, r1 = time.perf_counter(), rss()
probes = []
real = dm.probe_opened
def counted(*a, **k):
    t = time.perf_counter(); out = real(*a, **k); probes.append(time.perf_counter() - t); return out
dm.probe_opened = counted
t2 = time.perf_counter(); ds[len(ds) // 2]; t3 = time.perf_counter()
for i in range(1, 6):
    ds[(len(ds) // 7 * i) % len(ds)]
t4 = time.perf_counter()
print(json.dumps({"n": len(ds), "construct_s": t1 - t0, "rss_growth_mb": (r1 - r0) / 2**20,
                  "bytes_per_video": (r1 - r0) / len(ds), "first_clip_s": t3 - t2,
                  "next5_clips_s": t4 - t3, "probes": len(probes),
                  "probe_ms": 1e3 * sum(probes) / max(len(probes), 1)}))
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_manifest.py", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000,
                    help="videos in the synthetic corpus (symbolic links to the samples; default: %(default)s)")
    ap.add_argument("--videos", default=str(REPO / "data" / "samples"),
                    help="folder of real videos the corpus links to (default: data/samples)")
    ap.add_argument("--out", default=None, help="folder for manifest.json (default: print only)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh-process measurements per variant (default: %(default)s)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fastlam-manifest-bench-"))
    build_manifest([args.videos], work / "real.parquet", workers=0, progress=False)
    import pyarrow.parquet as pq  # optional: pyarrow (the data extra)

    rows = pq.read_table(work / "real.parquet").to_pylist()
    folder = work / "corpus"
    t = time.perf_counter()
    out_rows = []
    for i in range(args.n):
        r = rows[i % len(rows)]
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        link = sub / f"{i:06d}{Path(r['path']).suffix}"
        os.symlink(r["path"], link)
        out_rows.append(dict(r, path=str(link)))
    write_manifest(out_rows, work / "corpus.parquet")
    make_s = time.perf_counter() - t
    results = {"n": args.n, "samples": [r["path"] for r in rows], "make_corpus_s": make_s,
               "manifest_bytes": os.path.getsize(work / "corpus.parquet"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
               "runs": {"manifest": [], "folder": []}}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(args.repeats):
        for kind, src in (("manifest", work / "corpus.parquet"), ("folder", folder)):
            out = subprocess.run([sys.executable, "-c", CHILD, str(src)], capture_output=True,
                                 text=True, env=env, check=True)
            results["runs"][kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for kind, runs in results["runs"].items():
        for key in ("construct_s", "rss_growth_mb", "bytes_per_video", "first_clip_s", "probe_ms"):
            vals = sorted(r[key] for r in runs)
            results.setdefault("median", {}).setdefault(kind, {})[key] = vals[len(vals) // 2]
            results.setdefault("range", {}).setdefault(kind, {})[key] = [vals[0], vals[-1]]
    print(json.dumps({"median": results["median"], "range": results["range"]}, indent=1))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "manifest.json", "w") as f:
            json.dump(results, f, indent=1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
