"""Autograd wrappers of the fused regularizer kernels (kernels/sparse_reg.py, gaussian.py, vq.py)."""
from __future__ import annotations

import torch

SPARSE_TERMS = ("loss", "energy", "variance", "covariance", "mean")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _SparseRegularizerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, coeffs):
        from fastlam.kernels.sparse_reg import sparse_fwd

        z2 = _rows(z)
        out, mu, cov = sparse_fwd(z2, **coeffs)
        ctx.save_for_backward(z2, mu, cov)
        ctx.coeffs = coeffs
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from fastlam.kernels.sparse_reg import sparse_bwd

        z2, mu, cov = ctx.saved_tensors
        return sparse_bwd(z2, mu, cov, grad_out, **ctx.coeffs), None


def triton_sparse_regularizer(z, *, l_l1, l_l2, l_v, l_c, l_m, eps, mean_term) -> dict[str, torch.Tensor]:
    out = _SparseRegularizerFn.apply(
        z, dict(l_l1=l_l1, l_l2=l_l2, l_v=l_v, l_c=l_c, l_m=l_m, eps=eps, mean_term=mean_term))
    return dict(zip(SPARSE_TERMS, out.unbind(0)))
