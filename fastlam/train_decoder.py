"""Train a pixel decoder on a LAM's frozen encoder states (for visualisation and LPIPS).

    python -m fastlam.train_decoder --config configs/decoder_tiny_cpu.yaml [key.sub=value ...] [--resume]

The LAM (``lam=``: its ``final/`` folder or a training ``.pt``) supplies the frozen encoder;
the decoder (:class:`fastlam.models.decoder.StateDecoder`) learns states -> pixels with L1
(+ LPIPS when ``lpips.weight > 0`` and local LPIPS weights are given). Nothing of the LAM
changes. ``holdout_videos`` keeps the last videos of ``data.source`` out of training; the
reconstruction PSNR on them is printed and written to ``summary.json``.

The run folder mirrors the LAM trainer's: ``config.yaml``, ``metrics.jsonl``, atomic
checkpoints (``checkpoints/latest.pt``), ``final/`` (``model.safetensors`` + ``config.json``,
loadable with ``StateDecoder.from_checkpoint``), ``loss_curve.png`` and
``reconstructions.png`` (held-out clips: ground truth over reconstruction). Single process:
the decoder is a visualisation tool, small next to the LAM.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from fastlam.checkpoint import load_checkpoint, save_checkpoint
from fastlam.cli_help import plain
from fastlam.config import ConfigError, load_config, to_dict
# The run configuration lives with every other (fastlam.configs); imported here under the names
# users imported from this script (fastlam.train_decoder.DecoderTrainConfig, ...).
from fastlam.configs import DecoderArch, DecoderData, DecoderTrainConfig, LPIPSConfig
from fastlam.data import VideoClipDataset, list_videos
from fastlam.devices import resolve_device
from fastlam.epochs import EpochIndexed
from fastlam.eval.visualize import contact_sheet
from fastlam.loop import train_steps
from fastlam.models import LatentActionWorldModel
from fastlam.models.decoder import DecoderConfig, StateDecoder
from fastlam.nn.lpips import LPIPS
from fastlam.optim import warmup_cosine
from fastlam.run_folder import prepare_out_dir
from fastlam.run_summary import plot_losses
from fastlam.train_data import ResumableBatches

__all__ = ["DecoderArch", "DecoderData", "DecoderTrainConfig", "LPIPSConfig", "build_parser", "eval_clips", "main",
           "psnr", "split_videos", "train_decoder"]


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of [0, 1] images (pred clamped to [0, 1])."""
    mse = (pred.float().clamp(0, 1) - target.float()).pow(2).mean()
    return float(10 * torch.log10(1.0 / mse.clamp_min(1e-12)))


def split_videos(source: str, holdout: int) -> tuple[list[str], list[str]]:
    paths = list_videos(source)
    if holdout and len(paths) <= holdout:
        raise ConfigError(f"holdout_videos={holdout}: data.source {source!r} has only {len(paths)} videos; "
                          "at least one must remain for training")
    return (paths[:-holdout], paths[-holdout:]) if holdout else (paths, [])


def _clips(paths, lam_cfg, data: DecoderData, seed: int, crop: str, clips_per_video: int):
    return VideoClipDataset(paths, num_frames=lam_cfg.frames, fps=data.fps, size=(lam_cfg.image_size,) * 2,
                            crop=crop, seed=seed, clips_per_video=clips_per_video, cache_mb=data.cache_mb)


def eval_clips(paths, lam_cfg, data: DecoderData, n: int) -> torch.Tensor:
    """``n`` centre-cropped clips spread over ``paths`` (deterministic)."""
    ds = _clips(paths, lam_cfg, data, seed=12345, crop="center", clips_per_video=max(1, math.ceil(n / len(paths))))
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).round().long().unique()
    return torch.stack([ds[int(i)] for i in idx])


def train_decoder(cfg: DecoderTrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    cfg.check()
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    # The LAM trainer's rule: a folder that holds a run is refused unless --resume continues it
    # or --overwrite moves it aside (never deleted).
    moved = prepare_out_dir(out, resume=resume, overwrite=overwrite)
    if moved is not None:
        print(f"moved the previous run in {out} to {moved}")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    lam = LatentActionWorldModel.from_checkpoint(cfg.lam).to(device).eval()
    train_paths, held_paths = split_videos(cfg.data.source, cfg.holdout_videos)
    dataset = _clips(train_paths, lam.cfg, cfg.data, cfg.seed, "random", cfg.data.clips_per_video)
    dcfg = DecoderConfig.for_lam(lam, width=cfg.decoder.width, depth=cfg.decoder.depth,
                                 heads=cfg.decoder.heads, mlp_ratio=cfg.decoder.mlp_ratio)
    decoder = StateDecoder(dcfg).to(device)
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.steps, cfg.warmup_frac))
    lpips_fn = None
    if cfg.lpips.weight > 0:

        lpips_fn = LPIPS.from_files(cfg.lpips.backbone, cfg.lpips.linear, cfg.lpips.net).to(device)

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    step = position = 0
    if resume:
        state = load_checkpoint(ckpt_dir / "latest.pt", map_location=device)
        decoder.load_state_dict(state["decoder"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, position = int(state["step"]), int(state["data_position"])
        torch.set_rng_state(state["rng"])
    sampler = ResumableBatches(len(dataset), cfg.batch_size, cfg.seed, position=position)
    batches = iter(torch.utils.data.DataLoader(EpochIndexed(dataset), batch_sampler=sampler,
                                               num_workers=cfg.data.num_workers,
                                               generator=torch.Generator().manual_seed(cfg.seed)))
    meta = {"lam": str(cfg.lam)}

    def save(at: int) -> Path:
        state = {"decoder": decoder.state_dict(), "decoder_config": json.dumps(to_dict(dcfg)),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": at,
                 "data_position": position, "rng": torch.get_rng_state(), **meta}
        return save_checkpoint(ckpt_dir / "latest.pt", state)


    metrics_file = out / "metrics.jsonl"
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, mininterval=2.0, file=sys.stdout)
    first = last = None
    start = step
    current: dict = {}  # this step's clip, reconstruction and loss terms, for its metrics row

    def loss_of(_) -> torch.Tensor:
        nonlocal position
        video = next(batches).to(device)
        position += 1
        with torch.no_grad():
            states = lam.encode(video)
        recon = decoder(states)
        l1 = (recon - video).abs().mean()
        lp = lpips_fn.video(recon, video).mean() if lpips_fn is not None else None
        current.update(video=video, recon=recon.detach(), l1=l1.detach(), lpips=None if lp is None else lp.detach())
        return l1 if lp is None else l1 + cfg.lpips.weight * lp

    def after_step(taken: int, loss: float) -> None:
        # Called after every step (log_every=1): the rows and checkpoints keep their own intervals.
        nonlocal step, first, last
        step = start + taken
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "loss": loss, "l1": float(current["l1"]),
                   "psnr": psnr(current["recon"], current["video"]), "lr": sched.get_last_lr()[0]}
            if current["lpips"] is not None:
                row["lpips"] = float(current["lpips"])
            first = row["loss"] if first is None else first
            last = row["loss"]
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.1f}")
        if step % cfg.ckpt_every == 0 and step < cfg.steps:
            save(step)

    with metrics_file.open("a") as log:
        train_steps(decoder, loss_of, max(0, cfg.steps - start), [opt], [sched],
                    grad_clip=cfg.grad_clip if cfg.grad_clip > 0 else None, log_every=1, log=after_step)
    bar.close()
    ckpt = save(step)
    final = decoder.save_pretrained(out / "final", extra=meta)
    summary = {"steps": step, "first_loss": first, "last_loss": last, "checkpoint": str(ckpt), "model": str(final),
               "train_videos": [Path(p).name for p in train_paths], "heldout_videos": [Path(p).name for p in held_paths]}
    summary["loss_curve"] = str(plot_losses(metrics_file, out / "loss_curve.png"))
    for name, paths in (("heldout", held_paths), ("train", train_paths)):
        if not paths:
            continue
        video = eval_clips(paths, lam.cfg, cfg.data, cfg.eval_clips).to(device)
        with torch.no_grad():
            recon = decoder.frames(lam.encode(video))
        summary[f"psnr_{name}"] = psnr(recon, video)
        if name == "heldout" or not held_paths:

            rows = [(f"ground truth {i}", video[i].cpu()) for i in range(min(3, video.shape[0]))]
            rows = [r for i in range(len(rows)) for r in (rows[i], (f"decoded {i}", recon[i].cpu()))]
            summary["reconstructions"] = str(contact_sheet(rows, out / "reconstructions.png",
                                                           title=f"decoder reconstructions ({name} clips)"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fastlam.train_decoder", description=plain(__doc__.split("\n\n")[0]))
    ap.add_argument("--config", required=True, help="YAML config (see configs/decoder_tiny_cpu.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest.pt")
    ap.add_argument("--overwrite", action="store_true",
                    help="out_dir holds a run: move it to <out_dir>.old-<time> and start again")
    ap.add_argument("overrides", nargs="*",
                    help="key.sub=value overrides, e.g. steps=50 lam=runs/x/final (lam: the LAM whose frozen "
                         "encoder gives the states, a run's final/ folder or a training .pt)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = load_config(DecoderTrainConfig, args.config, args.overrides)
        s = train_decoder(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    print(f"\ntrained the decoder {s['steps']} steps: loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}")
    for k in ("psnr_heldout", "psnr_train"):
        if k in s:
            print(f"{k.replace('_', ' ')}: {s[k]:.2f} dB")
    print(f"decoder:         {s['model']}  (StateDecoder.from_checkpoint)")
    if "reconstructions" in s:
        print(f"reconstructions: {s['reconstructions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
