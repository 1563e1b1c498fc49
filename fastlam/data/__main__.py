"""``python -m fastlam.data index|shard|encode``: corpus manifests, WebDataset shards, encoder states.

    python -m fastlam.data index videos/ more.txt k400_train.csv --out corpus.parquet
    python -m fastlam.data shard corpus.parquet --out shards/ --shard-mb 512 --fps 4 --size 256
    python -m fastlam.data encode --config configs/tiny_cpu.yaml data.source=shards/shards.json --out states/
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from ..cli_help import plain
from ..inputs import output_file, output_folder
from .manifest import build_manifest
from .remote import is_remote
from .shards import write_shards


def _index(args) -> int:
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
    for u in s["unreadable_dirs"]:  # their videos are in no row: never left out silently
        print(f"  unreadable directory (its videos are not indexed): {u['path']}: {u['reason']}")
    print(f"wrote {args.out} and {args.out}.summary.json")
    return 0


def _shard(args) -> int:
    size = None
    if args.size is not None:
        size = args.size
    index = write_shards(args.manifest, args.out, shard_bytes=int(args.shard_mb * 2**20),
                         fps=args.fps, short_side=size, max_seconds=args.max_seconds,
                         workers=args.workers, progress=not args.quiet, seed=args.seed,
                         resume=args.resume, overwrite=args.overwrite)
    for b in index["bad"]:  # every video left out, never only a count
        print(f"  dropped: {b['source']}: {b['reason']}")
    print(f"{index['samples']} samples in {len(index['shards'])} shards, "
          f"{index['bytes'] / 2**20:.1f} MiB; {len(index['bad'])} video(s) dropped"
          + (f"; {index['replaced']} tar(s) of the replaced set deleted" if index["replaced"] else "")
          + f"; index {index['index_path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fastlam.data", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{index,shard,encode}",
                            help="index: probe videos into a manifest; shard: write WebDataset tar shards; "
                                 f"encode: write a frozen encoder's states of shards (python -m {ENCODE_MODULE}, "
                                 f"whose --help lists its options)")
    ix = sub.add_parser("index", help="probe videos once into a manifest (resumable)")
    ix.add_argument("sources", nargs="+", help="folders, path lists, 'path label' .csv lists, "
                    "videos, or fsspec URLs of lists / videos")
    ix.add_argument("--out", required=True,
                    help="manifest to write: a .parquet or .jsonl file (a summary goes to OUT.summary.json)")
    ix.add_argument("--workers", type=int, default=None, help="probe processes (default: CPUs)")
    ix.add_argument("--limit", type=int, default=None,
                    help="stop after probing this many files (resume later by rerunning)")
    ix.add_argument("--quiet", action="store_true", help="no progress bar")
    ix.set_defaults(fn=_index, out_is="file")

    sh = sub.add_parser("shard", help="write WebDataset tar shards (mp4 + json per sample)")
    sh.add_argument("manifest", help="a manifest (.parquet or .jsonl) written by 'index'")
    sh.add_argument("--out", required=True, help="output folder (or fsspec URL) for the shards")
    sh.add_argument("--shard-mb", type=float, default=512.0,
                    help="target shard size in MiB (default: %(default)s)")
    sh.add_argument("--fps", type=float, default=None,
                    help="re-encode to this frame rate (default: copy the file as it is)")
    sh.add_argument("--size", type=int, default=None,
                    help="re-encode with the shorter side scaled to this many pixels (default: keep)")
    sh.add_argument("--max-seconds", type=float, default=None,
                    help="re-encode keeping at most this many seconds of each video (default: all)")
    sh.add_argument("--workers", type=int, default=None, help="re-encoding processes (default: CPUs)")
    sh.add_argument("--seed", type=int, default=0, help="order of videos across shards (default: %(default)s)")
    sh.add_argument("--resume", action="store_true",
                    help="continue an interrupted write into --out (its finished shards are kept)")
    sh.add_argument("--overwrite", action="store_true",
                    help="replace the set in --out (the old one stays readable until the new "
                         "shards.json is published, then its tars are deleted)")
    sh.add_argument("--quiet", action="store_true", help="no progress bar")
    sh.set_defaults(fn=_shard, out_is="folder")
    return ap


# ``encode`` runs a model, which this package may not import (docs/architecture.md): it is the
# training layer's ``python -m fastlam.encode_states``, run as a command, not imported.
ENCODE_MODULE = "fastlam.encode_states"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["encode"]:
        return subprocess.call([sys.executable, "-m", ENCODE_MODULE, *argv[1:]])
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        if not is_remote(args.out):  # fsspec URLs are checked by their file system when written
            (output_file if args.out_is == "file" else output_folder)(args.out, "--out")
        return args.fn(args)
    except ValueError as e:  # InputError and every bad-source error are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
