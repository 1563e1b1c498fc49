"""STAttention: multi-head self-attention over video tokens, drop-in for V-JEPA 2 blocks."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import Rope3D, st_attention


class STAttention(nn.Module):
    """qkv projection -> (3D RoPE) -> spatio-temporal attention -> output projection.

    Parameter names (``qkv``, ``proj``) match V-JEPA 2's attention blocks, so their state dicts
    load directly. The mask and RoPE layout are per call, because the same block serves clips
    of different lengths.

    Example:
        >>> attn = STAttention(dim=64, num_heads=4)
        >>> x = torch.randn(2, 3 * 16, 64)  # 3 frames of 4x4 patches
        >>> attn(x, frame_len=16, mask="frame_causal", rope=Rope3D(grid_w=4)).shape
        torch.Size([2, 48, 64])
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim: expected a multiple of num_heads={num_heads}, got {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        *,
        frame_len: int,
        mask: str = "frame_causal",
        rope: Rope3D | None = None,
        window_frames: int | None = None,
    ) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"x: expected (B, L, dim), got shape {tuple(x.shape)}")
        B, L, C = x.shape
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        out = st_attention(
            qkv[0], qkv[1], qkv[2],
            frame_len=frame_len, mask=mask, rope=rope, window_frames=window_frames, backend=self.backend,
        )
        return self.proj(out.transpose(1, 2).reshape(B, L, C))
