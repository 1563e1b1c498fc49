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
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        from fastlam.kernels.sparse_reg import sparse_bwd

        z2, mu, cov = ctx.saved_tensors
        return sparse_bwd(z2, mu, cov, grad_out, **ctx.coeffs), None


def triton_sparse_regularizer(z, *, l_l1, l_l2, l_v, l_c, l_m, eps, mean_term) -> dict[str, torch.Tensor]:
    out = _SparseRegularizerFn.apply(
        z, dict(l_l1=l_l1, l_l2=l_l2, l_v=l_v, l_c=l_c, l_m=l_m, eps=eps, mean_term=mean_term))
    return dict(zip(SPARSE_TERMS, out.unbind(0)))


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A Philox seed for the in-kernel RNG from torch's RNG (so torch.manual_seed reproduces it)."""
    dev = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=dev).item())


class _GaussianFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar, seed, sample):
        from fastlam.kernels.gaussian import gaussian_fwd

        mu2, lv2 = _rows(mu), _rows(logvar)
        z, kl = gaussian_fwd(mu2, lv2, seed, sample)
        # only the inputs and the seed are kept: eps is regenerated in the backward
        ctx.save_for_backward(mu2, lv2)
        ctx.seed, ctx.sample = seed, sample
        if not sample:
            return kl
        return z, kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        from fastlam.kernels.gaussian import gaussian_bwd

        mu2, lv2 = ctx.saved_tensors
        if ctx.sample:
            dz, gkl = grads
            dz = torch.zeros_like(mu2) if dz is None else _rows(dz)
        else:
            dz, gkl = None, grads[0]
        gkl = torch.zeros((), device=mu2.device) if gkl is None else gkl
        dmu, dlv = gaussian_bwd(mu2, lv2, dz, gkl, ctx.seed)
        return dmu, dlv, None, None


def triton_gaussian_sample_kl(mu, logvar, seed: int):
    return _GaussianFn.apply(mu, logvar, seed, True)


def triton_gaussian_kl(mu, logvar):
    return _GaussianFn.apply(mu, logvar, 0, False)


class _VectorQuantizeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, codebook, commitment):
        from fastlam.kernels.vq import vq_fwd

        z2, cb2 = _rows(z), _rows(codebook)
        idx, zq, sse, counts, bad = vq_fwd(z2, cb2)
        mse = sse / z2.numel()
        ctx.save_for_backward(z2, cb2, idx)
        ctx.commitment = commitment
        ctx.cb_dtype = codebook.dtype
        ctx.mark_non_differentiable(idx, counts, bad)
        return zq, idx, mse, commitment * mse, counts, bad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dzq, _didx, g_cb, g_commit, _dcounts, _dbad):
        from fastlam.kernels.vq import vq_bwd

        z2, cb2, idx = ctx.saved_tensors
        gloss = torch.stack([g_cb.float().reshape(()), g_commit.float().reshape(())])
        dz, dcb = vq_bwd(z2, cb2, idx, _rows(dzq) if dzq is not None else None, gloss, ctx.commitment)
        return dz, dcb.to(ctx.cb_dtype), None


def triton_vector_quantize(z, codebook, commitment):
    """(z_q, idx, codebook_loss, commitment_loss, counts int32 (K,), non-finite row count)."""
    return _VectorQuantizeFn.apply(z, codebook, commitment)
