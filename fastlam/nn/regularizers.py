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

from ..ops import gaussian_kl, gaussian_sample, gaussian_sample_kl, sparse_regularizer
from .quantizers import VectorQuantizer


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
