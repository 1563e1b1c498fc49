"""Fused prediction loss (kernels/prediction_loss.py) as ``torch.library`` custom ops with fake
implementations and a registered autograd formula, so ``torch.compile`` traces it without a
graph break: ``fastlam::prediction_loss_fwd`` and ``fastlam::prediction_loss_bwd``."""
from __future__ import annotations

import torch

GRAD_MODES = ("fused", "recompute")


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


@torch.library.custom_op("fastlam::prediction_loss_fwd", mutates_args=())
def prediction_loss_fwd(pred: torch.Tensor, target: torch.Tensor, kind: str, normalize_target: bool, eps: float,
                        write_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss fp32 0-dim, unscaled d loss / d pred in pred's layout, or an empty tensor)."""
    # optional dependency: the kernels need triton
    from fastlam.kernels.prediction_loss import prediction_loss_fwd as launch

    loss, grad = launch(_rows(pred), _rows(target), kind=kind, normalize_target=normalize_target, eps=eps,
                        grad_out_dtype=pred.dtype if write_grad else None)
    return loss, (grad.view(pred.shape) if write_grad else pred.new_empty(0))


@prediction_loss_fwd.register_fake
def _(pred, target, kind, normalize_target, eps, write_grad):
    return pred.new_empty((), dtype=torch.float32), pred.new_empty(pred.shape if write_grad else (0,))


@torch.library.custom_op("fastlam::prediction_loss_bwd", mutates_args=())
def prediction_loss_bwd(pred: torch.Tensor, target: torch.Tensor, grad_out: torch.Tensor, kind: str,
                        normalize_target: bool, eps: float) -> torch.Tensor:
    """d loss / d pred recomputed from the inputs and scaled by ``grad_out`` (read on device)."""
    # optional dependency: the kernels need triton
    from fastlam.kernels.prediction_loss import prediction_loss_bwd as launch

    grad = launch(_rows(pred), _rows(target), grad_out, kind=kind, normalize_target=normalize_target, eps=eps)
    return grad.view(pred.shape)


@prediction_loss_bwd.register_fake
def _(pred, target, grad_out, kind, normalize_target, eps):
    return pred.new_empty(pred.shape)


def _setup_context(ctx, inputs, output):
    pred, target, kind, normalize_target, eps, write_grad = inputs
    ctx.cfg = (kind, normalize_target, eps, write_grad, pred.numel())
    if write_grad:
        ctx.save_for_backward(output[1])  # the gradient written by the forward pass
    else:
        ctx.save_for_backward(pred, target.detach())


def _backward(ctx, grad_loss, _grad_of_grad):
    kind, normalize_target, eps, write_grad, numel = ctx.cfg
    if write_grad:
        (grad,) = ctx.saved_tensors
        # out of place: a second backward through a retained graph must not see a scaled buffer
        dpred = grad * (grad_loss.float() / numel).to(grad.dtype)
    else:
        pred, target = ctx.saved_tensors
        dpred = prediction_loss_bwd(pred, target, grad_loss, kind, normalize_target, eps)
    return dpred, None, None, None, None, None


prediction_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


def triton_prediction_loss(pred, target, *, kind="l1", normalize_target=False, eps=1e-6, grad_mode="fused"):
    # the fused mode writes the gradient only when one will be needed
    write = grad_mode == "fused" and pred.requires_grad and torch.is_grad_enabled()
    return prediction_loss_fwd(pred, target.detach(), kind, normalize_target, float(eps), write)[0]
