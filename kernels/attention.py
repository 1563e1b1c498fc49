"""Fused spatio-temporal attention: Triton forward and backward with index-computed masks.

Layout: q, k, v, o are (B, H, L, D) with a unit stride on the head dim (any strides for B,
H, L, so views of a packed qkv projection need no copy). The mask is a predicate of the
query and key token indices (the same one as ``fastlam.ops.attention.mask_allows``). All
four masks are one rule, frame-causal with a window over "mask frames" (:func:`mask_frames`):

    full          one frame of L tokens        every key
    causal        frames of 1 token, no window k <= q
    frame_causal  the video's frames, window   frame(q) - window < frame(k) <= frame(q)
    frame_local   the video's frames, window 1 frame(k) == frame(q)

For each query tile the kernel derives, from the tile's first and last index, the range of
key tiles that may contain an allowed pair ``[lo, hi)`` and the sub-range whose every pair
is allowed; it runs three loops: masked tiles below, unmasked tiles (no mask arithmetic),
masked tiles above. Key tiles outside ``[lo, hi)`` are never loaded. With frame lengths
like 258 that do not divide the tile size, only the tiles that straddle a frame boundary
pay for the mask. The backward dK/dV pass does the same over query tiles for each key tile.

3D RoPE (V-JEPA 2 layout) runs in the rotation kernel ``_rope_rotate``: the token's (t, h,
w) position is derived from its index, the frame length, the number of per-frame prefix
tokens and the grid width; per channel the launcher passes the axis (0=t, 1=h, 2=w,
3=none) and cos/sin tables indexed by (integer position along that axis, channel). The
tables are ``cos((i * scale_axis) * f_c)`` built in fp32 by the same torch ops as the
reference, so the angles are bit-identical to ``fastlam.ops.rope`` and no per-element
sin/cos is evaluated. Rotation is ``x*cos + pair_swap(x)*sin``; its transpose (backward)
``g*cos - pair_swap(g*sin)``. q and k are rotated once before the attention kernels and
dQ, dK are rotated back once after them (O(L*D) memory traffic per pass, versus O(L^2*D)
FLOPs of attention: estimated at a few percent at L=2048, not yet measured on a GPU). Why not inside the attention kernels: the streamed operand would be re-rotated for
every query tile, and even rotating only the resident tile in the prologue (or dK/dQ in
the epilogue) made the sm_90 builds spill registers (STACK 8-232 B, measured with
``cuobjdump -res-usage``), which costs more than the extra pass.

Softmax runs in base 2 (``exp2`` with ``scale * log2(e)`` folded in); the stored
log-sum-exp is natural-log, fp32, (B, H, L). The backward is the flash-attention split:
a preprocess (Delta = rowsum(O * dO)), a dK/dV pass over query tiles per key tile, and
either a separate dQ pass (deterministic, no atomics) or dQ accumulated with fp32 atomics
in the dK/dV pass (fewer matmuls, run-to-run non-deterministic summation order; only
where it compiles without spills, head dims <= 64).

Host launchers here are plain functions (no autograd); fastlam.ops.triton_attention wraps
them. Block sizes come from :func:`block_config` (a documented heuristic, no autotuning).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .registry import KernelConfig, register

MASKS = ("full", "causal", "frame_causal", "frame_local")
HEAD_DIMS = (32, 64, 80, 96, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": a row masked in one tile never gives inf - inf
_LOG2E_F = 1.4426950408889634
_LOG2E = tl.constexpr(_LOG2E_F)
_LN2 = tl.constexpr(0.6931471805599453)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _allowed(q_idx, k_idx, L, MF, MW):
    """Mask predicate on broadcast index tiles; out-of-range keys and queries are never allowed.

    Every mask is frame-causal with a window over "mask frames" of MF tokens: frame(k) <=
    frame(q) < frame(k) + MW (see :func:`mask_frames`).
    """
    fq = q_idx // MF
    fk = k_idx // MF
    return (k_idx < L) & (q_idx < L) & (fk <= fq) & (fq - fk < MW)


@triton.jit
def _align_ranges(lo, hi, a, b, BLOCK: tl.constexpr):
    """Split the tile range starting at ``lo`` (aligned down) into masked / unmasked / masked.

    ``[lo, hi)`` may hold allowed pairs, ``[a, b)`` holds only allowed pairs. Returns tile
    starts ``lo <= s <= e``: tiles in ``[s, e)`` lie inside ``[a, b)``.
    """
    lo = (lo // BLOCK) * BLOCK
    n_tiles = tl.cdiv(hi - lo, BLOCK)
    end = lo + tl.maximum(n_tiles, 0) * BLOCK
    s = lo + tl.cdiv(tl.maximum(a - lo, 0), BLOCK) * BLOCK
    s = tl.minimum(s, end)
    e = s + tl.maximum(b - s, 0) // BLOCK * BLOCK
    return lo, s, e, hi


@triton.jit
def _key_range(m0, L, MF, MW, BLOCK_M: tl.constexpr):
    """Keys a query tile starting at m0 may see ([lo, hi)) and sees in full ([a, b))."""
    f0 = m0 // MF
    f1 = (tl.minimum(m0 + BLOCK_M, L) - 1) // MF
    lo = tl.maximum(f0 - MW + 1, 0) * MF
    hi = tl.minimum((f1 + 1) * MF, L)
    a = tl.maximum(f1 - MW + 1, 0) * MF
    b = tl.minimum((f0 + 1) * MF, L)
    return lo, hi, a, b


@triton.jit
def _query_range(n0, L, MF, MW, BLOCK_N: tl.constexpr):
    """Queries that may see a key tile starting at n0 ([lo, hi)) and see all of it ([a, b))."""
    f0 = n0 // MF
    f1 = (tl.minimum(n0 + BLOCK_N, L) - 1) // MF
    lo = f0 * MF
    hi = tl.minimum((f1 + MW) * MF, L)
    a = f1 * MF
    b = tl.minimum((f0 + MW) * MF, L)
    # A key tile that runs past L holds padded keys: every query tile must be masked.
    b = tl.where(n0 + BLOCK_N > L, a, b)
    return lo, hi, a, b


@triton.jit
def _pair_swap(x, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) along the head dim of a register tile."""
    pairs = tl.reshape(x, (ROWS, BLOCK_D // 2, 2))
    even, odd = tl.split(pairs)
    return tl.reshape(tl.join(-odd, even), (ROWS, BLOCK_D))


@triton.jit
def _rope_tables(tok, offs_d, COS, SIN, AXIS, L, D, F, NPREFIX, GRID_W):
    """cos / sin (rows = tokens, cols = channels) for token indices ``tok``, from index maths."""
    t = tok // F
    j = tok % F
    is_patch = j >= NPREFIX
    p = tl.maximum(j - NPREFIX, 0)
    h = tl.where(is_patch, p // GRID_W, 0)
    w = tl.where(is_patch, p % GRID_W, 0)
    d_ok = offs_d < D
    ax = tl.load(AXIS + offs_d, mask=d_ok, other=3)[None, :]
    pos = tl.where(ax == 0, t[:, None], tl.where(ax == 1, h[:, None], tl.where(ax == 2, w[:, None], 0)))
    ok = (tok < L)[:, None] & d_ok[None, :]
    idx = pos * D + offs_d[None, :]
    cos = tl.load(COS + idx, mask=ok, other=1.0)
    sin = tl.load(SIN + idx, mask=ok, other=0.0)
    return cos, sin


@triton.jit
def _rope(x, tok, offs_d, COS, SIN, AXIS, L, D, F, NPREFIX, GRID_W, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rotate a (ROWS, BLOCK_D) tile of q or k in fp32; returns fp32."""
    cos, sin = _rope_tables(tok, offs_d, COS, SIN, AXIS, L, D, F, NPREFIX, GRID_W)
    x = x.to(tl.float32)
    return x * cos + _pair_swap(x, ROWS, BLOCK_D) * sin


@triton.jit
def _rope_transpose(g, tok, offs_d, COS, SIN, AXIS, L, D, F, NPREFIX, GRID_W, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Gradient through the rotation: R^T g = g*cos - pair_swap(g*sin) (fp32)."""
    cos, sin = _rope_tables(tok, offs_d, COS, SIN, AXIS, L, D, F, NPREFIX, GRID_W)
    return g * cos - _pair_swap(g * sin, ROWS, BLOCK_D)


@triton.jit
def _load_rows(PTR, tok, offs_d, stride_l, L, D, DOT_FP32: tl.constexpr):
    x = tl.load(PTR + tok[:, None] * stride_l + offs_d[None, :], mask=(tok < L)[:, None] & (offs_d < D)[None, :], other=0.0)
    if DOT_FP32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _rope_rotate(
    X, Y, COS, SIN, AXIS,
    stride_xb, stride_xh, stride_xl,
    H, L, D, F, NPREFIX, GRID_W,
    TRANSPOSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Y = R x (q or k before attention) or Y = R^T x (dq, dk after it), in fp32, stored in
    Y's dtype into a contiguous (B, H, L, D) Y. Y may alias a contiguous X: each program
    reads its tile before writing it."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < L)[:, None] & (offs_d < D)[None, :]
    x = tl.load(X + off_b * stride_xb + off_h * stride_xh + offs_m[:, None] * stride_xl + offs_d[None, :], mask=ok,
                other=0.0).to(tl.float32)
    if TRANSPOSE:
        y = _rope_transpose(x, offs_m, offs_d, COS, SIN, AXIS, L, D, F, NPREFIX, GRID_W, BLOCK_M, BLOCK_D)
    else:
        y = _rope(x, offs_m, offs_d, COS, SIN, AXIS, L, D, F, NPREFIX, GRID_W, BLOCK_M, BLOCK_D)
    tl.store(Y + bh.to(tl.int64) * L * D + offs_m[:, None] * D + offs_d[None, :], y.to(Y.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW, qk_scale,
              MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K, offs_n, offs_d, stride_kl, L, D, DOT_FP32)
    v = _load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    s = _dot(q, tl.trans(k), IEEE) * qk_scale
    if MASKED:
        s = tl.where(_allowed(offs_m[:, None], offs_n[None, :], L, MF, MW), s, _NEG)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    H, L, D, MF, MW, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    O += off_b * stride_ob + off_h * stride_oh
    LSE += bh.to(tl.int64) * L

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, offs_m, offs_d, stride_ql, L, D, DOT_FP32)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + _NEG
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo, hi, a, b = _key_range(start_m, L, MF, MW, BLOCK_M)
    lo, s, e, hi = _align_ranges(lo, hi, a, b, BLOCK_N)
    for start_n in range(lo, s, BLOCK_N):
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                  L, D, MF, MW, qk_scale, True, BLOCK_N, BLOCK_D, DOT_FP32, IEEE)
    for start_n in range(s, e, BLOCK_N):
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                  L, D, MF, MW, qk_scale, False, BLOCK_N, BLOCK_D, DOT_FP32, IEEE)
    for start_n in range(e, hi, BLOCK_N):
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                  L, D, MF, MW, qk_scale, True, BLOCK_N, BLOCK_D, DOT_FP32, IEEE)

    acc = acc / l_i[:, None]
    row_ok = offs_m < L
    tl.store(LSE + offs_m, (m_i + tl.math.log2(l_i)) * _LN2, mask=row_ok)
    tl.store(O + offs_m[:, None] * stride_ol + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])


# ----------------------------------------------------------------------------- backward


@triton.jit
def _attn_bwd_preprocess(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_ol,
    stride_db, stride_dh, stride_dl,
    H, L, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < L)[:, None] & (offs_d < D)[None, :]
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + off_b * stride_db + off_h * stride_dh + offs_m[:, None] * stride_dl + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * L + offs_m, delta, mask=offs_m < L)


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d,
               stride_ql, stride_dol, stride_dql, L, D, MF, MW, qk_scale, sm_scale,
               MASKED: tl.constexpr, ATOMIC_DQ: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(Q, offs_m, offs_d, stride_ql, L, D, DOT_FP32)
    do = _load_rows(DO, offs_m, offs_d, stride_dol, L, D, DOT_FP32)
    row_ok = offs_m < L
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * _LOG2E
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    # Work transposed (keys on rows) so dK and dV accumulate without transposing tiles.
    p_t = tl.math.exp2(_dot(k, tl.trans(q), IEEE) * qk_scale - lse2[None, :])
    if MASKED:
        p_t = tl.where(_allowed(offs_m[None, :], offs_n[:, None], L, MF, MW), p_t, 0.0)
    dv += _dot(p_t.to(do.dtype), do, IEEE)
    dp_t = _dot(v, tl.trans(do), IEEE)
    ds_t = p_t * (dp_t - delta[None, :])
    ds_t_lo = ds_t.to(q.dtype)
    dk += _dot(ds_t_lo, q, IEEE)
    if ATOMIC_DQ:
        dq = _dot(tl.trans(ds_t_lo), k, IEEE) * sm_scale
        tl.atomic_add(DQ + offs_m[:, None] * stride_dql + offs_d[None, :], dq,
                      mask=row_ok[:, None] & (offs_d < D)[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, DK, DV, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dkb, stride_dkh, stride_dkl,
    stride_dvb, stride_dvh, stride_dvl,
    stride_dqb, stride_dqh, stride_dql,
    H, L, D, MF, MW, qk_scale, sm_scale,
    ATOMIC_DQ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DK += off_b * stride_dkb + off_h * stride_dkh
    DV += off_b * stride_dvb + off_h * stride_dvh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += bh.to(tl.int64) * L
    DELTA += bh.to(tl.int64) * L

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K, offs_n, offs_d, stride_kl, L, D, DOT_FP32)
    v = _load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    lo, hi, a, b = _query_range(start_n, L, MF, MW, BLOCK_N)
    lo, s, e, hi = _align_ranges(lo, hi, a, b, BLOCK_M)
    for start_m in range(lo, s, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d, stride_ql, stride_dol, stride_dql,
                            L, D, MF, MW, qk_scale, sm_scale, True, ATOMIC_DQ, BLOCK_M, BLOCK_D, DOT_FP32, IEEE)
    for start_m in range(s, e, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d, stride_ql, stride_dol, stride_dql,
                            L, D, MF, MW, qk_scale, sm_scale, False, ATOMIC_DQ, BLOCK_M, BLOCK_D, DOT_FP32, IEEE)
    for start_m in range(e, hi, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d, stride_ql, stride_dol, stride_dql,
                            L, D, MF, MW, qk_scale, sm_scale, True, ATOMIC_DQ, BLOCK_M, BLOCK_D, DOT_FP32, IEEE)

    dk *= sm_scale
    ok = (offs_n < L)[:, None] & (offs_d < D)[None, :]
    tl.store(DK + offs_n[:, None] * stride_dkl + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + offs_n[:, None] * stride_dvl + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW, qk_scale,
             MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K, offs_n, offs_d, stride_kl, L, D, DOT_FP32)
    v = _load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    p = tl.math.exp2(_dot(q, tl.trans(k), IEEE) * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(_allowed(offs_m[:, None], offs_n[None, :], L, MF, MW), p, 0.0)
    dp = _dot(do, tl.trans(v), IEEE)
    ds = p * (dp - delta[:, None])
    dq += _dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dqb, stride_dqh, stride_dql,
    H, L, D, MF, MW, qk_scale, sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += bh.to(tl.int64) * L
    DELTA += bh.to(tl.int64) * L

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < L
    q = _load_rows(Q, offs_m, offs_d, stride_ql, L, D, DOT_FP32)
    do = _load_rows(DO, offs_m, offs_d, stride_dol, L, D, DOT_FP32)
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * _LOG2E
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo, hi, a, b = _key_range(start_m, L, MF, MW, BLOCK_M)
    lo, s, e, hi = _align_ranges(lo, hi, a, b, BLOCK_N)
    for start_n in range(lo, s, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                      L, D, MF, MW, qk_scale, True, BLOCK_N, BLOCK_D, DOT_FP32, IEEE)
    for start_n in range(s, e, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                      L, D, MF, MW, qk_scale, False, BLOCK_N, BLOCK_D, DOT_FP32, IEEE)
    for start_n in range(e, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                      L, D, MF, MW, qk_scale, True, BLOCK_N, BLOCK_D, DOT_FP32, IEEE)

    dq *= sm_scale
    tl.store(DQ + offs_m[:, None] * stride_dql + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])


# ----------------------------------------------------------------------------- block sizes


# (query tile, key tile, warps, stages) per (low-precision?, BLOCK_D). Every entry compiles
# for sm_90 and sm_80 without register spills (STACK 0 in ``cuobjdump -res-usage``); the
# rejected neighbours and their spills are noted. Low precision = fp16 / bf16 (tensor-core
# dots); fp32 uses IEEE dots, which hold operands in registers, hence the small tiles.
_TILES = {
    # forward: 128 query rows while it fits. hd128 at 128x64 spilled on sm_80 (24 B with
    # 3 stages, 224 B with 2) and 64x64 with 4 warps spilled ~300 B on both.
    ("fwd", True, 32): (128, 64, 4, 3),
    ("fwd", True, 64): (128, 64, 4, 3),
    ("fwd", True, 128): (128, 32, 8, 3),
    ("fwd", False, 32): (64, 32, 4, 2),
    ("fwd", False, 64): (32, 32, 4, 1),  # 64x32 spilled 312 B (sm_90)
    ("fwd", False, 128): (16, 32, 8, 1),  # 32x32 spilled 80-664 B
    # dK/dV pass (queries, keys): holds k, v and two fp32 accumulators. hd64 at 64x64 with
    # 8 warps spilled 8 B on sm_80; hd128 with 64 queries spilled 112-168 B.
    ("bwd_kv", True, 32): (64, 64, 8, 2),
    ("bwd_kv", True, 64): (32, 64, 4, 2),
    ("bwd_kv", True, 128): (32, 64, 8, 2),
    ("bwd_kv", False, 32): (32, 32, 4, 2),
    ("bwd_kv", False, 64): (16, 32, 4, 2),  # 32x32 spilled 408-440 B
    ("bwd_kv", False, 128): (16, 32, 8, 2),
    # dK/dV pass with atomic dQ: one more fp32 tile. Every hd128 tiling tried spilled
    # (32x64: 72-96 B, 16x64: 32 B, 64x64: 328 B), so hd128 uses the dQ pass instead.
    ("bwd_kv_atomic", True, 32): (64, 64, 8, 2),
    ("bwd_kv_atomic", True, 64): (64, 64, 8, 2),
    ("bwd_kv_atomic", False, 32): (32, 32, 8, 2),
    ("bwd_kv_atomic", False, 64): (32, 32, 8, 2),
    # dQ pass (queries, keys).
    ("bwd_q", True, 32): (64, 64, 4, 2),
    ("bwd_q", True, 64): (64, 64, 4, 2),
    ("bwd_q", True, 128): (64, 64, 8, 2),
    ("bwd_q", False, 32): (32, 32, 4, 2),
    ("bwd_q", False, 64): (32, 32, 4, 2),
    ("bwd_q", False, 128): (16, 32, 8, 1),  # 32x32 spilled 80 B
}


def block_config(head_dim: int, dtype: torch.dtype, interpret: bool | None = None) -> dict:
    """Tile sizes and launch parameters for a head dim / dtype (a fixed table, no autotune).

    The head dim is padded to the next power of two (BLOCK_D, masked loads), so hd 80 and
    96 use the hd128 entries. Entries were picked from ahead-of-time compiles for sm_90 and
    sm_80 (see ``_TILES``): the largest query tile that compiles without spills, since a
    spill costs more than a smaller tile. Every entry is registered below, so CI's static
    check recompiles all of them. Point-wise kernels (Delta, RoPE) use 64 rows (32 at
    BLOCK_D 128: fp32 rotation at 64 rows spilled). Under the interpreter every tile is 16
    (the tl.dot minimum), so tiny test shapes still cross many tile boundaries.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpret is None:
        interpret = interpreting()
    if interpret:
        t = (16, 16, 4, 1)
        return dict(BLOCK_D=block_d, fwd=t, bwd_kv=t, bwd_kv_atomic=t, bwd_q=t, pointwise=(16, 4))
    if block_d > 128:
        raise ValueError(f"head_dim: the Triton attention kernel takes head dims up to 128, got {head_dim}")
    low = dtype != torch.float32
    cfg = {kind: _TILES.get((kind, low, block_d)) for kind in ("fwd", "bwd_kv", "bwd_kv_atomic", "bwd_q")}
    return dict(BLOCK_D=block_d, pointwise=(64 if block_d <= 64 else 32, 4), **cfg)


def use_atomic_dq(head_dim: int, dtype: torch.dtype, deterministic: bool) -> bool:
    """Accumulate dQ with atomics in the dK/dV pass (fewer matmuls) unless asked to be
    deterministic or the head dim is too wide for it to compile without spills."""
    return not deterministic and block_config(head_dim, dtype)["bwd_kv_atomic"] is not None


# ----------------------------------------------------------------------------- launchers


def _check(name: str, x: torch.Tensor) -> None:
    if x.dtype not in DTYPES:
        raise TypeError(f"{name}: the Triton attention kernel takes float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected (B, heads, L, head_dim), got shape {tuple(x.shape)}")
    if x.stride(-1) != 1:
        raise ValueError(f"{name}: the head dim must have unit stride (call .contiguous()), got strides {x.stride()}")
    if x.device.type == "cpu" and not interpreting():
        raise ValueError(f"{name}: CPU tensor; the Triton kernels need CUDA (or TRITON_INTERPRET=1 before import)")


def rope_rotate(x: torch.Tensor, frame_len: int, rope_tables, *, transpose: bool = False,
                out: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """R x (or R^T x with ``transpose``) by the tokens' 3D positions, into a contiguous
    tensor of ``out_dtype`` (default x's dtype); ``out`` may be x itself when x is contiguous.

    ``rope_tables`` = (cos, sin, axis, n_prefix, grid_w): cos/sin fp32 (n_positions, D)
    contiguous, axis int32 (D,) in {0=t, 1=h, 2=w, 3=none}.
    """
    if x.dtype not in DTYPES or x.dim() != 4 or x.stride(-1) != 1:
        raise ValueError(f"x: expected a (B, H, L, D) float tensor with unit head-dim stride, got {x.dtype} "
                         f"{tuple(x.shape)} strides {x.stride()}")
    B, H, L, D = x.shape
    cos, sin, axis, n_prefix, grid_w = rope_tables
    if out is None:
        out = torch.empty((B, H, L, D), device=x.device, dtype=out_dtype or x.dtype)
    elif not out.is_contiguous() or out.shape != x.shape:
        raise ValueError(f"out: expected a contiguous tensor of shape {tuple(x.shape)}")
    BM, warps = block_config(D, x.dtype)["pointwise"]
    _rope_rotate[(triton.cdiv(L, BM), B * H)](
        x, out, cos, sin, axis, x.stride(0), x.stride(1), x.stride(2),
        H, L, D, frame_len, int(n_prefix), int(grid_w),
        TRANSPOSE=transpose, BLOCK_M=BM, BLOCK_D=max(16, triton.next_power_of_2(D)), num_warps=warps,
    )
    return out


def mask_frames(seq_len: int, frame_len: int, mask: str, window_frames: int | None = None) -> tuple[int, int]:
    """Every mask as frame-causal attention over "mask frames": (mask_frame_len, window).

    frame(k) <= frame(q) < frame(k) + window, frames of mask_frame_len tokens:
    full = one frame of L tokens; causal = frames of one token, no window; frame_local =
    window 1; frame_causal = the video's frames with its window (none = all frames). One
    predicate and one tile-range rule then serve every mask, with no per-mask compile.
    """
    if mask not in MASKS:
        raise ValueError(f"mask: expected one of {MASKS}, got {mask!r}")
    if mask == "full":
        return max(seq_len, 1), 1
    if mask == "causal":
        return 1, seq_len + 1
    if mask == "frame_local":
        return frame_len, 1
    n_frames = max(1, seq_len // frame_len)
    return frame_len, (n_frames + 1 if window_frames is None else int(window_frames))


def _dot_fp32(dtype: torch.dtype) -> bool:
    # The interpreter multiplies raw bf16 bit patterns in tl.dot: upcast there only.
    return interpreting() and dtype == torch.bfloat16


def attention_forward(q, k, v, *, frame_len: int, mask: str, scale: float, window_frames=None, rope_tables=None,
                      out: torch.Tensor | None = None, lse: torch.Tensor | None = None):
    """Launch the forward. Returns (out (B,H,L,D) in q's dtype, lse (B,H,L) fp32, natural log).

    ``rope_tables``: None, or the tables of :func:`rope_rotate`; q and k are then rotated
    once by the rotation kernel before the attention kernel (see the module docstring).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(name, x)
    B, H, L, D = q.shape
    cfg = block_config(D, q.dtype)
    BM, BN, warps, stages = cfg["fwd"]
    mask_frame, window = mask_frames(L, frame_len, mask, window_frames)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if lse is None:
        lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    if rope_tables is not None:
        q = rope_rotate(q, frame_len, rope_tables)
        k = rope_rotate(k, frame_len, rope_tables)
    _attn_fwd[(triton.cdiv(L, BM), B * H)](
        q, k, v, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, L, D, mask_frame, window, scale * _LOG2E_F,
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=cfg["BLOCK_D"], DOT_FP32=_dot_fp32(q.dtype), IEEE=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages,
    )
    return out, lse


def attention_backward(do, q, k, v, out, lse, *, frame_len: int, mask: str, scale: float, window_frames=None,
                       rope_tables=None, deterministic: bool = False, dlse: torch.Tensor | None = None,
                       grads: tuple | None = None):
    """Launch the backward. Returns (dq, dk, dv) in q's dtype, contiguous (B, H, L, D).

    ``deterministic=True`` computes dQ in its own pass (no atomics: bit-identical across
    runs); otherwise dQ may be accumulated with fp32 atomics inside the dK/dV pass
    (:func:`use_atomic_dq`). ``dlse`` (B, H, L), the gradient of the lse output, if any:
    since d lse_i / d s_ij = p_ij it enters as dS = P * (dP - (Delta - dlse)). ``grads``:
    optional preallocated contiguous (dq, dk, dv) (tests poison them to prove every element
    is written). With RoPE, q and k are rotated again (cheaper than keeping copies) and the
    transposed rotation is applied to dQ and dK in place.
    """
    for name, x in (("do", do), ("q", q), ("k", k), ("v", v), ("out", out)):
        _check(name, x)
    B, H, L, D = q.shape
    cfg = block_config(D, q.dtype)
    BD = cfg["BLOCK_D"]
    mask_frame, window = mask_frames(L, frame_len, mask, window_frames)
    dot_fp32 = _dot_fp32(q.dtype)
    ieee = q.dtype == torch.float32
    lse = lse.contiguous()
    if grads is None:
        grads = tuple(torch.empty((B, H, L, D), device=q.device, dtype=q.dtype) for _ in range(3))
    dq, dk, dv = grads
    for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
        if g.shape != q.shape or g.dtype != q.dtype or not g.is_contiguous():
            raise ValueError(f"grads: {name} must be a contiguous {tuple(q.shape)} {q.dtype} tensor")
    if rope_tables is not None:
        q = rope_rotate(q, frame_len, rope_tables)
        k = rope_rotate(k, frame_len, rope_tables)

    delta = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    PM, pw = cfg["pointwise"]
    _attn_bwd_preprocess[(triton.cdiv(L, PM), B * H)](
        out, do, delta,
        out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, L, D, BLOCK_M=PM, BLOCK_D=BD, num_warps=pw,
    )
    if dlse is not None:
        delta = delta - dlse.to(torch.float32)
    atomic = use_atomic_dq(D, q.dtype, deterministic)
    dq_acc = torch.zeros((B, H, L, D), device=q.device, dtype=torch.float32) if atomic else dq

    BM, BN, warps, stages = cfg["bwd_kv_atomic" if atomic else "bwd_kv"]
    _attn_bwd_dkdv[(triton.cdiv(L, BN), B * H)](
        q, k, v, do, dk, dv, dq_acc, lse, delta,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        dq_acc.stride(0), dq_acc.stride(1), dq_acc.stride(2),
        H, L, D, mask_frame, window, scale * _LOG2E_F, scale,
        ATOMIC_DQ=atomic, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
        DOT_FP32=dot_fp32, IEEE=ieee, num_warps=warps, num_stages=stages,
    )
    if not atomic:
        BM, BN, warps, stages = cfg["bwd_q"]
        _attn_bwd_dq[(triton.cdiv(L, BM), B * H)](
            q, k, v, do, dq, lse, delta,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            do.stride(0), do.stride(1), do.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2),
            H, L, D, mask_frame, window, scale * _LOG2E_F, scale,
            BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
            DOT_FP32=dot_fp32, IEEE=ieee, num_warps=warps, num_stages=stages,
        )
    if rope_tables is not None:
        # The atomic accumulator is fp32: the transposed rotation also casts it into dq.
        rope_rotate(dq_acc, frame_len, rope_tables, transpose=True, out=dq)
        rope_rotate(dk, frame_len, rope_tables, transpose=True, out=dk)
    elif atomic:
        dq.copy_(dq_acc)
    return dq, dk, dv


# ----------------------------------------------------------------------------- registry

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_REF_B, _REF_H, _REF_L, _REF_F = 4, 16, 2048, 256  # V-JEPA-like: 8 frames of 256 tokens


def _signature(fn, pointers: dict, constexprs: dict, floats=("qk_scale", "sm_scale")) -> dict:
    """Triton types of every non-constexpr argument: pointers as given, floats, the rest i32."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            continue
        sig[name] = pointers.get(name) or ("fp32" if name in floats else "i32")
    return sig


def _register_configs() -> None:
    """Register every configuration the launchers above can pick on a GPU (see block_config).

    FLOPs / bytes refer to the frame-causal reference shape B=4, H=16, L=2048 (8 x 256),
    counting only the unmasked fraction (36/64 of the L^2 pairs), backward = 2.5 x forward.
    """
    frac = (_REF_L // _REF_F + 1) / (2 * (_REF_L // _REF_F))
    tables = {"COS": "*fp32", "SIN": "*fp32", "AXIS": "*i32"}
    for dtype, tname in _TRITON_DTYPE.items():
        el = torch.finfo(dtype).bits // 8
        for head_dim in (32, 64, 128):
            cfg = block_config(head_dim, dtype, interpret=False)
            BD = cfg["BLOCK_D"]
            tag = f"hd{BD},{tname}"
            ref = f"B={_REF_B},H={_REF_H},L={_REF_L},D={head_dim},frame_len={_REF_F},frame_causal"
            fwd_flops = 4.0 * _REF_B * _REF_H * _REF_L * _REF_L * head_dim * frac
            tb = float(_REF_B * _REF_H * _REF_L * head_dim * el)  # one (B, H, L, D) tensor
            rb = float(_REF_B * _REF_H * _REF_L * 4)  # one fp32 (B, H, L) row vector
            common = dict(DOT_FP32=False, IEEE=dtype == torch.float32, BLOCK_D=BD)

            def ptr(names, t=tname):
                return {n: f"*{t}" for n in names}

            BM, BN, w, st = cfg["fwd"]
            ce = dict(common, BLOCK_M=BM, BLOCK_N=BN)
            register(KernelConfig(
                f"attn_fwd[{tag},M{BM},N{BN}]", _attn_fwd,
                _signature(_attn_fwd, {**ptr("QKVO"), "LSE": "*fp32"}, ce), ce, w, st,
                expects_mma=True, ref_shape=ref, flops=fwd_flops, min_bytes=4 * tb + rb))
            for atomic in (False, True):
                spec = cfg["bwd_kv_atomic" if atomic else "bwd_kv"]
                if spec is None:
                    continue
                BM, BN, w, st = spec
                ce = dict(common, ATOMIC_DQ=atomic, BLOCK_M=BM, BLOCK_N=BN)
                register(KernelConfig(
                    f"attn_bwd_dkdv[{tag}{',atomic_dq' if atomic else ''},M{BM},N{BN}]", _attn_bwd_dkdv,
                    _signature(_attn_bwd_dkdv, {**ptr(["Q", "K", "V", "DO", "DK", "DV"]),
                                                "DQ": "*fp32" if atomic else f"*{tname}",
                                                "LSE": "*fp32", "DELTA": "*fp32"}, ce), ce, w, st,
                    expects_mma=True, ref_shape=ref,
                    # 4 of the 5 backward matmuls (the dQ one too when atomic): 2.0 / 2.5 x forward.
                    flops=fwd_flops * (2.5 if atomic else 2.0),
                    min_bytes=(6 * tb + (tb * 4 / el if atomic else 0)) + 2 * rb))
            BM, BN, w, st = cfg["bwd_q"]
            ce = dict(common, BLOCK_M=BM, BLOCK_N=BN)
            register(KernelConfig(
                f"attn_bwd_dq[{tag},M{BM},N{BN}]", _attn_bwd_dq,
                _signature(_attn_bwd_dq, {**ptr(["Q", "K", "V", "DO", "DQ"]), "LSE": "*fp32", "DELTA": "*fp32"}, ce),
                ce, w, st, expects_mma=True, ref_shape=ref, flops=fwd_flops * 1.5, min_bytes=5 * tb + 2 * rb))
            PM, pw = cfg["pointwise"]
            ce = dict(BLOCK_M=PM, BLOCK_D=BD)
            register(KernelConfig(
                f"attn_bwd_preprocess[{tag}]", _attn_bwd_preprocess,
                _signature(_attn_bwd_preprocess, {**ptr(["O", "DO"]), "DELTA": "*fp32"}, ce), ce, pw, 1,
                ref_shape=ref, min_bytes=2 * tb + rb))
            rope_variants = [("rotate", False, tname), ("transpose", True, tname)]
            if cfg["bwd_kv_atomic"] is not None:
                rope_variants.append(("transpose_from_fp32", True, "fp32"))
            for label, transpose, src in rope_variants:
                ce = dict(TRANSPOSE=transpose, BLOCK_M=PM, BLOCK_D=BD)
                register(KernelConfig(
                    f"attn_rope_{label}[{tag}]", _rope_rotate,
                    _signature(_rope_rotate, {"X": f"*{src}", "Y": f"*{tname}", **tables}, ce), ce, pw, 1,
                    ref_shape=ref, min_bytes=tb * (1 + (4 / el if src == "fp32" else 1))))


_register_configs()
