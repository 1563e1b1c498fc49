"""PyAV DataLoader clips/s with 1 and 2 workers (tiny_cpu clip shape: 16 frames at 4 fps, 64x64,
no decode cache), on the sample videos.

    FASTLAM_NO_EXT=1 python benchmarks/bench_pyav_workers.py --batches 3
"""
import argparse, json, os, time
import torch
from fastlam.cli_help import plain
from fastlam.data import VideoClipDataset


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_pyav_workers.py", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default="data/samples", help="video folder or list (default: %(default)s)")
    ap.add_argument("--batches", type=int, default=3, help="timed batches per worker count (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=8, help="clips per batch (default: %(default)s)")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    ds = VideoClipDataset(a.videos, num_frames=16, fps=4.0, size=(64, 64), clips_per_video=64, seed=0)
    out = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"}
    for w in (1, 2):
        dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, num_workers=w, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
        it = iter(dl)
        next(it)
        t = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        out[f"workers_{w}_clips_per_s"] = a.batch * a.batches / (time.perf_counter() - t)
        print(w, out[f"workers_{w}_clips_per_s"], flush=True)
        del it
    print(json.dumps(out))


if __name__ == "__main__":
    main()
