"""Training steps/s from a state store against from video, on one machine at the same moment.

    python -m benchmarks.bench_state_store --config configs/tiny_cpu.yaml \\
        --source states=STORE/states.json --source shards=SHARDS/shards.json --source folder=data/samples

Each source gets the trainer's own loader (``fastlam.train_data.build_dataset`` + ``iter_batches``)
and its own model and optimizers (same seed); the sources then take turns one training step at a
time, so a machine whose load changes (a shared CI box) slows all of them alike. Reported per
source: steps/s over the timed steps, and the share of each step spent waiting for the batch.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from fastlam.cli_help import plain
from fastlam.config import load_config
from fastlam.configs import TrainConfig
from fastlam.data.state_store import is_state_store
from fastlam.distributed import DistEnv
from fastlam.models import LatentActionWorldModel
from fastlam.optim import build_optimizers
from fastlam.train_data import build_dataset, iter_batches


def bench(config: str, sources: dict[str, str], steps: int, warmup: int, overrides: list[str]) -> dict:
    runs = {}
    for name, source in sources.items():
        cfg = load_config(TrainConfig, config, [*overrides, f"data.source={source}", "out_dir=/tmp/fastlam-bench-states"])
        torch.manual_seed(cfg.seed)
        model = LatentActionWorldModel(cfg.model).train()
        model.check_video_range = False
        batches = iter_batches(cfg, build_dataset(cfg), torch.device("cpu"), DistEnv("none"), 0)
        runs[name] = {"model": model, "opts": build_optimizers(model, cfg.optim), "batches": batches,
                      "states": is_state_store(source), "wait": 0.0, "total": 0.0}
    for step in range(warmup + steps):
        for r in runs.values():
            t0 = time.perf_counter()
            batch = next(r["batches"])
            t1 = time.perf_counter()
            out = r["model"](states=batch) if r["states"] else r["model"](batch)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(r["model"].parameters(), math.inf)
            for o in r["opts"]:
                o.step()
                o.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if step >= warmup:
                r["wait"] += t1 - t0
                r["total"] += t2 - t0
    return {name: {"steps_per_s": steps / r["total"], "data_wait_frac": r["wait"] / r["total"],
                   "steps": steps} for name, r in runs.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny_cpu.yaml", help="training config (default: %(default)s)")
    ap.add_argument("--source", action="append", required=True, help="NAME=SOURCE, repeated: the sources compared")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per source (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: %(default)s)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = ap.parse_intermixed_args(argv)
    sources = dict(s.split("=", 1) for s in args.source)
    print(json.dumps(bench(args.config, sources, args.steps, args.warmup, list(args.overrides)), indent=1))


if __name__ == "__main__":
    main()
