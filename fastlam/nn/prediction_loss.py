"""PredictionLoss: L1 / L2 between predicted and target states."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import prediction_loss


class PredictionLoss(nn.Module):
    """Mean L1 (default) or L2 error in fp32; the target gets no gradient.

    ``eps`` (target layer-norm), ``loss_exp`` (V-JEPA 2: mean(|d|**p) / p), ``reduction``
    (mean / sum / none) and a per-call ``mask`` follow :func:`fastlam.ops.prediction_loss`.
    V-JEPA 2's predictor loss is ``PredictionLoss(normalize_target=True, eps=1e-5, loss_exp=1)``.

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
                 reduction: str = "mean"):
        super().__init__()
        self.kind = kind
        self.normalize_target = normalize_target
        self.backend = backend
        self.grad_mode = grad_mode
        self.eps = eps
        self.loss_exp = loss_exp
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return prediction_loss(pred, target, kind=self.kind, normalize_target=self.normalize_target,
                               backend=self.backend, grad_mode=self.grad_mode, eps=self.eps,
                               loss_exp=self.loss_exp, reduction=self.reduction, mask=mask)
