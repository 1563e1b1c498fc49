"""Information regularizers on latent actions (plain-PyTorch references).

These are the formulas of lam-spec.md section 3, written to be read. Each function takes the
latents of a whole batch flattened to (N, D) and returns scalar losses in fp32; the fused
Triton kernels sit behind the same functions and are tested against them.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_choice, check_tensor
from .dispatch import kernel_limits, use_triton
from .triton_regularizers import (
    draw_seed,
    triton_gaussian_kl,
    triton_gaussian_sample_kl,
    triton_sparse_regularizer,
    triton_vector_quantize,
)

MEAN_TERMS = ("signed", "abs", "squared")


def _acc(x: torch.Tensor) -> torch.Tensor:
    """Accumulate in fp32, or fp64 when the input is fp64 (so gradcheck sees fp64 maths)."""
    return x if x.dtype == torch.float64 else x.float()


def sparse_energy(z: torch.Tensor, l_l1: float, l_l2: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """mean_i [ l_l2 * max(sqrt(D) - ||z_i||_2^2, 0) + l_l1 * ||z_i||_1 ]  (energy E of the paper).

    ``backend="triton"`` takes the term from the fused :func:`sparse_regularizer` kernel.
    """
    check_tensor("z", z, ndim=2, shape_doc="(N, D)")
    if backend != "torch" and z.shape[0] >= 2:
        return sparse_regularizer(z, l_l1=l_l1, l_l2=l_l2, backend=backend)["energy"]
    zf = _acc(z)
    d = zf.shape[1]
    sq = (zf * zf).sum(dim=1)
    hinge = torch.clamp(math.sqrt(d) - sq, min=0.0)
    return (l_l2 * hinge + l_l1 * zf.abs().sum(dim=1)).mean()


def vcm_terms(z: torch.Tensor, eps: float = 1e-4, mean_term: str = "signed", *, backend: str = "auto"):
    """Variance hinge, off-diagonal covariance and mean terms of VCM(Z), unweighted.

    ``backend="triton"`` takes the terms from the fused :func:`sparse_regularizer` kernel.

    Variance and covariance use the unbiased (N - 1) estimator, as VICReg does. The mean term
    is the plain mean over all entries as the paper prints it (``signed``); ``abs`` and
    ``squared`` are the alternatives that cannot be driven negative.
    """
    check_tensor("z", z, ndim=2, shape_doc="(N, D)")
    check_choice("mean_term", mean_term, MEAN_TERMS)
    n, d = z.shape
    if n < 2:
        raise ValueError(f"z: VCM needs at least 2 rows (a batch of latents), got shape {tuple(z.shape)}")
    if backend != "torch":
        t = sparse_regularizer(z, l_l1=0.0, eps=eps, mean_term=mean_term, backend=backend)
        return t["variance"], t["covariance"], t["mean"]
    zf = _acc(z)
    mu = zf.mean(dim=0)
    zc = zf - mu
    var = (zc * zc).sum(dim=0) / (n - 1)
    variance = torch.clamp(1.0 - torch.sqrt(var + eps), min=0.0).mean()
    cov = (zc.T @ zc) / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    covariance = (off * off).sum() / (d * (d - 1))
    if mean_term == "signed":
        mean = zf.mean()
    elif mean_term == "abs":
        mean = mu.abs().mean()
    else:
        mean = (mu * mu).mean()
    return variance, covariance, mean


def sparse_regularizer(
    z: torch.Tensor,
    *,
    l_l1: float,
    l_l2: float = 1.0,
    l_v: float = 0.1,
    l_c: float = 0.001,
    l_m: float = 0.1,
    eps: float = 1e-4,
    mean_term: str = "signed",
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """L(Z) = VCM(Z) + mean_i E(Z_i) with the paper's fixed coefficients as defaults.

    ``backend="triton"`` (default on CUDA via ``auto``) computes every term in one pass over Z
    and the gradient in one more (kernels/sparse_reg.py; D <= 128).
    """
    check_tensor("z", z, ndim=2, shape_doc="(N, D)")
    check_choice("mean_term", mean_term, MEAN_TERMS)
    if z.shape[0] < 2:
        raise ValueError(f"z: VCM needs at least 2 rows (a batch of latents), got shape {tuple(z.shape)}")
    limit = kernel_limits(z, max_d=128) or (None if z.shape[1] >= 2 else "D must be at least 2 for the covariance")
    if use_triton(backend, z, unsupported=limit, kernel="sparse_reg"):
        return triton_sparse_regularizer(z, l_l1=l_l1, l_l2=l_l2, l_v=l_v, l_c=l_c, l_m=l_m, eps=eps,
                                         mean_term=mean_term)
    energy = sparse_energy(z, l_l1=l_l1, l_l2=l_l2, backend="torch")
    variance, covariance, mean = vcm_terms(z, eps=eps, mean_term=mean_term, backend="torch")
    total = energy + l_v * variance + l_c * covariance + l_m * mean
    return {"loss": total, "energy": energy, "variance": variance, "covariance": covariance, "mean": mean}


def _check_gaussian(mu: torch.Tensor, logvar: torch.Tensor) -> None:
    check_tensor("mu", mu, ndim=2, shape_doc="(N, D)")
    check_tensor("logvar", logvar, ndim=2, shape_doc="(N, D)")
    if mu.shape != logvar.shape:
        raise ValueError(f"logvar: expected the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    if mu.shape[0] == 0:
        raise ValueError(f"mu: expected at least one row, got shape {tuple(mu.shape)}")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, averaged over rows."""
    _check_gaussian(mu, logvar)
    if use_triton(backend, mu, logvar, unsupported=kernel_limits(mu, logvar, max_d=16384, same_dtype=True),
                  kernel="gaussian"):
        return triton_gaussian_kl(mu, logvar)
    m = _acc(mu)
    lv = _acc(logvar)
    return (0.5 * (m * m + lv.exp() - 1.0 - lv)).sum(dim=1).mean()


def gaussian_sample(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None, generator=None,
                    *, seed: int | None = None, backend: str = "auto"):
    """Reparameterised sample ``mu + exp(logvar / 2) * eps``; ``noise`` overrides eps.

    The Triton path draws eps in-kernel from a Philox ``seed`` (drawn from ``generator`` /
    torch's default RNG when None), so the same seed gives the same sample; given ``noise``,
    the reference runs.
    """
    if noise is None and backend != "torch":
        return gaussian_sample_kl(mu, logvar, seed=seed, generator=generator, backend=backend)[0]
    if noise is None:
        noise = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + torch.exp(0.5 * logvar) * noise


def gaussian_sample_kl(mu: torch.Tensor, logvar: torch.Tensor, *, seed: int | None = None, generator=None,
                       backend: str = "auto"):
    """``(gaussian_sample(mu, logvar), gaussian_kl(mu, logvar))`` in one pass on the Triton path.

    The kernel regenerates eps from the seed in the backward instead of storing it.
    """
    _check_gaussian(mu, logvar)
    if use_triton(backend, mu, logvar, unsupported=kernel_limits(mu, logvar, max_d=16384, same_dtype=True),
                  kernel="gaussian"):
        if seed is None:  # drawn on mu's device, never read back to the host
            seed = draw_seed(generator, mu.device)
        return triton_gaussian_sample_kl(mu, logvar, seed)
    if seed is not None and generator is None:
        generator = torch.Generator(device=mu.device).manual_seed(int(seed))
    return gaussian_sample(mu, logvar, generator=generator, backend="torch"), gaussian_kl(mu, logvar, backend="torch")


def _check_vq(z: torch.Tensor, codebook: torch.Tensor) -> None:
    check_tensor("z", z, ndim=2, shape_doc="(N, D)")
    check_tensor("codebook", codebook, ndim=2, shape_doc="(K, D)")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"codebook: expected code dim {z.shape[1]} (z's D), got {codebook.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook: expected at least one code, got shape (0, D)")
    if z.shape[0] == 0:
        raise ValueError(f"z: expected at least one latent to quantize, got shape {tuple(z.shape)}")
    if z.device != codebook.device:
        raise ValueError(f"codebook: expected the device of z ({z.device}), got {codebook.device}")


def vq_nearest(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 4096, *, backend: str = "auto") -> torch.Tensor:
    """Index of the nearest code (L2) for every row of z, computed in row chunks so the full
    N x K distance matrix never exists at once (the Triton path tiles codes as well)."""
    _check_vq(z, codebook)
    if use_triton(backend, z, codebook, unsupported=kernel_limits(z, codebook, max_d=256), kernel="vq"):
        with torch.no_grad():
            return triton_vector_quantize(z, codebook, 0.0)[1]
    cb = _acc(codebook)
    cb_sq = (cb * cb).sum(dim=1)
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    for s in range(0, z.shape[0], chunk):
        zc = z[s : s + chunk].to(cb.dtype)
        # ||z||^2 is constant per row, so argmin over ||e||^2 - 2 z.e is the nearest code.
        dist = cb_sq[None, :] - 2.0 * zc @ cb.T
        out[s : s + chunk] = dist.argmin(dim=1)
    return out


def vector_quantize(
    z: torch.Tensor,
    codebook: torch.Tensor,
    commitment: float = 0.25,
    *,
    usage: torch.Tensor | None = None,
    check_finite: bool = True,
    backend: str = "auto",
):
    """VQ-VAE quantisation with a straight-through estimator.

    Returns (z_q, indices, codebook_loss, commitment_loss) where z_q equals the chosen code in
    the forward pass and passes gradients straight to z; the losses are
    ``||sg(z) - e||^2`` and ``commitment * ||z - sg(e)||^2`` (means over all entries).

    ``usage`` (K,), if given, is incremented in place by how many finite rows chose each code
    (for dead-code reset). ``check_finite`` raises on NaN / Inf latents instead of letting them
    reach the codebook (it reads one number back from the device).
    """
    _check_vq(z, codebook)
    if usage is not None and tuple(usage.shape) != (codebook.shape[0],):
        raise ValueError(f"usage: expected shape ({codebook.shape[0]},) (one count per code), got {tuple(usage.shape)}")
    if use_triton(backend, z, codebook, unsupported=kernel_limits(z, codebook, max_d=256), kernel="vq"):
        z_q, idx, codebook_loss, commitment_loss, counts, bad = triton_vector_quantize(z, codebook, commitment)
        if check_finite and int(bad) > 0:
            raise ValueError(f"z: {int(bad)} of {z.shape[0]} latents contain NaN or Inf; refusing to quantize them")
        if usage is not None:
            usage += counts.to(usage.dtype)
        return z_q, idx, codebook_loss, commitment_loss
    finite = torch.isfinite(z.detach()).all(dim=1)
    if check_finite and not bool(finite.all()):
        n_bad = int((~finite).sum())
        raise ValueError(f"z: {n_bad} of {z.shape[0]} latents contain NaN or Inf; refusing to quantize them")
    idx = vq_nearest(z.detach(), codebook.detach(), backend="torch")
    e = codebook[idx].to(z.dtype)
    codebook_loss = ((_acc(z.detach()) - _acc(e)) ** 2).mean()
    commitment_loss = commitment * ((_acc(z) - _acc(e.detach())) ** 2).mean()
    # sg(e) + (z - sg(z)): exactly the code in the forward pass (z + sg(e - z) is off by
    # rounding), the identity gradient to z and none to the codebook in the backward
    z_q = e.detach() + (z - z.detach())
    if usage is not None:
        usage += torch.bincount(idx[finite], minlength=codebook.shape[0]).to(usage.dtype)
    return z_q, idx, codebook_loss, commitment_loss
