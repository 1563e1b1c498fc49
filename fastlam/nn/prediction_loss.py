"""PredictionLoss: L1 / L2 between predicted and target states."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import prediction_loss


def change_weights(previous: torch.Tensor, target: torch.Tensor, change_weight: float) -> torch.Tensor:
    """Per-token weights (..., 1) toward the tokens that change: ``1 + change_weight * c / mean(c)``
    with ``c = |target - previous|`` averaged over the last (feature) dim and ``mean(c)`` over
    every token of the batch; no gradient. Where only a small agent moves, its tokens are a few
    per cent of a plain mean, learned last (the README's study); this weights them up without
    a scale that depends on the encoder's feature range. A batch with no change at all gets
    weight 1 everywhere."""
    if previous.shape != target.shape:
        raise ValueError(f"previous: expected the target's shape {tuple(target.shape)}, got {tuple(previous.shape)}")
    acc = torch.float64 if target.dtype == torch.float64 else torch.float32
    change = (target.detach().to(acc) - previous.detach().to(acc)).abs().mean(-1, keepdim=True)
    # tiny: all-static batch -> change 0 everywhere -> weights 1, not 0/0
    scale = change.mean().clamp_min(torch.finfo(acc).tiny)
    return 1.0 + change_weight * (change / scale)


class PredictionLoss(nn.Module):
    """Mean L1 (default) or L2 error in fp32; the target gets no gradient.

    ``eps`` (target layer-norm), ``loss_exp`` (V-JEPA 2: mean(|d|**p) / p), ``reduction``
    (mean / sum / none) and a per-call ``mask`` follow :func:`fastlam.ops.prediction_loss`.
    V-JEPA 2's predictor loss is ``PredictionLoss(normalize_target=True, eps=1e-5, loss_exp=1)``.

    ``change_weight > 0`` (``model.change_weight``) weights each token by
    :func:`change_weights` of the ``previous`` states (s_t, same shape as the target, a
    required argument then) and the target, times any ``mask``; the loss is the weighted mean
    (``mean``) or sum. The fused kernel takes no weights, so this runs on the torch reference.

    On CUDA (``backend="auto"``) a fused Triton kernel computes the loss and writes the
    gradient in the same pass (``grad_mode="fused"``), or recomputes it in the backward and
    keeps nothing in between (``"recompute"``); elsewhere the PyTorch reference runs.

    Example:
        >>> loss = PredictionLoss("l1")
        >>> float(loss(torch.ones(2, 4, 8), torch.zeros(2, 4, 8)))
        1.0
    """

    def __init__(self, kind: str = "l1", normalize_target: bool = False, backend: str = "auto",
                 grad_mode: str = "fused", *, eps: float = 1e-6, loss_exp: float | None = None,
                 reduction: str = "mean", change_weight: float = 0.0):
        super().__init__()
        if not float(change_weight) >= 0:
            raise ValueError(f"change_weight: expected a number >= 0, got {change_weight!r}")
        self.change_weight = float(change_weight)
        self.kind = kind
        self.normalize_target = normalize_target
        self.backend = backend
        self.grad_mode = grad_mode
        self.eps = eps
        self.loss_exp = loss_exp
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
                previous: torch.Tensor | None = None) -> torch.Tensor:
        if self.change_weight:
            if previous is None:
                raise ValueError("previous: PredictionLoss(change_weight>0) needs the previous states (s_t, shaped "
                                 "like the target) to weight the tokens that change")
            w = change_weights(previous, target, self.change_weight)
            mask = w if mask is None else mask * w
        return prediction_loss(pred, target, kind=self.kind, normalize_target=self.normalize_target,
                               backend=self.backend, grad_mode=self.grad_mode, eps=self.eps,
                               loss_exp=self.loss_exp, reduction=self.reduction, mask=mask)
