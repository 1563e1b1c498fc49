"""Inverse dynamics model: z_t = g(s_t, s_{t+1}).

The paper does not give its architecture; fastlam's choice [ours] is a small transformer over
the 2N tokens of the two states, each frame preceded by one learned query token (so the pair
is two "frames" of N + 1 tokens with one prefix token each: the query tokens are rotated by
time only and the patch tokens by 3D RoPE, exactly the layout st_attention's RoPE supports).
A learned embedding tells the two frames apart, and a learned absolute position embedding
(shared by both frames) puts each patch's location into its value vector: RoPE alone only
shapes attention weights, so without it "where did the content move" is hard to read out
and a displacement is not a simple function of the tokens. The two query tokens are read
out by a linear head. All T - 1 transitions of a clip are batched as (B * (T - 1), 2 (N + 1), D).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import Rope3D
from .blocks import Block


class InverseDynamicsModel(nn.Module):
    def __init__(self, state_dim: int, width: int, depth: int, heads: int, out_features: int,
                 grid_w: int, num_patches: int, mlp_ratio: float = 4.0, rope_duplicated_freqs: bool = False):
        super().__init__()
        self.grid_w = grid_w
        self.rope_duplicated_freqs = rope_duplicated_freqs
        self.embed = nn.Linear(state_dim, width)
        self.frame_embed = nn.Parameter(torch.zeros(2, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, width))
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(2 * width, out_features)
        nn.init.normal_(self.frame_embed, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states (B, T, N, D) -> raw head outputs (B, T - 1, out_features), one per transition."""
        if states.dim() != 4 or states.shape[1] < 2:
            raise ValueError(f"states: expected (B, T >= 2, N, D), got shape {tuple(states.shape)}")
        B, T, N, _ = states.shape
        if N != self.pos_embed.shape[1]:
            raise ValueError(f"states: expected N={self.pos_embed.shape[1]} tokens per frame, got {N}")
        pairs = torch.stack([states[:, :-1], states[:, 1:]], dim=2).flatten(0, 1)  # (B(T-1), 2, N, D)
        x = self.embed(pairs) + self.frame_embed + self.pos_embed
        q = (self.query + self.frame_embed).expand(x.shape[0], 2, 1, -1)
        x = torch.cat([q, x], dim=2).flatten(1, 2)  # (B(T-1), 2(N+1), width)
        rope = Rope3D(grid_w=self.grid_w, num_prefix=1, duplicated_freqs=self.rope_duplicated_freqs)
        for blk in self.blocks:
            x = blk(x, frame_len=N + 1, mask="full", rope=rope)
        x = self.norm(x).view(x.shape[0], 2, N + 1, -1)[:, :, 0]  # the two query tokens
        return self.head(x.flatten(1)).view(B, T - 1, -1)
