"""Prediction loss between predicted and target states (plain-PyTorch reference)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import kernel_limits, use_triton
from ._checks import check_choice, check_same, check_tensor

LOSS_KINDS = ("l1", "l2")


def prediction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str = "l1",
    normalize_target: bool = False,
    eps: float = 1e-6,
    backend: str = "auto",
    grad_mode: str = "fused",
) -> torch.Tensor:
    """Mean |pred - target| (``l1``, the paper's default) or mean squared error (``l2``) in fp32.

    ``normalize_target`` layer-normalises the target over its last dim first (as V-JEPA does
    for its targets); the target never receives a gradient.

    ``backend`` picks the fused Triton kernel or this reference (see ``fastlam.ops._backend``).
    The kernel's ``grad_mode="fused"`` writes the gradient during the forward pass (the fp32
    difference tensor is never stored); ``"recompute"`` keeps nothing between forward and
    backward and recomputes the gradient from pred and target.
    """
    check_tensor("pred", pred, shape_doc="(B, T*N, D)")
    check_tensor("target", target, shape_doc="(B, T*N, D)")
    check_same(("pred", "target"), (pred, target), what="shape")
    check_choice("kind", kind, LOSS_KINDS)
    if pred.numel() == 0:
        raise ValueError(f"pred: expected a non-empty tensor of shape (B, T*N, D), got shape {tuple(pred.shape)}")
    from .triton_losses import GRAD_MODES, triton_prediction_loss

    check_choice("grad_mode", grad_mode, GRAD_MODES)
    if use_triton(backend, pred, target, unsupported=kernel_limits(pred, max_d=16384), kernel="prediction_loss"):
        return triton_prediction_loss(pred, target, kind=kind, normalize_target=normalize_target, eps=eps,
                                      grad_mode=grad_mode)
    tgt = target.detach()
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    if normalize_target:
        tgt = F.layer_norm(tgt.to(acc), (tgt.shape[-1],), eps=eps)
    diff = pred.to(acc) - tgt.to(acc)
    return diff.abs().mean() if kind == "l1" else (diff * diff).mean()
