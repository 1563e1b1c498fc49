"""Optimisers and learning-rate schedule of the paper's recipe (lam-spec.md section 4).

Muon updates the 2-D hidden weights (the matrices inside transformer blocks); AdamW updates
everything else (embeddings, input/output projections, norms, biases, the VQ codebook),
both with decoupled weight decay, linear warmup then cosine decay. Muon is fastlam's
(:class:`fastlam.muon.Muon`): torch.optim.Muon's update with its Newton-Schulz iteration
batched over the matrices of one shape.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fastlam import MIN_TORCH
# Lives with every run configuration; imported here under its old name (fastlam.optim.OptimConfig).
from fastlam.configs import OptimConfig
from fastlam.muon import Muon

__all__ = ["OptimConfig", "build_optimizers", "build_schedulers", "is_hidden_matrix", "split_params", "warmup_cosine"]


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """2-D weights inside transformer blocks: the parameters Muon is designed for."""
    return p.ndim == 2 and ".blocks." in f".{name}" and name.endswith("weight")


def split_params(model: nn.Module):
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if is_hidden_matrix(name, p) else adamw).append(p)
    return muon, adamw


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    muon, adamw = split_params(model)
    opts: list[torch.optim.Optimizer] = []
    if cfg.use_muon and muon:
        if not hasattr(torch.optim, "Muon"):
            raise RuntimeError(f"optim.use_muon: this torch ({torch.__version__}) has no torch.optim.Muon (needs torch "
                               f">= {'.'.join(map(str, MIN_TORCH))}); set optim.use_muon=false")
        opts.append(Muon(muon, lr=cfg.muon_lr, weight_decay=cfg.weight_decay))
    else:
        adamw = muon + adamw
    if adamw:
        opts.append(torch.optim.AdamW(adamw, lr=cfg.adamw_lr, betas=tuple(cfg.adamw_betas), weight_decay=cfg.weight_decay))
    return opts


def warmup_cosine(total_steps: int, warmup_frac: float = 0.0, min_lr_frac: float = 0.0, *,
                  warmup_steps: int | None = None):
    """The learning-rate factor of step ``step`` (for ``LambdaLR``): linear warmup over
    ``warmup_steps`` (or ``warmup_frac`` of ``total_steps``; at least 1), then a cosine from 1
    down to ``min_lr_frac`` at ``total_steps``. The one schedule of every trainer in fastlam
    (the LAM, the decoder, the controller, the action-conditioned baseline)."""
    warmup = max(1, int(round(total_steps * warmup_frac)) if warmup_steps is None else int(warmup_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_schedulers(opts, total_steps: int, cfg: OptimConfig):
    f = warmup_cosine(total_steps, cfg.warmup_frac, cfg.min_lr_frac)
    return [torch.optim.lr_scheduler.LambdaLR(o, f) for o in opts]
