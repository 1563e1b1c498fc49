"""examples/: each adapter equals a plain-PyTorch re-implementation of the peer's block, float64."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `examples` is a top-level folder, not part of the package
    sys.path.insert(0, str(REPO))

from examples.st_lam_block import STBlock  # noqa: E402
from examples.vjepa2_predictor_block import PredictorBlock  # noqa: E402
from peer_attention import PeerAttention  # noqa: E402

D64 = torch.float64


class _PeerSTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm_s, self.norm_t, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.spatial, self.temporal = PeerAttention(dim, heads), PeerAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):  # x: (B, T, S, E)
        B, T, S, E = x.shape
        x = x + self.spatial(self.norm_s(x).reshape(B * T, S, E), causal=False).view(B, T, S, E)
        xt = self.norm_t(x).transpose(1, 2).reshape(B * S, T, E)
        x = x + self.temporal(xt, causal=True).view(B, S, T, E).transpose(1, 2)
        return x + self.mlp(self.norm_mlp(x))


def test_st_lam_block_equals_factorised_peer():
    torch.manual_seed(0)
    B, T, S, E = 2, 3, 6, 32
    peer = _PeerSTBlock(E, 4).to(D64)
    block = STBlock(E, 4, backend="math").to(D64)
    block.load_state_dict(peer.state_dict())  # separate to_q/to_k/to_v/to_out fused on load
    x = torch.randn(B, T, S, E, dtype=D64, requires_grad=True)
    ref = peer(x)
    x2 = x.detach().clone().requires_grad_()
    got = block(x2.reshape(B, T * S, E), frame_len=S).view(B, T, S, E)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    ref.backward(g)
    got.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-10, atol=1e-10)


def _peer_rotate(x, pos, theta=10000.0):
    """V-JEPA 2's per-chunk rotation: frequencies repeated (not interleaved) over the chunk."""
    d = x.shape[-1]
    omega = 1.0 / theta ** (torch.arange(d // 2, dtype=D64) / (d / 2))
    freq = pos[..., None].to(D64) * omega
    sin, cos = freq.sin(), freq.cos()
    sin, cos = torch.cat([sin, sin], -1), torch.cat([cos, cos], -1)
    y = x.unflatten(-1, (-1, 2))
    y = torch.stack((-y[..., 1], y[..., 0]), -1).flatten(-2)
    return x * cos + y * sin


class _PeerPredictorBlock(nn.Module):
    def __init__(self, dim, heads, grid_h, grid_w):
        super().__init__()
        self.heads, self.grid_h, self.grid_w = heads, grid_h, grid_w
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def _attend(self, x, ids):
        B, N, C = x.shape
        hd = C // self.heads
        q, k, v = self.attn.qkv(x).view(B, N, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        tokens_per_frame = self.grid_h * self.grid_w
        t = (ids // tokens_per_frame)[:, None]
        h = ((ids % tokens_per_frame) // self.grid_w)[:, None]
        w = (ids % self.grid_w)[:, None]
        d = 2 * ((hd // 3) // 2)

        def rope(z):
            parts = [_peer_rotate(z[..., i * d:(i + 1) * d], p) for i, p in enumerate((t, h, w))]
            return torch.cat(parts + [z[..., 3 * d:]], -1)

        o = F.scaled_dot_product_attention(rope(q), rope(k), v)
        return self.attn.proj(o.transpose(1, 2).reshape(B, N, C))

    def forward(self, x, ids):
        x = x + self._attend(self.norm1(x), ids)
        return x + self.mlp(self.norm2(x))


def test_vjepa2_predictor_block_equals_peer_on_kept_tokens():
    torch.manual_seed(1)
    T, H, W, dim, heads = 3, 2, 4, 80, 4  # head dim 20: chunks of 6, two channels unrotated
    peer = _PeerPredictorBlock(dim, heads, H, W).to(D64)
    block = PredictorBlock(dim, heads, grid_w=W, backend="math").to(D64)
    block.load_state_dict(peer.state_dict())
    ids = torch.stack([torch.randperm(T * H * W)[:9].sort().values for _ in range(2)])
    x = torch.randn(2, 9, dim, dtype=D64)
    torch.testing.assert_close(block(x, ids, frame_len=H * W), peer(x, ids), rtol=1e-10, atol=1e-10)
    # all tokens in order: the same as the index-derived positions (the fused-kernel path)
    full = torch.randn(2, T * H * W, dim, dtype=D64)
    every = torch.arange(T * H * W).expand(2, -1)
    torch.testing.assert_close(block(full, None, frame_len=H * W), peer(full, every), rtol=1e-10, atol=1e-10)


def test_vq_action_head_equals_the_peers_plain_vq_in_float64():
    """The head's tokens, actions, loss and every gradient equal the VQ-VAE head written out
    from the peers' description (nearest code by L2, straight-through, codebook + beta * commitment)."""
    from examples.vq_action_head import LatentActionVQHead

    torch.manual_seed(3)
    head = LatentActionVQHead(24, code_dim=16, num_codes=8, commitment=0.25, backend="torch").to(D64).train()
    proj = nn.Linear(24, 16).to(D64)
    proj.load_state_dict(head.proj.state_dict())
    codebook = head.vq.codebook.weight.detach().clone().requires_grad_()
    feats = torch.randn(3, 5, 24, dtype=D64, requires_grad=True)
    feats_ref = feats.detach().clone().requires_grad_()

    z, idx, loss = head(feats)
    h = proj(feats_ref)
    d = (h.unsqueeze(-2) - codebook).pow(2).sum(-1)
    idx_ref = d.argmin(-1)
    e = codebook[idx_ref]
    z_ref = h + (e - h).detach()
    loss_ref = (h.detach() - e).pow(2).mean() + 0.25 * (h - e.detach()).pow(2).mean()
    assert torch.equal(idx, idx_ref)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(z)
    ((z * g).sum() + loss).backward()
    ((z_ref * g).sum() + loss_ref).backward()
    torch.testing.assert_close(feats.grad, feats_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.proj.weight.grad, proj.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.vq.codebook.weight.grad, codebook.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.actions_from_tokens(idx), e.detach())
