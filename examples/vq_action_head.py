"""A discrete latent-action head (Genie / UniVLA / LAPA style) on fastlam's VectorQuantizer.

The peers' head (from their public descriptions): the inverse-dynamics encoder's output for
each transition is projected to a small code dimension and snapped to the nearest of K learned
codes (L2), with the straight-through estimator and the VQ-VAE loss
``||sg(h) - e||^2 + beta * ||h - sg(e)||^2``; the code indices are the latent-action tokens that
downstream policies predict.

On fastlam the nearest-code search is the fused Triton kernel on CUDA (the PyTorch reference
on CPU); ``indices`` come back with the codes, and ``codebook(idx)`` (an ``nn.Embedding``) maps
tokens back to actions. Dead-code resets and EMA updates are options of the quantizer, off
here so the head is exactly the peers' plain VQ.

    python -m examples.vq_action_head      # one training step on random IDM features
"""
from __future__ import annotations

import torch
from torch import nn

from fastlam.nn import VectorQuantizer


class LatentActionVQHead(nn.Module):
    def __init__(self, in_dim: int, code_dim: int = 32, num_codes: int = 8, commitment: float = 0.25,
                 backend: str = "auto"):
        super().__init__()
        self.proj = nn.Linear(in_dim, code_dim)
        self.vq = VectorQuantizer(num_codes, code_dim, commitment=commitment, reset_every_steps=None,
                                  threshold_dead_code=0.0, init="uniform", backend=backend)

    def forward(self, features: torch.Tensor):
        """features (B, T-1, in_dim), one per transition -> (actions (B, T-1, code_dim),
        indices (B, T-1) int64, VQ loss)."""
        z, idx, loss = self.vq(self.proj(features))
        return z, idx, loss

    def actions_from_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        """Latent actions for chosen code indices (e.g. a policy's predicted tokens)."""
        return self.vq.codebook(indices)


if __name__ == "__main__":
    torch.manual_seed(0)
    head = LatentActionVQHead(64)
    feats = torch.randn(2, 7, 64, requires_grad=True)
    z, idx, loss = head(feats)
    (z.square().mean() + loss).backward()
    print("actions", tuple(z.shape), "tokens", idx.tolist()[0], "loss", float(loss))
