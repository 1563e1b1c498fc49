"""Prediction loss between predicted and target states (plain-PyTorch reference)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_same, check_tensor

LOSS_KINDS = ("l1", "l2")


def prediction_loss(
    pred: torch.Tensor, target: torch.Tensor, *, kind: str = "l1", normalize_target: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    """Mean |pred - target| (``l1``, the paper's default) or mean squared error (``l2``) in fp32.

    ``normalize_target`` layer-normalises the target over its last dim first (as V-JEPA does
    for its targets); the target never receives a gradient.
    """
    check_tensor("pred", pred, shape_doc="(B, T*N, D)")
    check_tensor("target", target, shape_doc="(B, T*N, D)")
    check_same(("pred", "target"), (pred, target), what="shape")
    check_choice("kind", kind, LOSS_KINDS)
    tgt = target.detach()
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    if normalize_target:
        tgt = F.layer_norm(tgt.to(acc), (tgt.shape[-1],), eps=eps)
    diff = pred.to(acc) - tgt.to(acc)
    return diff.abs().mean() if kind == "l1" else (diff * diff).mean()
