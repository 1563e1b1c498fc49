"""DALI-CPU on VP9 copies: DaliVideoLoader (one Python thread plans and feeds DALI; synchronous
until issue 26, since then cuts in a thread pool and DALI asynchronous and pipelined with
``prefetch`` batches queued; the committed results are from before) against DaliStreamLoader
(planning + cutting in DALI's parallel external source workers, prefetching and async execution
on). Also the PyAV DataLoader path.

Reports clips/s (wall) and the training process's CPU seconds per clip (getrusage SELF: the
Python side plus DALI's decoder threads; DaliStreamLoader's worker processes are reported
separately from RUSAGE_CHILDREN once they exit).

    FASTLAM_NO_EXT=1 python benchmarks/bench_dali_stream.py --videos data/samples_vp9 --out DIR
"""
import argparse, json, os, resource, time
from pathlib import Path

from fastlam.cli_help import plain


def run(make, batches):
    ld = make()
    it = iter(ld)
    next(it)  # warm-up: pipeline build, workers, first file indexes
    r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    clips = 0
    for _ in range(batches):
        clips += next(it).shape[0]
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    del it, ld
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    child = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    return {"clips": clips, "clips_per_s": clips / (t1 - t0), "main_cpu_s_per_clip": cpu / clips,
            "worker_cpu_s_per_clip": child / clips}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_dali_stream.py", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", required=True,
                    help="folder of VP8 / VP9 / MJPEG videos (python -m fastlam.data.transcode makes them)")
    ap.add_argument("--batch", type=int, default=4, help="clips per batch (default: %(default)s)")
    ap.add_argument("--batches", type=int, default=4, help="timed batches per run (default: %(default)s)")
    ap.add_argument("--size", type=int, default=128, help="clip height and width in pixels (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loader (default: %(default)s)")
    ap.add_argument("--out", default=None, help="folder for dali_stream.json (default: print only)")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    from fastlam.data.dali import DaliVideoLoader
    from fastlam.data.dali_stream import DaliStreamLoader
    common = dict(batch_size=a.batch, num_frames=16, size=(a.size, a.size), device="cpu", seed=0,
                  clips_per_video=16)
    makers = {
        "dali_thread (today)": lambda: DaliVideoLoader(a.videos, num_threads=2, **common),
        "dali_stream (new)": lambda: DaliStreamLoader(a.videos, num_threads=2, py_workers=2, prefetch=2, **common),
    }
    res = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", "settings": vars(a), "runs": {}}
    for r in range(a.repeats):
        for name, make in makers.items():
            res["runs"].setdefault(name, []).append(run(make, a.batches))
            print(name, res["runs"][name][-1], flush=True)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "dali_stream.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
