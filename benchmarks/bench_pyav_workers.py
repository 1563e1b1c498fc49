"""PyAV DataLoader clips/s with 1 and 2 workers (tiny_cpu clip shape: 16 frames at 4 fps, 64x64,
no decode cache), on the sample videos.

    FASTLAM_NO_EXT=1 python benchmarks/bench_pyav_workers.py --batches 3
"""
import argparse, json, os, time
import torch
from fastlam.data import VideoClipDataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", default="data/samples")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
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
