"""Transformer blocks shared by the encoder, the IDM and the predictor.

Parameter names follow V-JEPA 2 (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``) so its checkpoints map onto these blocks key for key.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import FrameAdaLN, STAttention
from ..ops import Rope3D


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block over video tokens (attention mask and RoPE per call)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = STAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, *, frame_len: int, mask: str, rope: Rope3D | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), frame_len=frame_len, mask=mask, rope=rope)
        return x + self.mlp(self.norm2(x))


class AdaLNZeroBlock(nn.Module):
    """Predictor block conditioned frame-wise on a vector c_t per frame (AdaLN-zero).

    ``SiLU -> Linear -> 6 * dim`` maps c_t to (shift, scale, gate) for the attention and MLP
    branches; each is broadcast over frame t's tokens:
    ``x + gate * branch(LN(x) * (1 + scale) + shift)``. The modulation layer starts at zero, so
    a fresh block is the identity and conditioning is learned from a stable start.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = FrameAdaLN(dim)
        self.attn = STAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = FrameAdaLN(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, *, frame_len: int, mask: str, rope: Rope3D | None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(cond).chunk(6, dim=-1)
        h = self.attn(self.norm1(x, shift1, scale1, frame_len), frame_len=frame_len, mask=mask, rope=rope)
        x = FrameAdaLN.gated_residual(x, h, gate1, frame_len)
        h = self.mlp(self.norm2(x, shift2, scale2, frame_len))
        return FrameAdaLN.gated_residual(x, h, gate2, frame_len)
