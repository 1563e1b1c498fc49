"""Measure what each ZeRO stage holds per rank, against one process, for one model config.

    python scripts/zero_memory.py [--nproc 2] [--out runs/zero_memory] [key.sub=value ...]

For every stage it launches ``fastlam/train.py`` under ``torch.distributed.run`` for two steps
and reads the ``memory.json`` the trainer writes after the first optimizer step: bytes of
weights, gradients and optimizer state each rank holds (``fastlam.distributed.rank_memory``:
tensors walked, storages counted once) and the process's peak RSS. The single-process
baseline is measured the same way in this process (the model, its gradients and torch's
Muon + AdamW state after one step). Prints a Markdown table and writes ``memory.md``/``.json``.
On CPU (gloo) the byte counts are exact; RSS includes the Python/torch runtime (~0.5 GB) and
DeepSpeed's communication buckets. Gradients are counted at the end of the first backward
(ZeRO-1's full-size gradients during backward are not seen there).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# A model big enough that the per-rank split is visible above the runtime (~28 M trainable
# parameters, ~22 M frozen), small enough for two CPU steps.
DEFAULTS = [
    "model.image_size=64", "model.frames=8", "model.encoder.size=small", "model.encoder.patch_size=16",
    "model.idm.width=384", "model.idm.depth=6", "model.idm.heads=6",
    "model.predictor.width=512", "model.predictor.depth=8", "model.predictor.heads=8",
    "model.regularizer.kind=noisy", "data.source=synthetic", "data.synthetic_clips=16",
    "batch_size=4", "steps=2", "log_every=1", "ckpt_every=1000", "progress=false",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process(overrides: list[str]) -> dict:
    import resource

    from fastlam.config import load_config
    from fastlam.distributed import tensor_bytes
    from fastlam.models import LatentActionWorldModel
    from fastlam.optim import build_optimizers
    from fastlam.trainer import TrainConfig

    cfg = load_config(TrainConfig, REPO / "configs/tiny_cpu.yaml", overrides)
    model = LatentActionWorldModel(cfg.model).train()
    opts = build_optimizers(model, cfg.optim)
    video = torch.rand(2, 3, cfg.model.frames, cfg.model.image_size, cfg.model.image_size)
    model(video).loss.backward()
    for o in opts:
        o.step()
    seen: set = set()
    params = sum(tensor_bytes(p.data, seen) for p in model.parameters())
    grads = sum(tensor_bytes(p.grad, seen) for p in model.parameters() if p.grad is not None)
    optim = sum(tensor_bytes(dict(o.state), seen) for o in opts)
    return {"params_bytes": params, "grads_bytes": grads, "optim_bytes": optim,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python scripts/zero_memory.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2, help="ranks per DeepSpeed run (default: %(default)s)")
    ap.add_argument("--out", default="runs/zero_memory",
                    help="folder for the runs, memory.md and memory.json (default: %(default)s)")
    ap.add_argument("--stages", default="1,2,3",
                    help="comma-separated ZeRO stages to measure (default: %(default)s)")
    ap.add_argument("overrides", nargs="*",
                    help="key.sub=value training overrides applied after the script's model defaults")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = DEFAULTS + args.overrides
    # One process holds what every DDP rank holds.
    rows = {"1 process / DDP rank (torch optimizers)": [single_process(overrides)]}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    for stage in [int(s) for s in args.stages.split(",")]:
        ds = json.loads((REPO / f"configs/deepspeed/zero{stage}.json").read_text())
        ds_file = out / f"zero{stage}.json"
        ds_file.write_text(json.dumps(ds))
        for placement in (["replicated", "sharded"] if stage == 3 else ["replicated"]):
            run_dir = out / f"stage{stage}_{placement}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                   "--master_port", str(_port()), str(REPO / "fastlam/train.py"),
                   "--config", str(REPO / "configs/tiny_cpu.yaml"), *overrides, f"out_dir={run_dir}",
                   f"distributed.deepspeed_config={ds_file}", f"distributed.encoder={placement}"]
            subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
            mem = json.loads((run_dir / "memory.json").read_text())
            rows[f"ZeRO-{stage}, encoder {placement}"] = mem["per_rank"]
    mb = 1 / 2**20
    lines = [f"Per-rank memory, {args.nproc} ranks, measured on {'GPU' if torch.cuda.is_available() else 'CPU (gloo)'}; "
             f"trainable {rows['1 process / DDP rank (torch optimizers)'][0]['trainable'] / 1e6:.1f} M, frozen encoder "
             f"{rows['1 process / DDP rank (torch optimizers)'][0]['frozen'] / 1e6:.1f} M parameters (fp32)", "",
             "| run | weights MB | grads MB | optimizer MB | total MB | peak RSS MB |", "|---|---|---|---|---|---|"]
    for name, ranks in rows.items():
        r = ranks[0]  # ranks hold equal shares; rank 0 shown
        total = r["params_bytes"] + r["grads_bytes"] + r["optim_bytes"]
        lines.append(f"| {name} | {r['params_bytes'] * mb:.1f} | {r['grads_bytes'] * mb:.1f} | "
                     f"{r['optim_bytes'] * mb:.1f} | {total * mb:.1f} | {r['peak_rss_bytes'] * mb:.0f} |")
    table = "\n".join(lines)
    print(table)
    (out / "memory.md").write_text(table + "\n")
    (out / "memory.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
