"""The peers' remaining attention layouts, against float64 re-implementations of the peers.

Partial rotary (UniVLA's LAM: rotary-embedding-torch with ``dim = head_dim // 2``, interleaved
pairs, the rest of the head unrotated) and V-JEPA 2-AC's non-square grid (rows scaled by
``grid_size / H``, columns by ``grid_size / W``), on the reference path and on the Triton path
(interpreter, tiny odd shapes; both RoPE fusions, which take the same tables: no kernel source
knows about either layout).
"""
from __future__ import annotations

import os

import pytest
import torch

from fastlam.ops import Rope1D, Rope3D, apply_rope, st_attention
from fastlam.testing import assert_error_ratio

D64 = torch.float64


# ---------------------------------------------------------------------------- peer re-implementations


def _univla_partial_rotary(x, pos, rotary_dim, theta=10000.0):
    """rotary-embedding-torch's ``rotate_queries_or_keys`` with ``RotaryEmbedding(rotary_dim)``:
    frequencies over the rotated width, each repeated for its pair, channels past it as they are."""
    inv = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=D64)[: rotary_dim // 2] / rotary_dim)
    ang = (pos.to(D64)[:, None] * inv).repeat_interleave(2, dim=-1)  # (L, rotary_dim)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    pairs = rot.unflatten(-1, (-1, 2))
    half_rot = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
    return torch.cat([rot * ang.cos() + half_rot * ang.sin(), rest], dim=-1)


def _vjepa2_ac_rope(x, T, H, W, grid_size):
    """V-JEPA 2-AC's ACRoPEAttention rotation of (B, heads, T*H*W, D): depth, height and width
    chunks of ``2 * ((D // 3) // 2)`` channels, frequencies repeated (not interleaved) within a
    chunk, heights scaled by grid_size / H and widths by grid_size / W."""
    D = x.shape[-1]
    d = 2 * ((D // 3) // 2)
    omega = 1.0 / 10000.0 ** (torch.arange(d // 2, dtype=D64) / (d / 2.0))
    ids = torch.arange(T * H * W)
    t, h, w = ids // (H * W), (ids % (H * W)) // W, ids % W
    out = []
    for i, pos in enumerate((t.to(D64), h.to(D64) * (grid_size / H), w.to(D64) * (grid_size / W))):
        freq = torch.cat([pos[:, None] * omega] * 2, dim=-1)  # (L, d): [f0..fn, f0..fn]
        chunk = x[..., i * d:(i + 1) * d]
        y = chunk.unflatten(-1, (-1, 2))
        swapped = torch.stack((-y[..., 1], y[..., 0]), -1).flatten(-2)
        out.append(chunk * freq.cos() + swapped * freq.sin())
    return torch.cat(out + [x[..., 3 * d:]], dim=-1)


# ---------------------------------------------------------------------------- reference path


@pytest.mark.parametrize("axis", ["time", "space"])
def test_partial_rotary_matches_univla(axis):
    B, H, T, S, D = 2, 3, 3, 5, 16
    x = torch.randn(B, H, T * S, D, dtype=D64)
    idx = torch.arange(T * S)
    pos = idx // S if axis == "time" else idx % S
    ref = _univla_partial_rotary(x, pos, D // 2)
    got = apply_rope(x, S, Rope1D(axis, rotary_dim=D // 2))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)
    assert torch.equal(got[..., D // 2:], x[..., D // 2:])
    # Whole-head rotation is what fastlam did before: far off (the peer rotates half).
    assert (apply_rope(x, S, Rope1D(axis)) - ref).abs().max() > 1e-2


def test_partial_rotary_3d_rotates_the_first_channels_as_a_narrower_head():
    x = torch.randn(1, 2, 2 * 6, 40, dtype=D64)
    rope = Rope3D(grid_w=3, rotary_dim=24)
    got = apply_rope(x, 6, rope)
    torch.testing.assert_close(got[..., :24], apply_rope(x[..., :24], 6, Rope3D(grid_w=3)), rtol=0, atol=0)
    assert torch.equal(got[..., 24:], x[..., 24:])
    for bad in (7, 0, -2):
        with pytest.raises(ValueError, match="rotary_dim"):
            Rope1D("time", rotary_dim=bad)
    with pytest.raises(ValueError, match="rotary_dim"):
        apply_rope(x, 6, Rope1D("time", rotary_dim=48))


def test_non_square_grid_matches_vjepa2_ac():
    T, H, W, D, grid = 2, 4, 6, 36, 16
    x = torch.randn(2, 2, T * H * W, D, dtype=D64)
    ref = _vjepa2_ac_rope(x, T, H, W, grid)
    got = apply_rope(x, H * W, Rope3D(grid_w=W, spatial_scale=grid / H, col_scale=grid / W))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    # One scale for both axes (the old Rope3D) is off on a non-square grid.
    assert (apply_rope(x, H * W, Rope3D(grid_w=W, spatial_scale=grid / H)) - ref).abs().max() > 1e-5


# ---------------------------------------------------------------------------- Triton path

needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs CUDA or the Triton interpreter")
DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"

TABLE_ROPES = [  # (rope, frame_len, head_dim)
    (Rope1D("time", rotary_dim=8), 5, 16),  # UniVLA's temporal attention, half the head rotated
    (Rope1D("space", rotary_dim=12), 7, 24),  # its spatial attention on the flattened video
    (Rope3D(grid_w=3, num_prefix=1, spatial_scale=8 / 2, col_scale=8 / 3), 7, 40),  # AC: 2x3 grid + 1 prefix
    (Rope3D(grid_w=3, duplicated_freqs=False, col_scale=0.5, rotary_dim=20), 6, 32),
]


@needs_triton
@pytest.mark.parametrize("fusion", ["prepass", "kernel"])
@pytest.mark.parametrize("rope,frame_len,D", TABLE_ROPES)
def test_triton_takes_partial_and_non_square_rope(rope, frame_len, D, fusion, monkeypatch):
    from fastlam.ops import triton_attention as ta

    monkeypatch.setenv(ta.ROPE_FUSION_ENV, fusion)
    torch.manual_seed(0)
    B, H, L = 1, 2, 3 * frame_len
    q, k, v = (torch.randn(B, H, L, D, device=DEV, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, L, D, device=DEV)
    kw = dict(frame_len=frame_len, mask="frame_causal", rope=rope)
    out = st_attention(q, k, v, backend="triton", deterministic=True, **kw)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = st_attention(q64, k64, v64, backend="math", **kw)
    qp, kp, vp = (x.detach().clone().requires_grad_() for x in (q, k, v))
    pt = st_attention(qp, kp, vp, backend="math", **kw)
    assert_error_ratio(out, ref, pt, factor=2, atol=1e-5, what="out")
    out.backward(do)
    ref.backward(do.double())
    pt.backward(do)
    for name, x, r, p in (("dq", q, q64, qp), ("dk", k, k64, kp), ("dv", v, v64, vp)):
        assert_error_ratio(x.grad, r.grad, p.grad, factor=3, atol=1e-5, what=name)
    # The rotation matters at these shapes: without it the kernel's output would be far off.
    plain = st_attention(q64, k64, v64, frame_len=frame_len, mask="frame_causal", backend="math")
    assert (plain - ref).abs().max() > 1e-3


@needs_triton
@pytest.mark.parametrize("rope,frame_len,D", TABLE_ROPES)
def test_tables_give_the_reference_angles_bitwise(rope, frame_len, D):
    """The kernels' lookup (same index maths as kernels/attention_rope.rope_positions) of the
    tables gives the reference's cos / sin bit for bit."""
    from fastlam.ops.rope import channel_frequencies, rope_1d_frequencies
    from rope_lookup import kernel_rope_lookup  # imports the Triton attention ops

    L = 4 * frame_len
    cos, sin, axis = kernel_rope_lookup(L, frame_len, D, rope)
    idx = torch.arange(L)
    t, j = idx // frame_len, idx % frame_len
    # The reference's angles, fp32 as apply_rope computes them for fp32 inputs.
    if isinstance(rope, Rope1D):
        r = rope.rotary_dim
        ang = (t if rope.axis == "time" else j).float()[:, None] * rope_1d_frequencies(r, rope)
        ref = torch.cat([ang, torch.zeros(L, D - r)], 1)
    else:
        from fastlam.ops.rope import token_positions

        tt, hh, ww = token_positions(L, frame_len, rope)
        freqs, ax = channel_frequencies(D, rope)
        ref = torch.stack([tt, hh, ww, torch.zeros_like(tt)], 1)[:, ax % 4] * freqs
    assert torch.equal(cos, ref.cos()) and torch.equal(sin, ref.sin())
    width = rope.rotary_dim or D
    rotated = width if isinstance(rope, Rope1D) else 3 * 2 * ((width // 3) // 2)
    assert (axis == 3).sum() == D - rotated


def test_dispatch_sends_only_table_ropes_to_the_kernels():
    from fastlam.ops.dispatch import AttentionRequest

    def req(rope):
        return AttentionRequest(6, "full", rope, 1.0, None, False, False)

    assert req(Rope1D("time", rotary_dim=8)).plain_rope and req(Rope3D(grid_w=3, col_scale=0.5)).plain_rope
    assert not req(Rope1D("sequence")).plain_rope and not req(Rope1D("time", interleaved=False)).plain_rope
    pytest.importorskip("triton")
    from fastlam.ops import triton_attention as ta

    q = torch.randn(1, 1, 12, 16)
    assert "sequence" in ta.triton_supports(q, req(Rope1D("sequence")))
    assert "interleaved" in ta.triton_supports(q, req(Rope1D("space", interleaved=False)))
