"""DeepSpeed's Muon over fastlam's parameter split, compiled per matrix shape.

The optimizer is DeepSpeed's own ``MuonWithAuxAdam``, given to the engine as a client optimizer
with fastlam's split (``fastlam.optim.is_hidden_matrix``: Muon for the 2-D weights inside
transformer blocks, AdamW for the rest). DeepSpeed's config route would re-tag parameters by its
own rule (every 2-D tensor that is not an embedding), which would put e.g. the VQ codebook and
the predictor's output head under Muon. ZeRO 1/2/3 recognise the optimizer by type and
orthogonalise each full matrix before it is sharded.
"""
from __future__ import annotations

import torch._dynamo
from torch import nn

from ..optim import OptimConfig, is_hidden_matrix


def build_deepspeed_muon(model: nn.Module, cfg: OptimConfig, ns_method: str, momentum: float):
    """DeepSpeed's MuonWithAuxAdam over fastlam's split: tags ``param.use_muon`` and returns the
    optimizer (to be handed to ``deepspeed.initialize`` as a client optimizer)."""
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam  # optional dependency: DeepSpeed

    muon, adamw = [], []
    for name, p in model.named_parameters():
        p.use_muon = bool(cfg.use_muon and p.requires_grad and is_hidden_matrix(name, p))
        if p.requires_grad:
            (muon if p.use_muon else adamw).append(p)
    groups = []
    if muon:
        groups.append(dict(params=muon, use_muon=True, lr=cfg.muon_lr, momentum=momentum,
                           weight_decay=cfg.weight_decay, ns_method=ns_method))
    if adamw:
        groups.append(dict(params=adamw, use_muon=False, lr=cfg.adamw_lr, betas=tuple(cfg.adamw_betas),
                           eps=1e-8, weight_decay=cfg.weight_decay))
    return MuonWithAuxAdam(groups)


def static_shape_compiles():
    """Compile DeepSpeed's Muon (``muon_update``, Newton-Schulz: ``torch.compile``d functions)
    for each matrix shape separately, never with dynamic shapes.

    By default the second shape a compiled function sees recompiles it for dynamic shapes, and
    every later call runs that kernel; the very first call ran a kernel specialised to its
    shape, which rounds differently. So the first optimizer step of a process computes one
    Muon update differently from any later step: a run resumed in a fresh process (its first
    step is the original's step k+1) left the uninterrupted one after one step. With one
    static kernel per shape the numbers no longer depend on what the process ran before.
    (DeepSpeed orthogonalises in ``engine.step`` under ZeRO-3 and while reducing gradients
    under ZeRO-1/2, hence around both.)"""
    return torch._dynamo.config.patch(automatic_dynamic_shapes=False)
