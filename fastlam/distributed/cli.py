"""``python -m fastlam.distributed export``: tools for DeepSpeed checkpoints written by fastlam.train."""
from __future__ import annotations

import argparse

from ..inputs import output_folder, require_folder
from .checkpoints import LATEST, read_latest
from .export import export_consolidated
from .process_group import import_deepspeed


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fastlam.distributed",
                                 description="Tools for DeepSpeed checkpoints written by fastlam.train")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{export}",
                            help="export: consolidated fp32 weights of a DeepSpeed checkpoint")
    ex = sub.add_parser("export", help="consolidated fp32 weights of a checkpoint, for from_checkpoint")
    ex.add_argument("checkpoint", help="a tag directory (runs/x/checkpoints/step_0000100) or the checkpoints "
                                       "directory (its latest tag is used)")
    ex.add_argument("out", help="output directory (config.json + model.safetensors)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        path = require_folder(args.checkpoint, "checkpoint",
                              "a DeepSpeed tag folder (RUN/checkpoints/step_NNNNNNN) or the checkpoints folder "
                              "holding 'latest'")
        output_folder(args.out, "out")
        if (path / LATEST).is_file():
            path = path / read_latest(path, "checkpoint")[0]
        import_deepspeed()
        print(export_consolidated(path, args.out))
    # InputError, CheckpointError and ConfigError (DeepSpeed missing) are ValueErrors.
    except (ValueError, FileNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    return 0
