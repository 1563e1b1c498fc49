"""Options of the drop-in modules (STAttention, PredictionLoss) against plain PyTorch, float64.

Reference paths only, except one fused prediction-loss check (Triton interpreter, tiny)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastlam.nn import PredictionLoss, Rope1D, Rope3D, STAttention
from fastlam.ops import apply_rope, prediction_loss, st_attention
from peer_attention import PeerAttention

D64 = torch.float64


def _attn_ref(x, qkv_w, qkv_b, proj, heads, *, scale=None, kv=None, allowed=None, q_norm=None, k_norm=None):
    """Plain multi-head attention with explicit weights: the peers' semantics."""
    B, L, C = x.shape
    hd = C // heads
    ctx = x if kv is None else kv
    q = F.linear(x, qkv_w[:C], qkv_b[:C]).view(B, L, heads, hd).transpose(1, 2)
    k = F.linear(ctx, qkv_w[C:2 * C], qkv_b[C:2 * C]).view(B, -1, heads, hd).transpose(1, 2)
    v = F.linear(ctx, qkv_w[2 * C:], qkv_b[2 * C:]).view(B, -1, heads, hd).transpose(1, 2)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else hd ** -0.5)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C)
    return proj(o)


def _module(**kw):
    torch.manual_seed(0)
    return STAttention(32, 4, backend="math", **kw).to(D64)


def test_qk_norm_and_scale():
    m = _module(qk_norm=True, scale=8 / 8)
    with torch.no_grad():
        m.q_norm.weight.uniform_(0.5, 1.5)
        m.k_norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 12, 32, dtype=D64)
    got = m(x, frame_len=4, mask="full")
    ref = _attn_ref(x, m.qkv.weight, m.qkv.bias, m.proj, 4, scale=1.0, q_norm=m.q_norm, k_norm=m.k_norm)
    torch.testing.assert_close(got, ref)
    assert {"q_norm.weight", "k_norm.bias"} <= set(m.state_dict())


def test_cross_attention_with_key_padding():
    m = _module()
    x, ctx = torch.randn(2, 8, 32, dtype=D64), torch.randn(2, 5, 32, dtype=D64)
    lengths = torch.tensor([3, 5])
    got = m(x, frame_len=8, mask="full", kv=ctx, key_lengths=lengths)
    allowed = (torch.arange(5)[None, :] < lengths[:, None])[:, None, None, :]
    ref = _attn_ref(x, m.qkv.weight, m.qkv.bias, m.proj, 4, kv=ctx, allowed=allowed)
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="mask='full'"):
        m(x, frame_len=4, mask="frame_causal", kv=ctx)


def test_dropout_training_only_and_seeded():
    m = _module(attn_drop=0.3)
    x = torch.randn(1, 8, 32, dtype=D64)
    m.eval()
    torch.testing.assert_close(m(x, frame_len=4), _module()(x, frame_len=4))
    m.train()
    a, b = m(x, frame_len=4, dropout_seed=7), m(x, frame_len=4, dropout_seed=7)
    assert torch.equal(a, b) and not torch.allclose(a, m(x, frame_len=4, dropout_seed=8))
    # the kernel has no dropout: 'auto' and the Triton backend route it to the reference
    from fastlam.ops.attention import AttentionRequest, select_backend

    req = AttentionRequest(4, "full", None, 1.0, None, False, False, dropout_p=0.3, dropout_seed=1)
    assert select_backend(x[:, None].float(), req) == "math"
    with pytest.raises(ValueError, match="dropout"):
        select_backend(x[:, None].float(), req, backend="triton")


@pytest.mark.parametrize("axis", ["time", "space", "sequence"])
@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_1d_on_factorised_axes(axis, interleaved):
    """Rope1D(axis) on the flattened video equals textbook 1-D RoPE on the factorised layout."""
    B, H, T, S, D = 1, 2, 3, 4, 8
    x = torch.randn(B, H, T * S, D, dtype=D64)
    got = apply_rope(x, S, Rope1D(axis, interleaved=interleaved))
    idx = torch.arange(T * S)
    pos = {"time": idx // S, "space": idx % S, "sequence": idx}[axis].to(D64)
    inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=D64) / D)
    ang = pos[:, None] * inv  # (L, D/2)
    cos, sin = ang.cos(), ang.sin()
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        ref = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    else:
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        ref = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    torch.testing.assert_close(got, ref)


def test_rope_positions_from_explicit_ids():
    """A masked predictor keeps some tokens: rotating them with their ids equals rotating the
    full clip and keeping the same tokens (Rope3D and Rope1D, per-sample ids)."""
    B, H, F_, D = 2, 1, 9, 12
    x = torch.randn(B, H, 2 * F_, D, dtype=D64)
    ids = torch.stack([torch.tensor([0, 4, 8, 13, 17]), torch.tensor([1, 2, 9, 10, 11])])
    kept = torch.stack([x[b, :, ids[b]] for b in range(B)])
    for rope in (Rope3D(grid_w=3), Rope1D("time")):
        full = apply_rope(x, F_, rope)
        ref = torch.stack([full[b, :, ids[b]] for b in range(B)])
        torch.testing.assert_close(apply_rope(kept, F_, rope, ids), ref)
    q = kept.clone()
    out = st_attention(q, q, q, frame_len=F_, mask="full", rope=Rope3D(grid_w=3), rope_positions=ids, backend="math")
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="rope_positions"):
        st_attention(q, q, q, frame_len=F_, mask="full", rope_positions=ids)


def test_load_separate_qkv_weights():
    torch.manual_seed(1)
    peer = PeerAttention(32, 4).to(D64)  # UniVLA / lucidrains-style
    x = torch.randn(2, 6, 32, dtype=D64)
    a = STAttention.from_separate_qkv(peer.to_q, peer.to_k, peer.to_v, peer.to_out[0], num_heads=4, backend="math")
    torch.testing.assert_close(a(x, frame_len=6, mask="full"), peer(x))
    b = STAttention(32, 4, backend="math").to(D64)  # biased qkv: loads zeros for the missing biases
    b.load_state_dict(peer.state_dict())
    torch.testing.assert_close(b(x, frame_len=6, mask="full"), peer(x))


def test_tensor_mask_error_is_short():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(TypeError) as err:
        st_attention(q, q, q, frame_len=4, mask=torch.ones(4, 4, dtype=torch.bool))
    assert "shape (4, 4)" in str(err.value) and "tensor([" not in str(err.value)


# ---------------------------------------------------------------------------- PredictionLoss


def test_prediction_loss_vjepa2_convention_eps_reduction_mask_broadcast():
    torch.manual_seed(2)
    pred = torch.randn(2, 6, 8, dtype=D64, requires_grad=True)
    tgt = torch.randn(2, 6, 8, dtype=D64) * 1e-3  # small targets: eps matters
    h = F.layer_norm(tgt, (8,))  # eps 1e-5
    for p in (1, 2, 1.5):
        got = PredictionLoss(normalize_target=True, eps=1e-5, loss_exp=p)(pred, tgt)
        torch.testing.assert_close(got, torch.mean(torch.abs(pred - h) ** p) / p)
    assert not torch.allclose(PredictionLoss(normalize_target=True)(pred, tgt),
                              PredictionLoss(normalize_target=True, eps=1e-5)(pred, tgt))
    none = prediction_loss(pred, tgt, kind="l2", reduction="none")
    torch.testing.assert_close(none, (pred - tgt) ** 2)
    torch.testing.assert_close(prediction_loss(pred, tgt, reduction="sum"), (pred - tgt).abs().sum())
    m = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)[..., None]
    got = prediction_loss(pred, tgt, mask=m)
    torch.testing.assert_close(got, (pred - tgt).abs()[m.expand(-1, -1, 8)].mean())
    bt = tgt[:, :1]  # (B, 1, D) against (B, T, D)
    torch.testing.assert_close(prediction_loss(pred, bt), (pred - bt).abs().mean())
    with pytest.raises(ValueError, match="mask: expected a shape broadcastable"):
        prediction_loss(pred, tgt, mask=torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        prediction_loss(pred, tgt, reduction="avg")


@pytest.mark.parametrize("loss_exp,reduction", [(1, "mean"), (2, "sum")])
def test_prediction_loss_fused_equals_reference(loss_exp, reduction):
    pytest.importorskip("fastlam.kernels.prediction_loss")
    import os

    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs CUDA or the Triton interpreter")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    pred = torch.randn(2, 5, 24, device=dev, requires_grad=True)
    tgt = torch.randn(2, 5, 24, device=dev)
    kw = dict(normalize_target=True, eps=1e-5, loss_exp=loss_exp, reduction=reduction)
    fused = prediction_loss(pred, tgt, backend="triton", **kw)
    (g_fused,) = torch.autograd.grad(fused, pred)
    ref = prediction_loss(pred, tgt, backend="torch", **kw)
    (g_ref,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(fused.detach()))
