"""A V-JEPA 2 predictor block on fastlam modules.

The peer's block (from its public description): pre-norm multi-head attention with one
``qkv`` linear and a ``proj`` linear, 3-D rotary embedding of q and k (the head dim split in
three chunks rotated by the token's frame, row and column, frequencies repeated within a
chunk), then a pre-norm MLP. The masked predictor sees only some tokens of the clip: their
positions come from the token ids of the full (frames x H x W) grid, not from their order.

On fastlam: ``STAttention`` (same parameter names: V-JEPA 2 state dicts load directly) with
``Rope3D(grid_w=W)`` (``duplicated_freqs=True`` is V-JEPA 2's frequency layout) and
``rope_positions=ids`` for the kept tokens. The action-conditioned predictor instead runs the
whole clip with ``mask="frame_causal"`` and ``Rope3D(grid_w=W, num_prefix=...)``.
Its loss is ``PredictionLoss(normalize_target=True, eps=1e-5, loss_exp=1)``.

    python -m examples.vjepa2_predictor_block
"""
from __future__ import annotations

import torch
from torch import nn

from fastlam.nn import PredictionLoss, Rope3D, STAttention


class PredictorBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, grid_w: int, mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.rope = Rope3D(grid_w=grid_w)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = STAttention(dim, num_heads, backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None, frame_len: int, mask: str = "full") -> torch.Tensor:
        """x: (B, N, dim) tokens; ids: (B, N) their indices in the full clip (None: all of it)."""
        x = x + self.attn(self.norm1(x), frame_len=frame_len, mask=mask, rope=self.rope, rope_positions=ids)
        return x + self.mlp(self.norm2(x))


if __name__ == "__main__":
    torch.manual_seed(0)
    T, H, W, dim = 2, 4, 4, 96
    block = PredictorBlock(dim, 4, grid_w=W)
    ids = torch.stack([torch.randperm(T * H * W)[:10].sort().values for _ in range(2)])
    x = torch.randn(2, 10, dim, requires_grad=True)
    y = block(x, ids, frame_len=H * W)
    loss = PredictionLoss(normalize_target=True, eps=1e-5, loss_exp=1)(y, torch.randn_like(y))
    loss.backward()
    print("out", tuple(y.shape), "loss", float(loss.detach()))
