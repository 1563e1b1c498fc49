"""Data pipeline benchmark: clips/s and frames/s per decoder, and the preprocessing op.

Decoders (16 frames at 4 fps, resized + cropped to --size, batches of --batch):
  * ``pyav``        VideoClipDataset on the real sample videos (H.264 / MPEG-1)
  * ``pyav-vp9``    the same on their VP9 copies (python -m fastlam.data.transcode)
  * ``dali-cpu``    DaliVideoLoader(device="cpu") on the VP9 copies
  * ``torchcodec``  torchcodec's CPU VideoDecoder on the originals, when importable
  * ``dali-gpu``    DaliVideoLoader(device="cuda") (NVDEC) on the originals, with CUDA + DALI
Preprocessing uint8 (B, 16, H, W, 3) -> (B, 3, 16, H, W): the csrc/ op (C++ on CPU, CUDA on
the GPU) against the PyTorch chain, in GB/s of output.

Backends whose package is missing are skipped with a note (the GPU image has neither PyAV
nor DALI), never a failure. Writes ``data.json`` and ``data.csv`` to ``--out``.

    python benchmarks/bench_data.py --out DIR [--videos data/samples] [--quick]
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fastlam.cli_help import plain

try:  # run as a script (python benchmarks/bench_x.py) or as a module
    from benchmarks._common import git_commit
except ImportError:  # pragma: no cover
    from _common import git_commit

REPO = Path(__file__).resolve().parents[1]




def _timed_batches(make_iter, batches: int, batch: int, frames: int, budget_s: float):
    """Time ``batches`` batches after one warm-up batch (pipeline build, file index)."""
    it = make_iter()
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = make_iter()
            b = next(it)
        if b.is_cuda:
            torch.cuda.synchronize()
        n += 1
        if time.perf_counter() - t0 > budget_s:
            break
    dt_s = time.perf_counter() - t0
    return {"clips_per_s": n * batch / dt_s, "frames_per_s": n * batch * frames / dt_s, "batches": n, "seconds": dt_s}


def bench_decoders(args, notes):
    rows = []
    kw = dict(num_frames=16, fps=4.0, size=(args.size, args.size), crop="random", seed=0,
              clips_per_video=args.clips_per_video)
    try:
        import av  # noqa: F401
    except ImportError:
        notes.append("PyAV not installed: pyav, pyav-vp9, dali-cpu and torchcodec rows skipped "
                     "(clips are planned with PyAV)")
        return rows
    from fastlam.data import VideoClipDataset
    from fastlam.data.dali import DaliVideoLoader, dali_available

    videos = Path(args.videos)
    if not videos.exists():
        notes.append(f"{videos} missing (python -m fastlam.data.samples --dest {videos}): decoders skipped")
        return rows
    vp9 = Path(args.vp9)
    if not vp9.exists():
        from fastlam.data.transcode import transcode_folder

        transcode_folder(videos, vp9, max_seconds=60, max_side=480)

    def dataset_iter(src):
        def make():
            ds = VideoClipDataset(src, **kw)
            loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True,
                                                 num_workers=args.workers,
                                                 generator=torch.Generator().manual_seed(0))
            return iter(loader)
        return make

    cases = [("pyav", str(videos), dataset_iter(str(videos))),
             ("pyav-vp9", str(vp9), dataset_iter(str(vp9)))]
    if dali_available():
        def dali_cpu():
            return iter(DaliVideoLoader(str(vp9), batch_size=args.batch, device="cpu",
                                        num_threads=max(1, args.workers), **kw))
        cases.append(("dali-cpu", str(vp9), dali_cpu))
        if torch.cuda.is_available():
            def dali_gpu():
                return iter(DaliVideoLoader(str(videos), batch_size=args.batch, device="cuda",
                                            num_threads=4, **kw))
            cases.append(("dali-gpu", str(videos), dali_gpu))
        else:
            notes.append("no CUDA: dali-gpu skipped")
    else:
        notes.append("NVIDIA DALI not installed: dali-cpu / dali-gpu skipped")
    try:
        import torchcodec  # noqa: F401

        cases.append(("torchcodec", str(videos), _torchcodec_iter(videos, args)))
    except Exception as e:  # CUDA builds of torchcodec fail to import on CPU machines
        notes.append(f"torchcodec unavailable ({type(e).__name__}): skipped")
    for name, src, make in cases:
        try:
            r = _timed_batches(make, args.batches, args.batch, 16, args.budget_s)
        except Exception as e:
            notes.append(f"{name} failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        rows.append({"section": "decode", "backend": name, "source": src, "batch": args.batch,
                     "workers": args.workers, "size": args.size, **r})
        print(f"{name:12s} {r['clips_per_s']:8.2f} clips/s {r['frames_per_s']:9.1f} frames/s", flush=True)
    return rows


def _torchcodec_iter(videos, args):
    from torchcodec.decoders import VideoDecoder

    from fastlam.data import list_videos
    from fastlam.data.preprocess import preprocess_frames

    paths = list_videos(videos)

    def make():
        g = torch.Generator().manual_seed(0)

        def gen():
            while True:
                clips = []
                for _ in range(args.batch):
                    p = paths[int(torch.randint(len(paths), (1,), generator=g))]
                    dec = VideoDecoder(p, dimension_order="NHWC", seek_mode="approximate")
                    md = dec.metadata
                    # Times are absolute stream times: MPEG-PS files start at 0.5 s, not 0.
                    begin = md.begin_stream_seconds or 0.0
                    end = md.end_stream_seconds or (begin + (md.duration_seconds or 4.0))
                    start = begin + float(torch.rand((), generator=g)) * max(0.0, end - begin - 15 / 4 - 0.05)
                    frames = dec.get_frames_played_at([start + k / 4 for k in range(16)]).data
                    x = frames.permute(0, 3, 1, 2).float()
                    x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear",
                                                        antialias=True)
                    clips.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
                yield preprocess_frames(torch.stack(clips))
        return gen()
    return make


def bench_preprocess(args, notes):
    from fastlam.data.preprocess import extension_status, load_extension, preprocess_frames, preprocess_reference

    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ext = load_extension()
    notes.append(f"preprocess backend: {extension_status()}")
    for device in devices:
        x = torch.randint(0, 256, (args.batch, 16, args.size, args.size, 3), dtype=torch.uint8, device=device)
        for dtype in (torch.float32, torch.bfloat16):
            impls = [("torch", lambda: preprocess_reference(x, dtype=dtype))]
            if ext is not None and (device == "cpu" or ext.has_cuda_kernel()):
                impls.append(("ext", lambda: preprocess_frames(x, dtype=dtype, backend="ext")))
            for name, fn in impls:
                fn()
                reps = 3 if device == "cpu" else 20
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(reps):
                    out = fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / reps * 1e3
                gbs = out.numel() * out.element_size() / (ms / 1e3) / 1e9
                rows.append({"section": "preprocess", "backend": f"{name}-{device}", "dtype": str(dtype).split(".")[-1],
                             "batch": args.batch, "size": args.size, "ms": ms, "out_GB_per_s": gbs,
                             "threads": torch.get_num_threads()})
                print(f"preprocess {name}-{device} {rows[-1]['dtype']:9s} {ms:8.2f} ms {gbs:7.2f} GB/s", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_data.py", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", str(REPO / "benchmarks/results/gpu")),
                    help="folder for data.json and data.csv (default: $OUT, else benchmarks/results/gpu)")
    ap.add_argument("--videos", default=str(REPO / "data/samples"),
                    help="folder of the original sample videos (default: data/samples)")
    ap.add_argument("--vp9", default=str(REPO / "data/samples_vp9"),
                    help="folder of their VP9 copies, for pyav-vp9 and dali-cpu (default: data/samples_vp9)")
    ap.add_argument("--size", type=int, default=256, help="clip height and width in pixels (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=8, help="clips per batch (default: %(default)s)")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per decoder (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for the PyAV rows (default: 0)")
    ap.add_argument("--clips-per-video", type=int, default=8,
                    help="clips drawn from each video (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=60.0,
                    help="time cap per decoder row, in seconds (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="3 batches of 4 clips, 20 s per row")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.batches, args.batch, args.budget_s = 3, 4, 20.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list = []
    rows = bench_decoders(args, notes) + bench_preprocess(args, notes)
    ratios = {}
    by = {r["backend"]: r for r in rows if r["section"] == "decode"}
    for a, b in (("dali-cpu", "pyav-vp9"), ("dali-gpu", "pyav"), ("torchcodec", "pyav")):
        if a in by and b in by:
            ratios[f"{a} / {b}"] = by[a]["clips_per_s"] / by[b]["clips_per_s"]
    pre = {(r["backend"], r["dtype"]): r["ms"] for r in rows if r["section"] == "preprocess"}
    for dev in ("cpu", "cuda"):
        for dtype in ("float32", "bfloat16"):
            if (f"ext-{dev}", dtype) in pre:
                ratios[f"preprocess torch/ext {dev} {dtype} (speed-up)"] = pre[(f"torch-{dev}", dtype)] / pre[(f"ext-{dev}", dtype)]
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]}
    (out / "data.json").write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios, "notes": notes}, indent=2))
    keys = sorted({k for r in rows for k in r})
    with open(out / "data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}")
    for n in notes:
        print("note:", n)
    print(f"wrote {out / 'data.json'}")


if __name__ == "__main__":
    main()
