"""The attention block of the peers fastlam's drop-ins replace (UniVLA, lucidrains' ST-ViViT and
the example adapters' sources), written plainly for tests that load its weights into fastlam."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class PeerAttention(nn.Module):
    """Separate q, k, v projections without bias and a biased output projection, as the peers
    store them; attention over whatever ``(N, L, E)`` layout the caller reshaped to."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, causal: bool = False):
        N, L, C = x.shape
        q, k, v = (f(x).view(N, L, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.to_out(o.transpose(1, 2).reshape(N, L, C))
