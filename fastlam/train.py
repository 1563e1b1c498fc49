"""Train a latent action world model.

    python -m fastlam.train --config configs/tiny_cpu.yaml [key.sub=value ...] [--resume]
    torchrun --nproc_per_node 2 fastlam/train.py --config ...                      (DDP)
    deepspeed fastlam/train.py --config ... distributed.deepspeed_config=configs/deepspeed/zero2.json

This file only parses the command line and calls :func:`fastlam.trainer.train`; the trainer,
its configuration and everything else a script needs live in :mod:`fastlam.trainer`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastlam import run_folder
from fastlam.config import ConfigError, load_config
# The names users imported from here before the trainer became a library module.
from fastlam.trainer import DataConfig, ResumableBatches, TrainConfig, check_run, train

__all__ = ["DataConfig", "ResumableBatches", "TrainConfig", "check_run", "main", "train"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastlam.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="YAML config (see configs/)")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest.pt")
    ap.add_argument("--overwrite", action="store_true",
                    help="out_dir holds a run: move it aside to <out_dir>.old-<time> (never deleted) and start again")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. steps=50 model.regularizer.kind=sparse")
    ap.add_argument("--deepspeed_config", default=None,
                    help="ZeRO JSON config (same as distributed.deepspeed_config=...); selects the DeepSpeed backend")
    ap.add_argument("--check", action="store_true",
                    help="only check the config and out_dir (against --resume/--overwrite), print where the run "
                         "would go and exit: nothing is built or written (scripts/train_tiny.sh runs this first)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by launchers
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after options
    overrides = list(args.overrides)
    if args.deepspeed_config:
        overrides.append(f"distributed.deepspeed_config={args.deepspeed_config}")
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
        if args.check:
            check_run(cfg, resume=args.resume, overwrite=args.overwrite)
            print(f"config ok; run folder: {Path(cfg.out_dir).resolve()}")
            return 0
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except run_folder.RunFolderError as e:
        ap.exit(2, f"error: {e}\n")
    except ConfigError as e:
        ap.exit(2, f"config error: {e}\n")
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return 0
    if summary["preempted"]:
        print(f"\nstopped at step {summary['steps']} by a signal; checkpoint: {summary['checkpoint']} (--resume continues)")
        return 0
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"
    print(f"\ntrained {summary['steps']} steps on {summary['device']}: loss {fmt(summary['first_loss'])} -> {fmt(summary['last_loss'])}")
    if summary.get("data_report"):
        print(summary["data_report"])
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"model:      {summary['model']}  (LatentActionWorldModel.from_checkpoint)")
    print(f"loss curve: {summary['loss_curve']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
