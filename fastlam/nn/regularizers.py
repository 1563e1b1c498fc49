"""Latent-action information regularizers as drop-in modules.

Every regularizer maps the raw output ``h`` of an inverse dynamics model head to a latent
action ``z`` and a scalar loss. ``head_features(action_dim)`` tells the IDM how many outputs
its head needs (the Gaussian one needs mean and log-variance). They accept ``h`` of any
leading shape (..., features) and regularize over all leading positions as one batch.

Use them in another LAM codebase by replacing its quantizer / bottleneck::

    reg = GaussianLatentRegularizer(action_dim=128, beta=5e-5)
    out = reg(idm_head_output)          # (..., 256) -> out.z (..., 128)
    loss = recon_loss + out.loss
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..ops import gaussian_kl, gaussian_sample, gaussian_sample_kl, sparse_regularizer, vector_quantize


class RegularizerOutput(NamedTuple):
    z: torch.Tensor | None
    loss: torch.Tensor
    metrics: dict


def _flat(h: torch.Tensor, features: int, name: str = "h") -> torch.Tensor:
    if h.dim() < 2 or h.shape[-1] != features:
        raise ValueError(f"{name}: expected shape (..., {features}), got {tuple(h.shape)}")
    return h.reshape(-1, features)


class UnconstrainedLatent(nn.Module):
    """The ``none`` reference: z = h, no penalty (the upper bound on capacity)."""

    def __init__(self, action_dim: int = 128):
        super().__init__()
        self.action_dim = action_dim

    @staticmethod
    def head_features(action_dim: int) -> int:
        return action_dim

    def forward(self, h: torch.Tensor) -> RegularizerOutput:
        _flat(h, self.action_dim)
        return RegularizerOutput(h, h.new_zeros((), dtype=torch.float32), {})


class SparseLatentRegularizer(nn.Module):
    """Sparse (energy-based) latents: ``VCM(Z) + mean_i E(Z_i)`` of lam-spec.md section 3.

    On CUDA (``backend="auto"``) every term comes from one fused pass over Z (D <= 128).

    Example:
        >>> reg = SparseLatentRegularizer(action_dim=128, l_l1=0.01)
        >>> out = reg(torch.randn(4, 7, 128))
        >>> out.z.shape, out.loss.dim()
        (torch.Size([4, 7, 128]), 0)
    """

    def __init__(self, action_dim: int = 128, l_l1: float = 0.01, l_l2: float = 1.0, l_v: float = 0.1,
                 l_c: float = 0.001, l_m: float = 0.1, eps: float = 1e-4, mean_term: str = "signed",
                 backend: str = "auto"):
        super().__init__()
        self.action_dim = action_dim
        self.coeffs = dict(l_l1=l_l1, l_l2=l_l2, l_v=l_v, l_c=l_c, l_m=l_m, eps=eps, mean_term=mean_term)
        self.backend = backend

    @staticmethod
    def head_features(action_dim: int) -> int:
        return action_dim

    def forward(self, h: torch.Tensor) -> RegularizerOutput:
        terms = sparse_regularizer(_flat(h, self.action_dim), **self.coeffs, backend=self.backend)
        metrics = {f"reg/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        return RegularizerOutput(h, terms["loss"], metrics)


class GaussianLatentRegularizer(nn.Module):
    """Noisy (VAE-like) latents: sample ``mu + sigma * eps`` in training, ``mu`` in eval;
    loss ``beta * KL(q || N(0, I))``. log-variance is clamped to [-20, 10] for stability.

    On CUDA (``backend="auto"``) sampling and KL are one fused kernel with in-kernel Philox
    noise (reproducible under ``torch.manual_seed``); an explicit ``noise`` uses the reference.

    Example:
        >>> reg = GaussianLatentRegularizer(action_dim=128, beta=5e-5)
        >>> reg(torch.randn(4, 7, 256)).z.shape
        torch.Size([4, 7, 128])
    """

    def __init__(self, action_dim: int = 128, beta: float = 5e-5, backend: str = "auto"):
        super().__init__()
        self.action_dim = action_dim
        self.beta = beta
        self.backend = backend

    @staticmethod
    def head_features(action_dim: int) -> int:
        return 2 * action_dim

    def forward(self, h: torch.Tensor, noise: torch.Tensor | None = None) -> RegularizerOutput:
        flat = _flat(h, 2 * self.action_dim)
        mu, logvar = flat.chunk(2, dim=-1)
        logvar = logvar.clamp(-20.0, 10.0)
        if self.training and noise is None:
            z, kl = gaussian_sample_kl(mu, logvar, backend=self.backend)
        else:
            kl = gaussian_kl(mu, logvar, backend=self.backend)
            z = gaussian_sample(mu, logvar, noise=noise, backend="torch") if self.training else mu
        z = z.reshape(*h.shape[:-1], self.action_dim)
        return RegularizerOutput(z, self.beta * kl, {"reg/kl": kl.detach()})


class VectorQuantizer(nn.Module):
    """Discrete latents (VQ-VAE): nearest code by L2, straight-through gradients, loss
    ``||sg(z) - e||^2 + commitment * ||z - sg(e)||^2``, and dead-code reset.

    A code is dead when no latent chose it since the last reset. Every ``reset_every``
    latents seen in training, dead codes are re-initialised from random rows of the current
    batch (the paper resets every 300k videos; the model converts videos to latents).

    On CUDA (``backend="auto"``) the nearest-code search, losses and usage counts are fused
    Triton kernels that never build the N x K distance matrix. NaN / Inf latents raise
    (``check_finite``) instead of reaching the codebook statistics.

    Example:
        >>> vq = VectorQuantizer(num_codes=16, action_dim=8)
        >>> out = vq(torch.randn(5, 8))
        >>> bool((out.z.unsqueeze(1) == vq.codebook).all(-1).any(-1).all())
        True
    """

    def __init__(self, num_codes: int = 1024, action_dim: int = 128, commitment: float = 0.25,
                 reset_every: int | None = 300_000, backend: str = "auto", check_finite: bool = True):
        super().__init__()
        self.action_dim = action_dim
        self.commitment = commitment
        self.reset_every = reset_every
        self.backend = backend
        self.check_finite = check_finite
        self.codebook = nn.Parameter(torch.randn(num_codes, action_dim))
        self.register_buffer("usage", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("seen_since_reset", torch.zeros((), dtype=torch.long))

    @staticmethod
    def head_features(action_dim: int) -> int:
        return action_dim

    @torch.no_grad()
    def reset_dead_codes(self, z: torch.Tensor) -> int:
        """Re-initialise unused codes from random finite rows of ``z`` (N, D); returns how many."""
        z = z.reshape(-1, self.action_dim)
        z = z[torch.isfinite(z).all(dim=1)]
        dead = (self.usage == 0).nonzero().flatten()
        if dead.numel() and z.shape[0]:
            pick = torch.randint(0, z.shape[0], (dead.numel(),), device=z.device)
            self.codebook[dead] = z[pick].to(self.codebook.dtype)
        self.usage.zero_()
        self.seen_since_reset.zero_()
        return int(dead.numel())

    def forward(self, h: torch.Tensor) -> RegularizerOutput:
        flat = _flat(h, self.action_dim)
        z_q, idx, cb_loss, commit_loss = vector_quantize(
            flat, self.codebook, self.commitment, usage=self.usage if self.training else None,
            check_finite=self.check_finite, backend=self.backend)
        metrics = {"reg/codebook": cb_loss.detach(), "reg/commitment": commit_loss.detach()}
        if self.training:
            self.seen_since_reset += flat.shape[0]
            metrics["reg/codes_used"] = (self.usage > 0).sum().float()
            if self.reset_every and int(self.seen_since_reset) >= self.reset_every:
                metrics["reg/codes_reset"] = torch.tensor(float(self.reset_dead_codes(flat.detach())))
        return RegularizerOutput(z_q.reshape(h.shape), cb_loss + commit_loss, metrics)


REGULARIZERS = ("none", "deterministic", "sparse", "noisy", "discrete")


def build_regularizer(kind: str, action_dim: int = 128, **kwargs) -> nn.Module | None:
    """Regularizer by name; ``deterministic`` returns None (the model then has no z at all)."""
    if kind == "deterministic":
        return None
    classes = {"none": UnconstrainedLatent, "sparse": SparseLatentRegularizer,
               "noisy": GaussianLatentRegularizer, "discrete": VectorQuantizer}
    if kind not in classes:
        raise ValueError(f"regularizer: expected one of {REGULARIZERS}, got {kind!r}")
    return classes[kind](action_dim=action_dim, **kwargs)
