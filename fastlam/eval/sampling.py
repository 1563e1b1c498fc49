"""Sampling latent actions without a video (lam-spec.md section 5, "Sampling latent actions").

- noisy: the prior N(0, I) the KL term pulls the posterior towards;
- discrete: uniformly chosen codebook entries;
- sparse: Langevin dynamics on the per-latent energy of the sparse regularizer,
  ``E(z) = l_l2 * max(sqrt(D) - ||z||_2^2, 0) + l_l1 * ||z||_1``, with the update
  ``z <- z - (a / 2) grad E(z) + sqrt(a) * N(0, I)`` (noise of variance a).

:func:`embedding_plot` draws sampled and IDM-inferred latents in a shared 2-D PCA
embedding: samples that land on the inferred latents' cloud are plausible actions.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .common import pyplot, regularizer_kind, save_figure


def sparse_energy(z: torch.Tensor, l_l1: float, l_l2: float = 1.0) -> torch.Tensor:
    """E(z) per latent, (..., D) -> (...)."""
    D = z.shape[-1]
    return l_l2 * (D ** 0.5 - z.pow(2).sum(-1)).clamp_min(0) + l_l1 * z.abs().sum(-1)


def langevin_sparse(n: int, dim: int, *, l_l1: float, l_l2: float = 1.0, step: float = 1e-2, iterations: int = 500,
                    init: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples (n, dim) from exp(-E(z)) by unadjusted Langevin dynamics."""
    if step <= 0 or iterations < 1:
        raise ValueError(f"step/iterations: expected step > 0 and iterations >= 1, got {step}, {iterations}")
    z = torch.randn(n, dim, generator=generator) if init is None else init.detach().clone().float()
    for _ in range(iterations):
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(sparse_energy(z, l_l1, l_l2).sum(), z)
        with torch.no_grad():
            z = z - 0.5 * step * grad + step ** 0.5 * torch.randn(z.shape, generator=generator)
    return z.detach()


def sample_latents(model, n: int, *, generator: torch.Generator | None = None, langevin_step: float = 1e-2,
                   langevin_iterations: int = 500) -> torch.Tensor:
    """``n`` latent actions (n, action_dim) from the prior that matches the model's regularizer."""
    kind = regularizer_kind(model)
    dim = model.cfg.action_dim
    if kind == "noisy":
        return torch.randn(n, dim, generator=generator)
    if kind == "discrete":
        book = model.regularizer.codes().detach().float().cpu()
        return book[torch.randint(0, book.shape[0], (n,), generator=generator)]
    if kind == "sparse":
        r = model.cfg.regularizer
        return langevin_sparse(n, dim, l_l1=r.l_l1, l_l2=r.l_l2, step=langevin_step,
                               iterations=langevin_iterations, generator=generator)
    raise ValueError(f"model: sampling needs a 'noisy', 'discrete' or 'sparse' model, this one is {kind!r}")


def pca_2d(*clouds: torch.Tensor) -> list[torch.Tensor]:
    """Project point clouds (n_i, D) on the top-2 principal axes of their union."""
    allz = torch.cat([c.float() for c in clouds])
    mu = allz.mean(0)
    _, _, v = torch.pca_lowrank(allz - mu, q=min(2, allz.shape[1]), center=False)
    return [(c.float() - mu) @ v[:, :2] for c in clouds]


def embedding_plot(sampled: torch.Tensor, inferred: torch.Tensor, png: str | Path, title: str = "") -> Path:
    s2, i2 = pca_2d(sampled, inferred)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(i2[:, 0], i2[:, 1], s=6, alpha=0.6, label="inferred (IDM)")
    ax.scatter(s2[:, 0], s2[:, 1], s=6, alpha=0.6, label="sampled")
    ax.set_title(title or "latent actions (PCA)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, png)


def sampling_stats(sampled: torch.Tensor, inferred: torch.Tensor) -> dict:
    """Summary statistics comparing the two clouds (norms, sparsity, nearest-neighbour distance)."""
    d = torch.cdist(sampled.float(), inferred.float())
    return {"sampled_norm": float(sampled.norm(dim=1).mean()), "inferred_norm": float(inferred.norm(dim=1).mean()),
            "sampled_frac_small": float((sampled.abs() < 0.1).float().mean()),
            "inferred_frac_small": float((inferred.abs() < 0.1).float().mean()),
            "nn_distance_sampled_to_inferred": float(d.min(1).values.mean())}
