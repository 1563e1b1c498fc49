"""The attention block of the peers fastlam's drop-ins replace (UniVLA, lucidrains' ST-ViViT and
the example adapters' sources), written plainly for tests that load its weights into fastlam."""
from __future__ import annotations

import torch
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


def rotate_pairs(x, pos, rotary_dim, theta=10000.0):
    """rotary-embedding-torch's rotation with ``RotaryEmbedding(rotary_dim)`` (UniVLA's LAM:
    ``rotary_dim = head_dim // 2``): interleaved pairs, frequencies over the rotated width,
    the other channels as they are. ``pos``: (L,) positions of x's (..., L, D) rows."""
    inv = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=x.dtype, device=x.device) / rotary_dim)
    ang = (pos.to(x.dtype)[:, None] * inv).repeat_interleave(2, dim=-1)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    pairs = rot.unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
    return torch.cat([rot * ang.cos() + swapped * ang.sin(), rest], dim=-1)


class PartialRotaryAttention(PeerAttention):
    """UniVLA's LAM attention: PeerAttention's projections, q and k rotated on half of each head
    by their position in the reshaped sequence."""

    def forward(self, x, causal: bool = False):
        N, L, C = x.shape
        q, k, v = (f(x).view(N, L, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        pos = torch.arange(L, device=x.device)
        q, k = rotate_pairs(q, pos, q.shape[-1] // 2), rotate_pairs(k, pos, k.shape[-1] // 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.to_out(o.transpose(1, 2).reshape(N, L, C))


class SharedNormAttention(nn.Module):
    """1xgpt's ST-block attention: one ``qkv`` linear without bias, a biased ``proj``, one
    LayerNorm ``norm`` applied to q and to k, and the muP scale ``8 / head_dim``."""

    def __init__(self, num_heads, d_model):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scale = 8 / self.head_dim
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=True)
        self.norm = nn.LayerNorm(self.head_dim, eps=1e-05)

    def forward(self, x, causal: bool = False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.norm(q), self.norm(k)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.scale)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class QKVCrossAttention(nn.Module):
    """V-JEPA 2's ``CrossAttention``: ``q`` and ``kv`` linears, no output projection."""

    def __init__(self, dim, num_heads, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, q, x):
        B, n, C = q.shape
        q = self.q(q).reshape(B, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(x).reshape(B, x.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, C)


def _rotate_chunks(x, positions):
    """V-JEPA 2's 3-D rotation of x (..., L, D): chunks of ``2 * ((D // 3) // 2)`` channels for
    the (L,) depth, height and width positions, frequencies repeated within a chunk."""
    D = x.shape[-1]
    d = 2 * ((D // 3) // 2)
    omega = 1.0 / 10000.0 ** (torch.arange(d // 2, dtype=x.dtype) / (d / 2.0))
    out = []
    for i, pos in enumerate(positions):
        freq = torch.cat([pos[:, None] * omega] * 2, dim=-1)
        chunk = x[..., i * d:(i + 1) * d]
        y = chunk.unflatten(-1, (-1, 2))
        swapped = torch.stack((-y[..., 1], y[..., 0]), -1).flatten(-2)
        out.append(chunk * freq.cos() + swapped * freq.sin())
    return torch.cat(out + [x[..., 3 * d:]], dim=-1)


class ACRoPEAttention(nn.Module):
    """V-JEPA 2-AC's attention: ``qkv`` / ``proj``, 3-D RoPE over frames of ``action_tokens``
    tokens (rotated by time only) then H x W patches, heights scaled by grid_size / H and widths
    by grid_size / W, and the block-causal ``attn_mask`` the predictor passes."""

    def __init__(self, dim, num_heads, grid_size=16):
        super().__init__()
        self.num_heads, self.grid_size = num_heads, grid_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None, attn_mask=None, T=None, H=None, W=None, action_tokens=0):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        j = torch.arange(N) % (action_tokens + H * W)
        p = (j - action_tokens).clamp(min=0)
        patch = (j >= action_tokens).to(x.dtype)
        pos = ((torch.arange(N) // (action_tokens + H * W)).to(x.dtype),
               (p // W).to(x.dtype) * patch * (self.grid_size / H), (p % W).to(x.dtype) * patch * (self.grid_size / W))
        q, k = _rotate_chunks(q, pos), _rotate_chunks(k, pos)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class ACBlock(nn.Module):
    """V-JEPA 2-AC's predictor block: the grid goes only to ACRoPEAttention instances."""

    def __init__(self, dim, num_heads, grid_size=16):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = ACRoPEAttention(dim, num_heads, grid_size)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, mask=None, attn_mask=None, T=None, H=None, W=None, action_tokens=0):
        if isinstance(self.attn, ACRoPEAttention):
            y = self.attn(self.norm1(x), mask=mask, attn_mask=attn_mask, T=T, H=H, W=W, action_tokens=action_tokens)
        else:
            y = self.attn(self.norm1(x), mask=mask, attn_mask=attn_mask)
        x = x + y
        return x + self.mlp(self.norm2(x))


class STBlock(nn.Module):
    """UniVLA's LAM / 1xgpt's ST block: spatial attention on (B*T, S, E), causal temporal
    attention on (B*S, T, E), an MLP; ``attn`` builds each attention module."""

    def __init__(self, dim, attn):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.spatial_attn, self.temporal_attn = attn(), attn()
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):  # (B, T, S, E)
        B, T, S, E = x.shape
        s = x.reshape(B * T, S, E)
        s = s + self.spatial_attn(self.norm1(s))
        t = s.reshape(B, T, S, E).transpose(1, 2).reshape(B * S, T, E)
        t = t + self.temporal_attn(self.norm2(t), causal=True)
        x = t.reshape(B, S, T, E).transpose(1, 2)
        return x + self.mlp(self.norm3(x))
