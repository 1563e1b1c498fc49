"""Autograd wrapper of the fused prediction-loss kernel (kernels/prediction_loss.py)."""
from __future__ import annotations

import torch

GRAD_MODES = ("fused", "recompute")


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


class _PredictionLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target, kind, normalize_target, eps, grad_mode):
        from fastlam.kernels.prediction_loss import prediction_loss_fwd

        p2, t2 = _rows(pred), _rows(target.detach())
        fused = grad_mode == "fused" and ctx.needs_input_grad[0]
        loss, grad = prediction_loss_fwd(p2, t2, kind=kind, normalize_target=normalize_target, eps=eps,
                                         grad_out_dtype=pred.dtype if fused else None)
        ctx.cfg = (kind, normalize_target, eps, pred.shape, p2.shape[0] * p2.shape[1], fused)
        if fused:
            ctx.save_for_backward(grad)
        elif ctx.needs_input_grad[0]:
            ctx.save_for_backward(p2, t2)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        kind, normalize_target, eps, shape, numel, fused = ctx.cfg
        if fused:
            (grad,) = ctx.saved_tensors
            # out of place: scaling the saved buffer in place would scale it again on a second
            # backward through a retained graph
            grad = grad * (grad_out.float() / numel).to(grad.dtype)
        else:
            from fastlam.kernels.prediction_loss import prediction_loss_bwd

            p2, t2 = ctx.saved_tensors
            grad = prediction_loss_bwd(p2, t2, grad_out, kind=kind, normalize_target=normalize_target, eps=eps)
        return grad.view(shape), None, None, None, None, None


def triton_prediction_loss(pred, target, *, kind="l1", normalize_target=False, eps=1e-6, grad_mode="fused"):
    return _PredictionLossFn.apply(pred, target, kind, normalize_target, eps, grad_mode)
