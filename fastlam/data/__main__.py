"""``python -m fastlam.data index|shard``: corpus manifests and WebDataset shards.

    python -m fastlam.data index videos/ more.txt k400_train.csv --out corpus.parquet
    python -m fastlam.data shard corpus.parquet --out shards/ --shard-mb 512 --fps 4 --size 256
"""
from __future__ import annotations

import argparse
import json
import sys


def _index(args) -> int:
    from .manifest import build_manifest

    s = build_manifest(args.sources, args.out, workers=args.workers, progress=not args.quiet,
                       limit=args.limit)
    if not s.get("complete"):
        print(json.dumps(s))
        return 0
    print(f"{s['files']} files: {s['ok']} usable, {s['bad']} bad; {s['hours']:.2f} h of video; "
          f"codecs {s['codecs']}")
    for b in s["bad_files"][:20]:
        print(f"  bad: {b['path']}: {b['reason']}")
    if s["bad"] > 20:
        print(f"  ... {s['bad'] - 20} more in {args.out}.summary.json")
    print(f"wrote {args.out} and {args.out}.summary.json")
    return 0


def _shard(args) -> int:
    from .shards import write_shards

    size = None
    if args.size is not None:
        size = args.size
    index = write_shards(args.manifest, args.out, shard_bytes=int(args.shard_mb * 2**20),
                         fps=args.fps, short_side=size, max_seconds=args.max_seconds,
                         workers=args.workers, progress=not args.quiet, seed=args.seed)
    print(f"{index['samples']} samples in {len(index['shards'])} shards, "
          f"{index['bytes'] / 2**20:.1f} MiB; index {index['index_path']}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastlam.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ix = sub.add_parser("index", help="probe videos once into a manifest (resumable)")
    ix.add_argument("sources", nargs="+", help="folders, path lists, 'path label' .csv lists, "
                    "videos, or fsspec URLs of lists / videos")
    ix.add_argument("--out", required=True, help="manifest.parquet (or .jsonl)")
    ix.add_argument("--workers", type=int, default=None, help="probe processes (default: CPUs)")
    ix.add_argument("--limit", type=int, default=None,
                    help="stop after probing this many files (resume later by rerunning)")
    ix.add_argument("--quiet", action="store_true", help="no progress bar")
    ix.set_defaults(fn=_index)

    sh = sub.add_parser("shard", help="write WebDataset tar shards (mp4 + json per sample)")
    sh.add_argument("manifest", help="a manifest from `index`")
    sh.add_argument("--out", required=True, help="output folder (or fsspec URL) for the shards")
    sh.add_argument("--shard-mb", type=float, default=512.0, help="target shard size in MiB")
    sh.add_argument("--fps", type=float, default=None,
                    help="re-encode to this frame rate (default: copy the file as it is)")
    sh.add_argument("--size", type=int, default=None,
                    help="re-encode with the shorter side scaled to this many pixels")
    sh.add_argument("--max-seconds", type=float, default=None,
                    help="re-encode keeping at most this many seconds of each video")
    sh.add_argument("--workers", type=int, default=None, help="re-encoding processes")
    sh.add_argument("--seed", type=int, default=0, help="order of videos across shards")
    sh.add_argument("--quiet", action="store_true", help="no progress bar")
    sh.set_defaults(fn=_shard)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
