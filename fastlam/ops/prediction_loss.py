"""Prediction loss between predicted and target states (plain-PyTorch reference)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_tensor
from .dispatch import kernel_limits, use_triton
from .triton_prediction_loss import GRAD_MODES, triton_prediction_loss

LOSS_KINDS = ("l1", "l2")


REDUCTIONS = ("mean", "sum", "none")
WEIGHTS_UNSUPPORTED = ("a mask or per-token weights (the fused loss kernel takes none; the torch reference "
                       "applies them); use backend='auto' or 'torch'")


def prediction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str = "l1",
    normalize_target: bool = False,
    eps: float = 1e-6,
    backend: str = "auto",
    grad_mode: str = "fused",
    loss_exp: float | None = None,
    reduction: str = "mean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean |pred - target| (``l1``, the paper's default) or mean squared error (``l2``) in fp32.

    ``normalize_target`` layer-normalises the target over its last dim first (as V-JEPA does
    for its targets) with ``eps`` (1e-6 by default; ``F.layer_norm``, hence V-JEPA 2, uses
    1e-5); the target never receives a gradient.

    ``loss_exp=p`` uses V-JEPA 2's convention instead of ``kind``: ``|pred - target|**p / p``
    per element (p=1 is L1, p=2 half the squared error). ``reduction``: ``mean`` (default),
    ``sum`` or ``none`` (the per-element loss). ``mask``: optional bool or float weights
    broadcastable to the loss; ``mean`` then divides by the weights' sum over the broadcast
    shape (the mean over selected elements). pred and target broadcast against each other.

    ``backend`` picks the fused Triton kernel or this reference (see ``fastlam.ops.dispatch``);
    the kernel runs for same-shape inputs, no mask, ``mean`` / ``sum`` and p in {1, 2} (p=2
    is its L2 halved); with a mask ``auto`` falls back to the reference (warning once on CUDA)
    and ``triton`` raises. The kernel's ``grad_mode="fused"`` writes the gradient during the
    forward pass (the fp32 difference tensor is never stored); ``"recompute"`` keeps nothing
    between forward and backward and recomputes the gradient from pred and target.
    """
    check_tensor("pred", pred, shape_doc="(B, T*N, D)")
    check_tensor("target", target, shape_doc="(B, T*N, D) or broadcastable to pred")
    check_choice("kind", kind, LOSS_KINDS)
    check_choice("reduction", reduction, REDUCTIONS)
    if pred.numel() == 0:
        raise ValueError(f"pred: expected a non-empty tensor of shape (B, T*N, D), got shape {tuple(pred.shape)}")
    try:
        shape = torch.broadcast_shapes(pred.shape, target.shape)
    except RuntimeError:
        raise ValueError(f"target: expected a shape broadcastable with pred {tuple(pred.shape)}, "
                         f"got {tuple(target.shape)}") from None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask: expected a bool or float tensor broadcastable to {tuple(shape)}, "
                            f"got {type(mask).__name__}")
        try:
            torch.broadcast_shapes(mask.shape, shape)
        except RuntimeError:
            raise ValueError(f"mask: expected a shape broadcastable to {tuple(shape)}, "
                             f"got {tuple(mask.shape)}") from None
    if loss_exp is not None and not float(loss_exp) > 0:
        raise ValueError(f"loss_exp: expected a positive number, got {loss_exp!r}")
    check_choice("grad_mode", grad_mode, GRAD_MODES)
    fused_kind = kind if loss_exp is None else {1.0: "l1", 2.0: "l2"}.get(float(loss_exp))
    fusable = (pred.shape == target.shape and reduction != "none" and fused_kind is not None)
    # A mask (bool or per-token float weights, e.g. model.change_weight's) is not a kernel
    # argument: 'auto' runs the reference and says why (once, on CUDA); 'triton' refuses it.
    unsupported = (WEIGHTS_UNSUPPORTED if mask is not None else None) or kernel_limits(pred, max_d=16384)
    if fusable and use_triton(backend, pred, target, unsupported=unsupported, kernel="prediction_loss"):
        loss = triton_prediction_loss(pred, target, kind=fused_kind, normalize_target=normalize_target, eps=eps,
                                      grad_mode=grad_mode)
        if loss_exp is not None and fused_kind == "l2":
            loss = loss * 0.5
        return loss * pred.numel() if reduction == "sum" else loss
    tgt = target.detach()
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    if normalize_target:
        tgt = F.layer_norm(tgt.to(acc), (tgt.shape[-1],), eps=eps)
    diff = pred.to(acc) - tgt.to(acc)
    if loss_exp is not None:
        per = diff.abs().pow(float(loss_exp)) / float(loss_exp)
    else:
        per = diff.abs() if kind == "l1" else diff * diff
    if mask is None:
        return {"mean": per.mean, "sum": per.sum, "none": lambda: per}[reduction]()
    w = mask.to(device=per.device, dtype=acc)
    per = per * w
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / w.expand(per.shape).sum()
