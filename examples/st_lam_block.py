"""A Genie / UniVLA-style spatio-temporal transformer block on fastlam modules.

The peers' block (from their public descriptions): pre-norm spatial attention among the
patches of each frame, pre-norm causal temporal attention among the patches at the same
position across frames, then a pre-norm MLP; attention projections are separate
``to_q / to_k / to_v / to_out`` linears and the attention itself runs on reshaped layouts,
(B*T, S, E) for space and (B*S, T, E) for time.

On fastlam the video stays flattened (B, T*S, E): ``mask="frame_local"`` is the spatial
attention, ``mask="temporal_causal"`` the temporal one (no reshape, one fused kernel each on
CUDA). The peers' weights load as they are (STAttention fuses the separate projections).

    python -m examples.st_lam_block      # runs a forward + backward on random tokens
"""
from __future__ import annotations

import torch
from torch import nn

from fastlam.nn import STAttention


class STBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False, backend: str = "auto"):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.spatial = STAttention(dim, num_heads, qkv_bias=False, qk_norm=qk_norm, backend=backend)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = STAttention(dim, num_heads, qkv_bias=False, qk_norm=qk_norm, backend=backend)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, frame_len: int, causal: bool = True) -> torch.Tensor:
        """x: (B, T * frame_len, dim), frames of ``frame_len`` patch tokens."""
        x = x + self.spatial(self.norm_s(x), frame_len=frame_len, mask="frame_local")
        x = x + self.temporal(self.norm_t(x), frame_len=frame_len, mask="temporal_causal" if causal else "temporal")
        return x + self.mlp(self.norm_mlp(x))


if __name__ == "__main__":
    torch.manual_seed(0)
    block = STBlock(64, 4)
    x = torch.randn(2, 4 * 16, 64, requires_grad=True)  # 4 frames of 4x4 patches
    y = block(x, frame_len=16)
    y.square().mean().backward()
    print("out", tuple(y.shape), "grad norm", float(x.grad.norm()))
