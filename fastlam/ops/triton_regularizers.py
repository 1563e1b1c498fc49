"""Fused regularizer kernels (kernels/sparse_reg.py, gaussian.py, vq.py) as ``torch.library``
custom ops with fake implementations and registered autograd formulas, so ``torch.compile``
traces them without graph breaks (the VQ's NaN check reads one number back and is the caller's
choice)."""
from __future__ import annotations

import torch

SPARSE_TERMS = ("loss", "energy", "variance", "covariance", "mean")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# ----------------------------------------------------------------------------- sparse

@torch.library.custom_op("fastlam::sparse_regularizer_fwd", mutates_args=())
def sparse_regularizer_fwd(z: torch.Tensor, l_l1: float, l_l2: float, l_v: float, l_c: float, l_m: float,
                           eps: float, mean_term: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(terms (5,) fp32 = loss, energy, variance, covariance, mean; column means (D,); covariance (D, D))."""
    from fastlam.kernels.sparse_reg import sparse_fwd  # optional dependency: the kernels need triton

    return sparse_fwd(_rows(z), l_l1=l_l1, l_l2=l_l2, l_v=l_v, l_c=l_c, l_m=l_m, eps=eps, mean_term=mean_term)


@sparse_regularizer_fwd.register_fake
def _(z, l_l1, l_l2, l_v, l_c, l_m, eps, mean_term):
    d = z.shape[1]
    f32 = dict(dtype=torch.float32)
    return z.new_empty((5,), **f32), z.new_empty((d,), **f32), z.new_empty((d, d), **f32)


@torch.library.custom_op("fastlam::sparse_regularizer_bwd", mutates_args=())
def sparse_regularizer_bwd(z: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor, grad_terms: torch.Tensor,
                           l_l1: float, l_l2: float, l_v: float, l_c: float, l_m: float, eps: float,
                           mean_term: str) -> torch.Tensor:
    from fastlam.kernels.sparse_reg import sparse_bwd  # optional dependency: the kernels need triton

    return sparse_bwd(_rows(z), mu, cov, grad_terms, l_l1=l_l1, l_l2=l_l2, l_v=l_v, l_c=l_c, l_m=l_m, eps=eps,
                      mean_term=mean_term)


@sparse_regularizer_bwd.register_fake
def _(z, mu, cov, grad_terms, l_l1, l_l2, l_v, l_c, l_m, eps, mean_term):
    return z.new_empty(z.shape)


def _sparse_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1], output[2])
    ctx.coeffs = inputs[1:]


def _sparse_backward(ctx, grad_terms, _dmu, _dcov):
    z, mu, cov = ctx.saved_tensors
    return (sparse_regularizer_bwd(z, mu, cov, grad_terms, *ctx.coeffs),) + (None,) * 7


sparse_regularizer_fwd.register_autograd(_sparse_backward, setup_context=_sparse_setup)


def triton_sparse_regularizer(z, *, l_l1, l_l2, l_v, l_c, l_m, eps, mean_term) -> dict[str, torch.Tensor]:
    out = sparse_regularizer_fwd(z, float(l_l1), float(l_l2), float(l_v), float(l_c), float(l_m), float(eps),
                                 mean_term)[0]
    return dict(zip(SPARSE_TERMS, out.unbind(0)))


# ----------------------------------------------------------------------------- Gaussian

def draw_seed(generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A Philox seed for the in-kernel RNG from torch's RNG (so torch.manual_seed reproduces it),
    as a one-element int64 tensor on ``device`` (default: the generator's device, else CPU).

    Drawn with ``torch.randint`` and never read back to the host: no ``.item()`` sync per
    step, and ``torch.compile`` traces it without a graph break. With ``generator=None`` the
    default generator of ``device`` draws it (CUDA's on a CUDA device)."""
    if generator is not None:
        seed = torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device, dtype=torch.int64)
        return seed if device is None else seed.to(device)
    return torch.randint(0, 2**31 - 1, (1,), device=device or "cpu", dtype=torch.int64)


def seed_tensor(seed: int | torch.Tensor, device) -> torch.Tensor:
    """An explicit seed (int or tensor) as the one-element int64 tensor the ops take."""
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    if not 0 <= int(seed) < 2**31:
        raise ValueError(f"seed: expected an int in [0, 2**31), got {seed!r}")
    return torch.tensor([int(seed)], dtype=torch.int64, device=device)


@torch.library.custom_op("fastlam::gaussian_fwd", mutates_args=())
def gaussian_fwd(mu: torch.Tensor, logvar: torch.Tensor, seed: torch.Tensor, sample: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z = mu + exp(logvar / 2) * eps with in-kernel Philox eps (empty when not sampling), KL);
    ``seed`` a one-element int64 tensor the kernel reads on the device."""
    from fastlam.kernels.gaussian import gaussian_fwd as launch  # optional dependency: the kernels need triton

    z, kl = launch(_rows(mu), _rows(logvar), seed, sample)
    return (z if sample else mu.new_empty(0)), kl


@gaussian_fwd.register_fake
def _(mu, logvar, seed, sample):
    return mu.new_empty(mu.shape if sample else (0,)), mu.new_empty((), dtype=torch.float32)


@torch.library.custom_op("fastlam::gaussian_bwd", mutates_args=())
def gaussian_bwd(mu: torch.Tensor, logvar: torch.Tensor, dz: torch.Tensor | None, grad_kl: torch.Tensor,
                 seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dmu, dlogvar); eps is regenerated from the seed, ``dz`` None for the KL alone."""
    from fastlam.kernels.gaussian import gaussian_bwd as launch  # optional dependency: the kernels need triton

    return launch(_rows(mu), _rows(logvar), None if dz is None else _rows(dz), grad_kl, seed)


@gaussian_bwd.register_fake
def _(mu, logvar, dz, grad_kl, seed):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _gaussian_setup(ctx, inputs, output):
    mu, logvar, seed, sample = inputs
    # only the inputs and the seed are kept: eps is regenerated in the backward
    ctx.save_for_backward(mu, logvar, seed)
    ctx.sample = sample


def _gaussian_backward(ctx, dz, grad_kl):
    mu, logvar, seed = ctx.saved_tensors
    if ctx.sample and dz is None:
        dz = torch.zeros_like(mu)
    if grad_kl is None:
        grad_kl = torch.zeros((), device=mu.device)
    dmu, dlv = gaussian_bwd(mu, logvar, dz if ctx.sample else None, grad_kl, seed)
    return dmu, dlv, None, None


gaussian_fwd.register_autograd(_gaussian_backward, setup_context=_gaussian_setup)


def triton_gaussian_sample_kl(mu, logvar, seed: int | torch.Tensor):
    return gaussian_fwd(mu, logvar, seed_tensor(seed, mu.device), True)


def triton_gaussian_kl(mu, logvar):
    return gaussian_fwd(mu, logvar, mu.new_zeros((1,), dtype=torch.int64), False)[1]


# ----------------------------------------------------------------------------- vector quantizer

@torch.library.custom_op("fastlam::vector_quantize_fwd", mutates_args=())
def vector_quantize_fwd(z: torch.Tensor, codebook: torch.Tensor, commitment: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_q, idx int64, codebook loss, commitment loss, usage counts int32 (K,), non-finite row count)."""
    from fastlam.kernels.vq import vq_fwd  # optional dependency: the kernels need triton

    idx, zq, sse, counts, bad = vq_fwd(_rows(z), _rows(codebook))
    mse = sse / z.numel()
    return zq, idx, mse, commitment * mse, counts, bad


@vector_quantize_fwd.register_fake
def _(z, codebook, commitment):
    f32 = dict(dtype=torch.float32)
    return (z.new_empty(z.shape), z.new_empty((z.shape[0],), dtype=torch.int64), z.new_empty((), **f32),
            z.new_empty((), **f32), z.new_empty((codebook.shape[0],), dtype=torch.int32),
            z.new_empty((), dtype=torch.int64))


@torch.library.custom_op("fastlam::vector_quantize_bwd", mutates_args=())
def vector_quantize_bwd(z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor, dzq: torch.Tensor | None,
                        grad_losses: torch.Tensor, commitment: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz, dcodebook fp32); ``grad_losses`` (2,) = upstream grads of (codebook loss, commitment loss)."""
    from fastlam.kernels.vq import vq_bwd  # optional dependency: the kernels need triton

    return vq_bwd(_rows(z), _rows(codebook), idx, None if dzq is None else _rows(dzq), grad_losses, commitment)


@vector_quantize_bwd.register_fake
def _(z, codebook, idx, dzq, grad_losses, commitment):
    return z.new_empty(z.shape), codebook.new_empty(codebook.shape, dtype=torch.float32)


def _vq_setup(ctx, inputs, output):
    z, codebook, commitment = inputs
    ctx.save_for_backward(z, codebook, output[1])
    ctx.commitment = commitment
    ctx.mark_non_differentiable(output[1], output[4], output[5])


def _vq_backward(ctx, dzq, _didx, g_cb, g_commit, _dcounts, _dbad):
    z, codebook, idx = ctx.saved_tensors
    zero = torch.zeros((), device=z.device, dtype=torch.float32)
    g = torch.stack([zero if g_cb is None else g_cb.float().reshape(()),
                     zero if g_commit is None else g_commit.float().reshape(())])
    dz, dcb = vector_quantize_bwd(z, codebook, idx, dzq, g, ctx.commitment)
    return dz, dcb.to(codebook.dtype), None


vector_quantize_fwd.register_autograd(_vq_backward, setup_context=_vq_setup)


def triton_vector_quantize(z, codebook, commitment):
    """(z_q, idx, codebook_loss, commitment_loss, counts int32 (K,), non-finite row count)."""
    return vector_quantize_fwd(z, codebook, float(commitment))
