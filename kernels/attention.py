"""Fused spatio-temporal attention: Triton forward and backward with index-computed masks.

Layout: q, k, v, o are (B, H, L, D) with a unit stride on the head dim (any strides for B,
H, L, so views of a packed qkv projection need no copy). The mask is a predicate of the
query and key token indices (the same one as ``fastlam.ops.attention.mask_allows``). All
four masks are one rule, frame-causal with a window over "mask frames" (:func:`mask_frames`):

    full          one frame of L tokens        every key
    causal        frames of 1 token, no window k <= q
    frame_causal  the video's frames, window   frame(q) - window < frame(k) <= frame(q)
    frame_local   the video's frames, window 1 frame(k) == frame(q)

Two temporal masks (constexpr TEMPORAL, Genie / UniVLA temporal attention on the flattened
layout): ``temporal_causal`` (the key at the query's spatial position in frames <= t, with
the window) and ``temporal`` (same position, every frame): q - k = j * frame_len. Only a
1/frame_len fraction of the pairs is allowed, so no tile is ever full: for a query tile the
kernels visit, per frame shift j, the few key tiles covering [m0 - j*F, m1 - j*F) and skip
the rest (the dK/dV pass likewise over query tiles). Key padding (constexpr KEY_PAD): keys
at or past ``key_lengths[b]`` (an int32 (B,) tensor) are masked, tile ranges are clipped
to them, and a row left with no key at all gets output 0 and lse -inf.

For each query tile the kernel derives, from the tile's first and last index, the range of
key tiles that may contain an allowed pair ``[lo, hi)`` and the sub-range whose every pair
is allowed; it runs three loops: masked tiles below, unmasked tiles (no mask arithmetic),
masked tiles above. Key tiles outside ``[lo, hi)`` are never loaded. With frame lengths
like 258 that do not divide the tile size, only the tiles that straddle a frame boundary
pay for the mask. The backward dK/dV pass does the same over query tiles for each key tile.

3D RoPE (V-JEPA 2 layout): the token's (t, h, w) position is derived from its index, the
frame length, the number of per-frame prefix tokens and the grid width; per channel the
launcher passes the axis (0=t, 1=h, 2=w, 3=none) and cos/sin tables indexed by (integer
position along that axis, channel). The tables are ``cos((i * scale_axis) * f_c)`` built in
fp32 by the same torch ops as the reference, so the angles are bit-identical to
``fastlam.ops.rope`` and no per-element sin/cos is evaluated. Rotation is
``x*cos + pair_swap(x)*sin``, its transpose ``g*cos - pair_swap(g*sin)``, where
``pair_swap(y)[c] = sign(c) * y[c ^ 1]``. The partner channel ``c ^ 1`` is read by a second
load of the same rows (an L1/L2 hit), so everything is element-wise: an earlier in-register
swap (reshape / split / join) forced layout conversions through shared memory and made the
sm_90 builds spill.

Two fusions (``rope_fusion``): ``"kernel"`` (default) rotates inside the attention kernels
(constexpr ROPE): the forward rotates its resident q tile once and each streamed k tile as it
is loaded; the dK/dV pass its resident k tile and each streamed q tile; the dQ pass its
resident q tile and each streamed k tile. The rotated tile is rounded to the input dtype
before the matmul, which is what the pre-pass stores, so both fusions feed the same operands.
``"prepass"`` rotates q and k once by the point-wise ``_rope_rotate`` into new tensors. In
both, dQ and dK leave the kernels in the rotated basis and one point-wise pass applies R^T in
place (O(L*D); the atomic dQ path accumulates rotated-basis dQ in fp32 and that pass casts
it). R^T in the epilogue would need the partner channel of an accumulator that lives in
registers of other threads: a store, a CTA barrier and a re-load, i.e. the same memory
traffic as the post-pass but inside the most register-bound part of the kernel.
The extra tiles of the fused rotation (x, partner, cos, sin and their 64-bit addresses) cost
registers: with the plain tiles, 20 of the 33 ROPE=True configurations spilled on sm_90 or
sm_80 (STACK 8-496 B; e.g. bf16 hd64 forward 128x64: 32 / 168 B), so ``_ROPE_TILES`` holds
other tiles for those, mostly 8 warps instead of 4 or a halved key tile (bf16 hd64 forward
128x32 with 8 warps: 208 / 244 registers, no spill); every default is spill-free (REG and
STACK per config: benchmarks/results/static). The point-wise rotation kernel with 4 warps
still spills at 64 rows x BLOCK_D 128 (STACK 168-432 B), with 8 warps it does not (104-158
registers). Which fusion is faster is for ``benchmarks/bench_attention.py`` to measure
(``fastlam_triton_rope_kernel`` vs ``fastlam_triton_rope_prepass``): no GPU has run it yet.

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

from . import tile_tables
from ._common import triton_release
from .registry import KernelConfig, register

MASKS = ("full", "causal", "frame_causal", "frame_local", "temporal_causal", "temporal")
# TEMPORAL constexpr per mask: 0 = the frame rule below, 1 = same spatial position in frames
# <= t (Genie / UniVLA temporal attention on the flattened layout), 2 = same position, all frames.
TEMPORAL_MODE = {"temporal_causal": 1, "temporal": 2}
HEAD_DIMS = (32, 64, 80, 96, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": a row masked in one tile never gives inf - inf
_LOG2E_F = 1.4426950408889634
_LOG2E = tl.constexpr(_LOG2E_F)
_LN2 = tl.constexpr(0.6931471805599453)


# The RoPE layout integers (frame length, prefix tokens, grid width) only enter index maths:
# never specialized on their value or divisibility, so 256 and 258-token frames (and the
# unused placeholders of ROPE=False launches) run the one binary the static check compiled.
_ROPE_INTS = ["F", "NPREFIX", "GRID_W"]


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
def _allowed(q_idx, k_idx, L, KL, MF, MW, TEMPORAL: tl.constexpr):
    """Mask predicate on broadcast index tiles; out-of-range keys and queries are never allowed.

    TEMPORAL 0: every mask is frame-causal with a window over "mask frames" of MF tokens:
    frame(k) <= frame(q) < frame(k) + MW (see :func:`mask_frames`). TEMPORAL 1 / 2 (MF = the
    video's frame length): the key is at the query's spatial position, q - k = j * MF, with
    0 <= j < MW (1) or any j (2). KL: keys at or past KL are padding (KL = L without it).
    """
    if TEMPORAL == 0:
        fq = q_idx // MF
        fk = k_idx // MF
        ok = (k_idx < KL) & (q_idx < L) & (fk <= fq) & (fq - fk < MW)
    else:
        d = q_idx - k_idx
        ok = (k_idx < KL) & (q_idx < L) & (d % MF == 0)
        if TEMPORAL == 1:
            ok = ok & (d >= 0) & (d < MW * MF)
    return ok


@triton.jit
def _temporal_key_shifts(m0, L, MF, MW, BLOCK_M: tl.constexpr, TEMPORAL: tl.constexpr):
    """Temporal masks, query tile at m0: keys are q - j*MF; returns (j_hi, number of shifts),
    j runs j_hi, j_hi - 1, ... so the key intervals [m0 - j*MF, m1 - j*MF) ascend."""
    m1 = tl.minimum(m0 + BLOCK_M, L)
    j_hi = (m1 - 1) // MF
    if TEMPORAL == 1:
        j_hi = tl.minimum(j_hi, MW - 1)
        n = j_hi + 1
    else:
        n = j_hi + (L - 1 - m0) // MF + 1
    return j_hi, n


@triton.jit
def _temporal_query_shifts(n0, n1, L, MF, MW, TEMPORAL: tl.constexpr):
    """Temporal masks, key tile [n0, n1): queries are k + j*MF; returns (j_lo, number of
    shifts), j runs j_lo, j_lo + 1, ... so the query intervals ascend. n1 <= n0: none."""
    j_top = (L - 1 - n0) // MF
    if TEMPORAL == 1:
        j_lo = n0 * 0
        j_top = tl.minimum(j_top, MW - 1)
    else:
        j_lo = -((tl.maximum(n1, 1) - 1) // MF)
    return j_lo, tl.where(n1 > n0, j_top - j_lo + 1, 0)


@triton.jit
def _shifted_run(a0, a1, off, lim, done, BLOCK: tl.constexpr):
    """Tiles [r0, r1) (step BLOCK) covering the shifted interval [a0 + off, a1 + off) clipped
    to [0, lim), starting at or after ``done`` (tiles an earlier shift already ran); returns
    them and the new ``done``. Shifts come in ascending order, so no tile runs twice."""
    r1 = tl.minimum(a1 + off, lim)
    r0 = tl.maximum(tl.maximum(a0 + off, 0) // BLOCK * BLOCK, done)
    return r0, r1, tl.maximum(done, r0 + tl.cdiv(tl.maximum(r1 - r0, 0), BLOCK) * BLOCK)


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
def _rope_positions(tok, offs_d, AXIS, D, F, NPREFIX, GRID_W):
    """Integer position (rows = tokens, cols = channels) along each channel's axis, from the
    token index: frame t = tok // F; inside a frame, NPREFIX prefix tokens (h = w = 0), then
    the patch grid row-major with GRID_W columns. Unrotated channels (axis 3) get 0."""
    t = tok // F
    j = tok % F
    is_patch = j >= NPREFIX
    p = tl.maximum(j - NPREFIX, 0)
    h = tl.where(is_patch, p // GRID_W, 0)
    w = tl.where(is_patch, p % GRID_W, 0)
    ax = tl.load(AXIS + offs_d, mask=offs_d < D, other=3)[None, :]
    return tl.where(ax == 0, t[:, None], tl.where(ax == 1, h[:, None], tl.where(ax == 2, w[:, None], 0)))


@triton.jit
def _rope_load(PTR, tok, offs_d, stride_l, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, TRANSPOSE: tl.constexpr):
    """Rows ``tok`` of a (L, D) tile read from memory and rotated, fp32.

    R x = x*cos + pair_swap(x)*sin and R^T x = x*cos - pair_swap(x*sin), where
    pair_swap(y)[c] = sign(c) * y[c ^ 1] (sign -1 on even channels). The partner channel
    is read by a second load of the same rows at column ``c ^ 1`` (an L1/L2 hit) instead of
    a register shuffle: the reshape/split/join swap made the tile's layout conversions
    spill registers on sm_90, the second load is element-wise. The partner of a rotated
    channel lies in the same chunk (chunks have an even width), hence has the same axis and
    position; unrotated channels have sin = 0 at every position.
    """
    pos = _rope_positions(tok, offs_d, AXIS, D, F, NPREFIX, GRID_W)
    partner = offs_d ^ 1
    row_ok = (tok < L)[:, None]
    ok = row_ok & (offs_d < D)[None, :]
    ok_p = row_ok & (partner < D)[None, :]
    rows = PTR + tok[:, None] * stride_l
    x = tl.load(rows + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    x_p = tl.load(rows + partner[None, :], mask=ok_p, other=0.0).to(tl.float32)
    sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)[None, :]
    cos = tl.load(COS + pos * D + offs_d[None, :], mask=ok, other=1.0)
    if TRANSPOSE:
        sin_p = tl.load(SIN + pos * D + partner[None, :], mask=ok_p, other=0.0)
        return x * cos - sign * (x_p * sin_p)
    else:
        sin = tl.load(SIN + pos * D + offs_d[None, :], mask=ok, other=0.0)
        return x * cos + sign * (x_p * sin)


@triton.jit
def _load_rows(PTR, tok, offs_d, stride_l, L, D, DOT_FP32: tl.constexpr):
    x = tl.load(PTR + tok[:, None] * stride_l + offs_d[None, :], mask=(tok < L)[:, None] & (offs_d < D)[None, :], other=0.0)
    if DOT_FP32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_qk(PTR, tok, offs_d, stride_l, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W,
             ROPE: tl.constexpr, DOT_FP32: tl.constexpr):
    """A q or k tile as a dot operand, rotated when ROPE. The rotation runs in fp32 and is
    rounded to the input dtype, exactly what the rotation pre-pass stores, so both fusions
    feed the matmuls the same operands."""
    if ROPE:
        x = _rope_load(PTR, tok, offs_d, stride_l, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, False)
        x = x.to(PTR.dtype.element_ty)
        if DOT_FP32:
            x = x.to(tl.float32)
    else:
        x = _load_rows(PTR, tok, offs_d, stride_l, L, D, DOT_FP32)
    return x


@triton.jit(do_not_specialize=_ROPE_INTS)
def _rope_rotate(
    X, Y, COS, SIN, AXIS,
    stride_xb, stride_xh, stride_xl,
    H, L, D, F, NPREFIX, GRID_W,
    TRANSPOSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Y = R x (q or k before attention) or Y = R^T x (dq, dk after it), in fp32, stored in
    Y's dtype into a contiguous (B, H, L, D) Y. Y may alias a contiguous X: a program owns
    whole rows (BLOCK_D >= D) and reads them (both loads) before a barrier, then writes."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < L)[:, None] & (offs_d < D)[None, :]
    y = _rope_load(X + off_b * stride_xb + off_h * stride_xh, offs_m, offs_d, stride_xl, L, D, COS, SIN, AXIS,
                   F, NPREFIX, GRID_W, TRANSPOSE)
    # In place, another warp of this program may still have to read (as a partner) an
    # element this warp is about to overwrite.
    tl.debug_barrier()
    tl.store(Y + bh.to(tl.int64) * L * D + offs_m[:, None] * D + offs_d[None, :], y.to(Y.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW, qk_scale,
              COS, SIN, AXIS, F, NPREFIX, GRID_W,
              MASKED: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
              KL=None, TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    v = _load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    s = _dot(q, tl.trans(k), IEEE) * qk_scale
    if MASKED:
        ok = _allowed(offs_m[:, None], offs_n[None, :], L, KL, MF, MW, TEMPORAL)
        s = tl.where(ok, s, _NEG)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    if MASKED and KEY_PAD:
        # With padding a row may have no key at all (so far): exp2(_NEG - _NEG) = 1 must not count.
        p = tl.where(ok, p, 0.0)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=_ROPE_INTS)
def _attn_fwd(
    Q, K, V, O, LSE, COS, SIN, AXIS,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    H, L, D, MF, MW, qk_scale, F, NPREFIX, GRID_W, KLEN,
    ROPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
    TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False,
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
    q = _load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + _NEG
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    KL = L
    if KEY_PAD:
        KL = tl.minimum(tl.load(KLEN + off_b), L)
    if TEMPORAL == 0:
        lo, hi, a, b = _key_range(start_m, L, MF, MW, BLOCK_M)
        if KEY_PAD:
            hi = tl.minimum(hi, KL)
            b = tl.minimum(b, KL)
        lo, s, e, hi = _align_ranges(lo, hi, a, b, BLOCK_N)
        for start_n in range(lo, s, BLOCK_N):
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                      L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                      True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL, KEY_PAD)
        for start_n in range(s, e, BLOCK_N):
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                      L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                      False, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL, KEY_PAD)
        for start_n in range(e, hi, BLOCK_N):
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                      L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                      True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL, KEY_PAD)
    else:
        # Only the key tiles holding q - j*MF for some query of the tile: one short run of
        # tiles per shift j, in ascending order; `done` skips a tile two shifts share.
        m1 = tl.minimum(start_m + BLOCK_M, L)
        j_hi, n_j = _temporal_key_shifts(start_m, L, MF, MW, BLOCK_M, TEMPORAL)
        done = start_m * 0
        for t in range(0, n_j):
            k0, k1, done = _shifted_run(start_m, m1, -(j_hi - t) * MF, KL, done, BLOCK_N)
            for start_n in range(k0, k1, BLOCK_N):
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                          L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                          True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL, KEY_PAD)

    row_ok = offs_m < L
    if KEY_PAD:
        # A row with no visible key: output 0, lse -inf (the reference's convention).
        empty = l_i == 0.0
        acc = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse_row = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * _LN2)
    else:
        acc = acc / l_i[:, None]
        lse_row = (m_i + tl.math.log2(l_i)) * _LN2
    tl.store(LSE + offs_m, lse_row, mask=row_ok)
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
               COS, SIN, AXIS, F, NPREFIX, GRID_W,
               MASKED: tl.constexpr, ATOMIC_DQ: tl.constexpr, ROPE: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
               KL=None, TEMPORAL: tl.constexpr = 0):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    do = _load_rows(DO, offs_m, offs_d, stride_dol, L, D, DOT_FP32)
    row_ok = offs_m < L
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * _LOG2E
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    # Work transposed (keys on rows) so dK and dV accumulate without transposing tiles.
    p_t = tl.math.exp2(_dot(k, tl.trans(q), IEEE) * qk_scale - lse2[None, :])
    if MASKED:
        p_t = tl.where(_allowed(offs_m[None, :], offs_n[:, None], L, KL, MF, MW, TEMPORAL), p_t, 0.0)
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


@triton.jit(do_not_specialize=_ROPE_INTS)
def _attn_bwd_dkdv(
    Q, K, V, DO, DK, DV, DQ, LSE, DELTA, COS, SIN, AXIS,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dkb, stride_dkh, stride_dkl,
    stride_dvb, stride_dvh, stride_dvl,
    stride_dqb, stride_dqh, stride_dql,
    H, L, D, MF, MW, qk_scale, sm_scale, F, NPREFIX, GRID_W, KLEN,
    ATOMIC_DQ: tl.constexpr, ROPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
    TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False,
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
    k = _load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    v = _load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    KL = L
    if KEY_PAD:
        KL = tl.minimum(tl.load(KLEN + off_b), L)
    if TEMPORAL == 0:
        lo, hi, a, b = _query_range(start_n, L, MF, MW, BLOCK_N)
        if KEY_PAD:
            # A key tile reaching into the padding masks every query tile; one wholly in it has none.
            b = tl.where(start_n + BLOCK_N > KL, a, b)
            hi = tl.where(start_n >= KL, lo, hi)
        lo, s, e, hi = _align_ranges(lo, hi, a, b, BLOCK_M)
        for start_m in range(lo, s, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d, stride_ql, stride_dol,
                                stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                True, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)
        for start_m in range(s, e, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d, stride_ql, stride_dol,
                                stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                False, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)
        for start_m in range(e, hi, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d, stride_ql, stride_dol,
                                stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                True, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)
    else:
        # Only the query tiles holding k + j*MF for some key of the tile (see the forward).
        n1 = tl.minimum(start_n + BLOCK_N, KL)
        j_lo, n_j = _temporal_query_shifts(start_n, n1, L, MF, MW, TEMPORAL)
        done = start_n * 0
        for t in range(0, n_j):
            q0, q1, done = _shifted_run(start_n, n1, (j_lo + t) * MF, L, done, BLOCK_M)
            for start_m in range(q0, q1, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, start_m, offs_n, offs_d, stride_ql,
                                    stride_dol, stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F,
                                    NPREFIX, GRID_W, True, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, KL,
                                    TEMPORAL)

    dk *= sm_scale
    ok = (offs_n < L)[:, None] & (offs_d < D)[None, :]
    tl.store(DK + offs_n[:, None] * stride_dkl + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + offs_n[:, None] * stride_dvl + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW, qk_scale,
             COS, SIN, AXIS, F, NPREFIX, GRID_W,
             MASKED: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
             KL=None, TEMPORAL: tl.constexpr = 0):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    v = _load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    p = tl.math.exp2(_dot(q, tl.trans(k), IEEE) * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(_allowed(offs_m[:, None], offs_n[None, :], L, KL, MF, MW, TEMPORAL), p, 0.0)
    dp = _dot(do, tl.trans(v), IEEE)
    ds = p * (dp - delta[:, None])
    dq += _dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit(do_not_specialize=_ROPE_INTS)
def _attn_bwd_dq(
    Q, K, V, DO, DQ, LSE, DELTA, COS, SIN, AXIS,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dqb, stride_dqh, stride_dql,
    H, L, D, MF, MW, qk_scale, sm_scale, F, NPREFIX, GRID_W, KLEN,
    ROPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
    TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False,
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
    q = _load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    do = _load_rows(DO, offs_m, offs_d, stride_dol, L, D, DOT_FP32)
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * _LOG2E
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    KL = L
    if KEY_PAD:
        KL = tl.minimum(tl.load(KLEN + off_b), L)
    if TEMPORAL == 0:
        lo, hi, a, b = _key_range(start_m, L, MF, MW, BLOCK_M)
        if KEY_PAD:
            hi = tl.minimum(hi, KL)
            b = tl.minimum(b, KL)
        lo, s, e, hi = _align_ranges(lo, hi, a, b, BLOCK_N)
        for start_n in range(lo, s, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                          L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                          True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)
        for start_n in range(s, e, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                          L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                          False, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)
        for start_n in range(e, hi, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                          L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                          True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)
    else:
        m1 = tl.minimum(start_m + BLOCK_M, L)
        j_hi, n_j = _temporal_key_shifts(start_m, L, MF, MW, BLOCK_M, TEMPORAL)
        done = start_m * 0
        for t in range(0, n_j):
            k0, k1, done = _shifted_run(start_m, m1, -(j_hi - t) * MF, KL, done, BLOCK_N)
            for start_n in range(k0, k1, BLOCK_N):
                dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                              L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                              True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)

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


# With the rotation fused (ROPE=True), the kernels also hold the cos / sin / partner tiles of
# the operand being rotated. Entries here replace the _TILES entry for those launches, only
# where the _TILES tile spilled with ROPE=True (see the module docstring for the figures).
# STACK figures are sm_90 / sm_80 with ROPE=True (triton 3.7, benchmarks.static_check).
_ROPE_TILES: dict = {
    ("fwd", True, 32): (128, 64, 8, 3),  # 4 warps spilled 8 B on sm_90
    ("fwd", True, 64): (128, 32, 8, 3),  # 128x64/4w: 32-40 / 168 B; 128x64/8w: 8 B; 64x64/4w: 48 / 32 B
    ("fwd", False, 32): (64, 32, 8, 2),  # 4 warps: 24 / 8 B
    ("fwd", False, 64): (32, 16, 4, 1),  # 32x32: 0 / 8 B with 4 or 8 warps
    ("fwd", False, 128): (16, 16, 8, 1),  # 16x32/8w: 0 / 8 B; 4 warps: 192-264 B
    ("bwd_kv", True, 64): (32, 64, 8, 2),  # 4 warps: 0 / 8 B
    ("bwd_kv", True, 128): (32, 32, 8, 2),  # 32x64: 40-48 B; 16x64: 16-32 B
    ("bwd_kv", False, 32): (32, 32, 8, 2),  # 4 warps: 8-24 B
    ("bwd_kv", False, 128): (16, 16, 8, 1),  # 16x32: 456 B; 16x16/4w: 296-360 B
    ("bwd_kv_atomic", True, 64): (32, 64, 8, 2),  # 64x64: 0 / 216 B
    ("bwd_kv_atomic", False, 32): (32, 32, 8, 1),  # 2 stages: 8 / 0 B
    ("bwd_kv_atomic", False, 64): (32, 16, 8, 2),  # 32x32: 136 / 0 B; 16x32: 8 / 0 B
    ("bwd_q", True, 64): (64, 32, 4, 2),  # 64x64/4w: 0 / 48 B; 8 warps: 0 / 8 B
    ("bwd_q", False, 64): (32, 16, 4, 2),  # 32x32: 488-496 B; 16x32: 32 B
}

# Register allocation differs between triton releases: a tile spill-free under one can spill
# under another (triton 3.9 spilled 14 default builds that 3.7 did not). Entries here replace
# the _TILES / _ROPE_TILES entry, keyed (kind, low precision, BLOCK_D, fused RoPE), for the
# triton releases from the key's major.minor up to the next key (an empty table ends a range).
# STACK figures: sm_90 / sm_80 under that release (benchmarks.static_check; every release's
# report: benchmarks/results/static/versions.md, made by scripts/static_check_versions.sh).
_TRITON_TILES: dict = {
    # 3.6: the GPU image's release (13 default builds spilled 8-296 B that 3.7 compiles clean).
    "3.6": {
        ("fwd", True, 128, True): (128, 32, 8, 2),  # 3 stages: 8 / 0 B
        ("bwd_kv", False, 64, True): (16, 32, 8, 1),  # 2 stages: 16 / 0 B
        ("bwd_kv_atomic", True, 64, False): (32, 64, 8, 2),  # 64x64: 0 / 8 B
        ("bwd_q", True, 128, True): (64, 32, 8, 2),  # 64x64: 8 / 48 B
        ("bwd_q", False, 128, True): (16, 16, 8, 1),  # 16x32: 296 / 280 B
    },
    "3.7": {},  # 3.7 and 3.8: the tables above
    "3.9": {
        ("fwd", True, 64, False): (128, 64, 8, 3),  # 4 warps: 0 / 16 B
        ("fwd", True, 128, True): (128, 32, 8, 2),  # 3 stages: 40 / 8 B
        ("fwd", False, 32, True): (64, 32, 8, 1),  # 2 stages: 16 / 0 B
        ("fwd", False, 128, True): (16, 16, 16, 1),  # 8 warps: 0 / 8 B; 32x16/16w: 0 / 8 B
        ("bwd_kv", False, 64, True): (16, 32, 8, 1),  # 16x32/4w: 80 / 0 B; 8w/2 stages: 8 / 0 B
        ("bwd_kv_atomic", True, 64, False): (32, 64, 8, 2),  # 64x64: 0 / 16 B
        ("bwd_kv_atomic", False, 64, False): (32, 16, 8, 2),  # 32x32: 0 / 8 B
        ("bwd_q", False, 32, True): (32, 32, 8, 2),  # 4 warps: 24 / 0 B
    },
}

ROPE_FUSIONS = ("kernel", "prepass")


def mask_variant_config(cfg: dict, masked: bool, low_precision: bool = True) -> dict:
    """Launch parameters for the temporal masks / key padding (``masked``): the plain tiles,
    with 8 warps where they have 4. The always-live predicate and tile-run bookkeeping made
    bf16 hd64 forward 128x64 / 4 warps spill on sm_90 (TEMPORAL 1: 80 B, 2: 48 B, KEY_PAD:
    8 B); more warps halve the registers per thread (benchmarks.static_check). The dQ pass
    keeps its warps (fp32 32x32 with 8 warps spilled 8 B on sm_80, TEMPORAL 1; 4: none) and
    takes key tiles of at most 32."""
    if not masked:
        return cfg
    out = dict(cfg)
    if low_precision and out.get("bwd_q") is not None:
        # bf16 hd32 dQ (TEMPORAL 2) on sm_80: 64x64 spilled with 4 or 8 warps (16-32 B), 64x32 did not.
        BM, BN, w, st = out["bwd_q"]
        out["bwd_q"] = (BM, min(BN, 32), w, st)
    for kind in ("fwd", "bwd_kv", "bwd_kv_atomic"):
        if out.get(kind) is not None and out[kind][2] == 4:
            BM, BN, _, st = out[kind]
            out[kind] = (BM, BN, 8, st)
    # The atomic-dQ dK/dV pass at 64 queries x 64 keys (bf16 hd64): TEMPORAL 2 spilled 32 B on sm_80.
    if out.get("bwd_kv_atomic") is not None and out["bwd_kv_atomic"][:2] == (64, 64):
        out["bwd_kv_atomic"] = (32,) + out["bwd_kv_atomic"][1:]
    if not low_precision:
        # fp32 (ieee dots, twice the registers per element) at the plain tiles spilled 8-24 B in
        # 12 masked configs under triton 3.7.1 (fwd hd32/64, dQ hd64/128, dK/dV hd64 atomic and
        # hd128): half the query tile, and key tiles of 16 at hd128.
        for kind in ("fwd", "bwd_q", "bwd_kv", "bwd_kv_atomic"):
            if out.get(kind) is not None:
                BM, BN, w, st = out[kind]
                out[kind] = (max(16, BM // 2), 16 if out["BLOCK_D"] >= 128 else BN, w, st)
    elif out["BLOCK_D"] <= 32 and out.get("fwd") is not None:
        # bf16 / fp16 hd32 forward 128 x 64 with key padding: 8 B on sm_80.
        BM, BN, w, st = out["fwd"]
        out["fwd"] = (min(BM, 64), BN, w, st)
    return out


def triton_tiles(version: str | None = None) -> dict:
    """The per-release replacements (:data:`_TRITON_TILES`) for a triton version (installed one
    by default): the table of the greatest key <= its major.minor, else none."""
    v = triton_release(version)
    keys = [k for k in _TRITON_TILES if triton_release(k) <= v]
    return _TRITON_TILES[max(keys, key=triton_release)] if keys else {}


def block_config(head_dim: int, dtype: torch.dtype, interpret: bool | None = None, rope: bool = False,
                 device: torch.device | None = None) -> dict:
    """Tile sizes and launch parameters for a head dim / dtype (a fixed table, no autotune).

    The head dim is padded to the next power of two (BLOCK_D, masked loads), so hd 80 and
    96 use the hd128 entries. Entries were picked from ahead-of-time compiles for sm_90 and
    sm_80 (see ``_TILES``): the largest query tile that compiles without spills, since a
    spill costs more than a smaller tile; :data:`_TRITON_TILES` replaces the entries that
    spill under a given triton release. Every entry is registered below, so CI's static
    check recompiles all of them. ``rope=True`` (the fused rotation) takes ``_ROPE_TILES``
    where the plain tile spilled with it. Point-wise kernels use 64 rows (the Delta
    preprocess 32 at BLOCK_D 128; the rotation 8 warps there). Under the interpreter every
    tile is 16 (the tl.dot minimum), so tiny test shapes still cross many tile boundaries.
    ``device``: the launch's device; a tuned table for it, or ``FASTLAM_ATTN_TILES``, replaces
    entries (:mod:`.tile_tables`). Without it (the registry): the default table.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpret is None:
        interpret = interpreting()
    over = tile_tables.overrides(device) if device is not None else {}
    if interpret:
        t = (16, 16, 4, 1)
        cfg = dict(BLOCK_D=block_d, fwd=t, bwd_kv=t, bwd_kv_atomic=t, bwd_q=t, pointwise=(16, 4),
                   rope_pointwise=(16, 4))
        return _apply_overrides(cfg, over, dtype, block_d, rope)
    if block_d > 128:
        raise ValueError(f"head_dim: the Triton attention kernel takes head dims up to 128, got {head_dim}")
    low = dtype != torch.float32
    cfg = {}
    per_release = triton_tiles()
    for kind in ("fwd", "bwd_kv", "bwd_kv_atomic", "bwd_q"):
        key = (kind, low, block_d)
        cfg[kind] = _ROPE_TILES.get(key, _TILES.get(key)) if rope else _TILES.get(key)
        if cfg[kind] is not None:
            cfg[kind] = per_release.get((kind, low, block_d, rope), cfg[kind])
    _apply_overrides(cfg, over, dtype, block_d, rope)
    # The rotation kernel at 64 rows x 128 channels: 4 warps spilled 168-432 B (32 rows
    # fit but staged through shared memory at 200-245 registers); 8 warps: 104-158, no spill.
    rope_pw = (64, 4) if block_d <= 64 else (64, 8)
    return dict(BLOCK_D=block_d, pointwise=(64 if block_d <= 64 else 32, 4), rope_pointwise=rope_pw, **cfg)


def _apply_overrides(cfg: dict, over: dict, dtype: torch.dtype, block_d: int, rope: bool) -> dict:
    """Tuned or forced tiles replace default entries; a kind with no default (atomic dQ at
    hd128) stays off."""
    if over:
        name = _TRITON_DTYPE[dtype]
        for kind in tile_tables.KINDS:
            tile = over.get(tile_tables.tile_key(kind, name, block_d, rope))
            if tile is not None and cfg[kind] is not None:
                cfg[kind] = tile
    return cfg


def use_atomic_dq(head_dim: int, dtype: torch.dtype, deterministic: bool, rope: bool = False) -> bool:
    """Accumulate dQ with atomics in the dK/dV pass (fewer matmuls) unless asked to be
    deterministic or the head dim is too wide for it to compile without spills."""
    return not deterministic and block_config(head_dim, dtype, rope=rope)["bwd_kv_atomic"] is not None


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
    BM, warps = block_config(D, x.dtype)["rope_pointwise"]
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
    if mask == "temporal":  # the predicate ignores the window (TEMPORAL=2)
        return frame_len, n_frames + 1
    return frame_len, (n_frames + 1 if window_frames is None else int(window_frames))


def _dot_fp32(dtype: torch.dtype) -> bool:
    # The interpreter multiplies raw bf16 bit patterns in tl.dot: upcast there only.
    return interpreting() and dtype == torch.bfloat16


def _check_fusion(rope_fusion: str) -> None:
    if rope_fusion not in ROPE_FUSIONS:
        raise ValueError(f"rope_fusion: expected one of {ROPE_FUSIONS}, got {rope_fusion!r}")


def _rope_kernel_args(rope_tables, fused: bool, frame_len: int, dummy: torch.Tensor) -> tuple:
    """(COS, SIN, AXIS, F, NPREFIX, GRID_W) for an attention kernel; unused when not fused
    (any pointer, and integers that keep the position maths defined)."""
    if not fused:
        return dummy, dummy, dummy, 1, 0, 1
    cos, sin, axis, n_prefix, grid_w = rope_tables
    return cos, sin, axis, frame_len, int(n_prefix), int(grid_w)


def _key_pad_args(key_lengths, B: int, dummy: torch.Tensor):
    """(KLEN pointer, KEY_PAD) for the kernels: int32 (B,) valid key counts, or a dummy."""
    if key_lengths is None:
        return dummy, False
    if key_lengths.shape != (B,) or key_lengths.dtype != torch.int32 or key_lengths.device != dummy.device:
        raise ValueError(f"key_lengths: expected an int32 tensor of shape ({B},) on {dummy.device}, got "
                         f"{key_lengths.dtype} {tuple(key_lengths.shape)} on {key_lengths.device}")
    return key_lengths.contiguous(), True


def attention_forward(q, k, v, *, frame_len: int, mask: str, scale: float, window_frames=None, rope_tables=None,
                      rope_fusion: str = "kernel", out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
                      key_lengths: torch.Tensor | None = None):
    """Launch the forward. Returns (out (B,H,L,D) in q's dtype, lse (B,H,L) fp32, natural log).

    ``rope_tables``: None, or the tables of :func:`rope_rotate`. ``rope_fusion="kernel"``
    rotates q and k inside the attention kernel (the resident q tile once, each streamed
    k tile as it is loaded); ``"prepass"`` rotates them once by the rotation kernel into new
    tensors first (see the module docstring). ``key_lengths``: int32 (B,), keys at or past
    ``key_lengths[b]`` are padding (a row left with no key gets out 0, lse -inf).
    """
    _check_fusion(rope_fusion)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(name, x)
    B, H, L, D = q.shape
    fused = rope_tables is not None and rope_fusion == "kernel"
    cfg = mask_variant_config(block_config(D, q.dtype, rope=fused, device=q.device), mask in TEMPORAL_MODE or key_lengths is not None,
                              q.dtype != torch.float32)
    BM, BN, warps, stages = cfg["fwd"]
    mask_frame, window = mask_frames(L, frame_len, mask, window_frames)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if lse is None:
        lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    if rope_tables is not None and not fused:
        q = rope_rotate(q, frame_len, rope_tables)
        k = rope_rotate(k, frame_len, rope_tables)
    cos, sin, axis, F, npre, gw = _rope_kernel_args(rope_tables, fused, frame_len, lse)
    klen, key_pad = _key_pad_args(key_lengths, B, lse)
    _attn_fwd[(triton.cdiv(L, BM), B * H)](
        q, k, v, out, lse, cos, sin, axis,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, L, D, mask_frame, window, scale * _LOG2E_F, F, npre, gw, klen,
        ROPE=fused, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=cfg["BLOCK_D"], DOT_FP32=_dot_fp32(q.dtype), IEEE=q.dtype == torch.float32,
        TEMPORAL=TEMPORAL_MODE.get(mask, 0), KEY_PAD=key_pad, num_warps=warps, num_stages=stages,
    )
    return out, lse


def attention_backward(do, q, k, v, out, lse, *, frame_len: int, mask: str, scale: float, window_frames=None,
                       rope_tables=None, rope_fusion: str = "kernel", deterministic: bool = False,
                       dlse: torch.Tensor | None = None, grads: tuple | None = None,
                       key_lengths: torch.Tensor | None = None):
    """Launch the backward. Returns (dq, dk, dv) in q's dtype, contiguous (B, H, L, D).

    ``deterministic=True`` computes dQ in its own pass (no atomics: bit-identical across
    runs); otherwise dQ may be accumulated with fp32 atomics inside the dK/dV pass
    (:func:`use_atomic_dq`). ``dlse`` (B, H, L), the gradient of the lse output, if any:
    since d lse_i / d s_ij = p_ij it enters as dS = P * (dP - (Delta - dlse)). ``grads``:
    optional preallocated contiguous (dq, dk, dv) (tests poison them to prove every element
    is written). With RoPE, the attention kernels see rotated q and k: rotated inside them
    (``rope_fusion="kernel"``: the dK/dV pass rotates its resident k tile and each streamed
    q tile, the dQ pass its resident q tile and each streamed k tile) or rotated again by
    the rotation kernel first (``"prepass"``; cheaper than keeping copies from the
    forward). Either way dQ and dK come out in the rotated basis and one point-wise pass
    applies the transposed rotation to them in place (the atomic dQ accumulator is fp32;
    that pass also casts it into dq).
    """
    _check_fusion(rope_fusion)
    for name, x in (("do", do), ("q", q), ("k", k), ("v", v), ("out", out)):
        _check(name, x)
    B, H, L, D = q.shape
    fused = rope_tables is not None and rope_fusion == "kernel"
    cfg = mask_variant_config(block_config(D, q.dtype, rope=fused, device=q.device), mask in TEMPORAL_MODE or key_lengths is not None,
                              q.dtype != torch.float32)
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
    if rope_tables is not None and not fused:
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
    atomic = use_atomic_dq(D, q.dtype, deterministic, rope=fused)
    cos, sin, axis, F, npre, gw = _rope_kernel_args(rope_tables, fused, frame_len, delta)
    klen, key_pad = _key_pad_args(key_lengths, B, delta)
    temporal = TEMPORAL_MODE.get(mask, 0)
    dq_acc = torch.zeros((B, H, L, D), device=q.device, dtype=torch.float32) if atomic else dq

    BM, BN, warps, stages = cfg["bwd_kv_atomic" if atomic else "bwd_kv"]
    _attn_bwd_dkdv[(triton.cdiv(L, BN), B * H)](
        q, k, v, do, dk, dv, dq_acc, lse, delta, cos, sin, axis,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        dq_acc.stride(0), dq_acc.stride(1), dq_acc.stride(2),
        H, L, D, mask_frame, window, scale * _LOG2E_F, scale, F, npre, gw, klen,
        ATOMIC_DQ=atomic, ROPE=fused, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
        DOT_FP32=dot_fp32, IEEE=ieee, TEMPORAL=temporal, KEY_PAD=key_pad, num_warps=warps, num_stages=stages,
    )
    if not atomic:
        BM, BN, warps, stages = cfg["bwd_q"]
        _attn_bwd_dq[(triton.cdiv(L, BM), B * H)](
            q, k, v, do, dq, lse, delta, cos, sin, axis,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            do.stride(0), do.stride(1), do.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2),
            H, L, D, mask_frame, window, scale * _LOG2E_F, scale, F, npre, gw, klen,
            ROPE=fused, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
            DOT_FP32=dot_fp32, IEEE=ieee, TEMPORAL=temporal, KEY_PAD=key_pad, num_warps=warps, num_stages=stages,
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
    # Constexpr parameters left out of ``constexprs`` keep their defaults (TEMPORAL, KEY_PAD).
    defaulted = {p.name for p in getattr(fn, "params", ()) if p.is_constexpr}
    for name in fn.arg_names:
        if name in constexprs or name in defaulted:
            continue
        sig[name] = pointers.get(name) or ("fp32" if name in floats else "i32")
    return sig


def _attn_kernel_config(kind: str, dtype: torch.dtype, head_dim: int, rope: bool, tile: tuple,
                        default: bool = True) -> KernelConfig:
    """The registry entry of one attention kernel launch (``kind`` as in :func:`block_config`).

    FLOPs / bytes refer to the frame-causal reference shape B=4, H=16, L=2048 (8 x 256),
    counting only the unmasked fraction (36/64 of the L^2 pairs), backward = 2.5 x forward.
    Non-default tiles (the tile sweep's candidates) carry warps, stages and ``sweep`` in the name.
    """
    tname = _TRITON_DTYPE[dtype]
    el = torch.finfo(dtype).bits // 8
    BD = max(16, triton.next_power_of_2(head_dim))
    frac = (_REF_L // _REF_F + 1) / (2 * (_REF_L // _REF_F))
    tables = {"COS": "*fp32", "SIN": "*fp32", "AXIS": "*i32", "KLEN": "*i32"}
    ref = f"B={_REF_B},H={_REF_H},L={_REF_L},D={head_dim},frame_len={_REF_F},frame_causal"
    fwd_flops = 4.0 * _REF_B * _REF_H * _REF_L * _REF_L * head_dim * frac
    tb = float(_REF_B * _REF_H * _REF_L * head_dim * el)  # one (B, H, L, D) tensor
    rb = float(_REF_B * _REF_H * _REF_L * 4)  # one fp32 (B, H, L) row vector
    BM, BN, w, st = tile
    tag = f"hd{BD},{tname}{',rope' if rope else ''}"
    tail = f"M{BM},N{BN}" + ("" if default else f",w{w},s{st},sweep")
    ce = dict(DOT_FP32=False, IEEE=dtype == torch.float32, BLOCK_D=BD, ROPE=rope, BLOCK_M=BM, BLOCK_N=BN)

    def ptr(names):
        return {n: f"*{tname}" for n in names}

    common = dict(num_warps=w, num_stages=st, default=default, expects_mma=True, ref_shape=ref)
    if kind == "fwd":
        return KernelConfig(
            f"attn_fwd[{tag},{tail}]", _attn_fwd,
            _signature(_attn_fwd, {**ptr("QKVO"), "LSE": "*fp32", **tables}, ce), ce,
            flops=fwd_flops, min_bytes=4 * tb + rb, **common)
    if kind in ("bwd_kv", "bwd_kv_atomic"):
        atomic = kind == "bwd_kv_atomic"
        ce["ATOMIC_DQ"] = atomic
        return KernelConfig(
            f"attn_bwd_dkdv[{tag}{',atomic_dq' if atomic else ''},{tail}]", _attn_bwd_dkdv,
            _signature(_attn_bwd_dkdv, {**ptr(["Q", "K", "V", "DO", "DK", "DV"]),
                                        "DQ": "*fp32" if atomic else f"*{tname}",
                                        "LSE": "*fp32", "DELTA": "*fp32", **tables}, ce), ce,
            # 4 of the 5 backward matmuls (the dQ one too when atomic): 2.0 / 2.5 x forward.
            flops=fwd_flops * (2.5 if atomic else 2.0),
            min_bytes=(6 * tb + (tb * 4 / el if atomic else 0)) + 2 * rb, **common)
    if kind == "bwd_q":
        return KernelConfig(
            f"attn_bwd_dq[{tag},{tail}]", _attn_bwd_dq,
            _signature(_attn_bwd_dq, {**ptr(["Q", "K", "V", "DO", "DQ"]), "LSE": "*fp32",
                                      "DELTA": "*fp32", **tables}, ce), ce,
            flops=fwd_flops * 1.5, min_bytes=5 * tb + 2 * rb, **common)
    raise ValueError(f"kind: expected one of {tile_tables.KINDS}, got {kind!r}")


def _register_configs() -> None:
    """Register every configuration the launchers above can pick on a GPU (see block_config)
    and every candidate of the tile sweep (``tile_tables.SWEEP_CANDIDATES``, not default).

    Each attention kernel is registered with ROPE off and on (the fused rotation; tiles
    from ``_ROPE_TILES`` where they differ).
    """
    tables = {"COS": "*fp32", "SIN": "*fp32", "AXIS": "*i32", "KLEN": "*i32"}
    for dtype, tname in _TRITON_DTYPE.items():
        el = torch.finfo(dtype).bits // 8
        for head_dim in (32, 64, 128):
            BD = max(16, triton.next_power_of_2(head_dim))
            ref = f"B={_REF_B},H={_REF_H},L={_REF_L},D={head_dim},frame_len={_REF_F},frame_causal"
            tb = float(_REF_B * _REF_H * _REF_L * head_dim * el)  # one (B, H, L, D) tensor
            rb = float(_REF_B * _REF_H * _REF_L * 4)  # one fp32 (B, H, L) row vector

            def ptr(names, t=tname):
                return {n: f"*{t}" for n in names}

            for rope in (False, True):
                cfg = block_config(head_dim, dtype, interpret=False, rope=rope)
                for kind in tile_tables.KINDS:
                    if cfg[kind] is None:
                        continue
                    register(_attn_kernel_config(kind, dtype, head_dim, rope, cfg[kind]))
                    key = tile_tables.tile_key(kind, tname, BD, rope)
                    for tile in tile_tables.SWEEP_CANDIDATES.get(key, ()):
                        if tuple(tile) != tuple(cfg[kind]):
                            register(_attn_kernel_config(kind, dtype, head_dim, rope, tile, default=False))
            cfg = block_config(head_dim, dtype, interpret=False)
            tag = f"hd{BD},{tname}"
            PM, pw = cfg["pointwise"]
            ce = dict(BLOCK_M=PM, BLOCK_D=BD)
            register(KernelConfig(
                f"attn_bwd_preprocess[{tag}]", _attn_bwd_preprocess,
                _signature(_attn_bwd_preprocess, {**ptr(["O", "DO"]), "DELTA": "*fp32"}, ce), ce, pw, 1,
                ref_shape=ref, min_bytes=2 * tb + rb))
            # The pre-pass rotates q, k (either fusion's backward transposes dq, dk); the fp32
            # source is the atomic dQ accumulator (with or without the fused rotation).
            rope_variants = [("rotate", False, tname), ("transpose", True, tname)]
            if (block_config(head_dim, dtype, interpret=False, rope=True)["bwd_kv_atomic"] is not None
                    or cfg["bwd_kv_atomic"] is not None):
                rope_variants.append(("transpose_from_fp32", True, "fp32"))
            RM, rw = cfg["rope_pointwise"]
            for label, transpose, src in rope_variants:
                ce = dict(TRANSPOSE=transpose, BLOCK_M=RM, BLOCK_D=BD)
                register(KernelConfig(
                    f"attn_rope_{label}[{tag},M{RM}]", _rope_rotate,
                    _signature(_rope_rotate, {"X": f"*{src}", "Y": f"*{tname}", **tables}, ce), ce, rw, 1,
                    ref_shape=ref, min_bytes=tb * (1 + (4 / el if src == "fp32" else 1))))


_register_configs()


def mask_variant_gap(dtype: torch.dtype, head_dim: int, variant: str) -> str | None:
    """Why a GPU launch of a masked variant (``temporal_causal``, ``temporal``, ``key_pad``)
    does not use these kernels, or None when it does. These combinations spilled registers
    (8-24 B STACK, sm_80 or sm_90, triton 3.7.1) at h18's tiles and again at halved tiles, so
    they are neither registered as defaults nor launched on CUDA: the reference backends run
    them (the interpreter tests still cover the kernels' maths for them)."""
    if dtype == torch.float32:
        return (f"fp32 attention with the {variant} mask variant (its kernels spill on sm_80/sm_90; "
                "bf16/fp16 use the fused kernel)")
    if variant == "key_pad" and head_dim <= 32:
        return "key padding at head_dim <= 32 in 16-bit (the forward kernel spills on sm_80)"
    return None


def _register_mask_variants() -> None:
    """The temporal masks (TEMPORAL 1, 2) and key padding (KEY_PAD) of the attention kernels,
    with the default tiles of :func:`block_config` and no fused RoPE: the same launches as
    ``_register_configs`` plus the extra predicate / tile-run arithmetic, which must also
    compile without spills."""
    tables = {"COS": "*fp32", "SIN": "*fp32", "AXIS": "*i32", "KLEN": "*i32"}
    variants = [("temporal_causal", dict(TEMPORAL=1)), ("temporal", dict(TEMPORAL=2)),
                ("key_pad", dict(KEY_PAD=True))]
    for dtype, tname in _TRITON_DTYPE.items():
        for head_dim in (32, 64, 128):
            BD = max(16, triton.next_power_of_2(head_dim))
            cfg = mask_variant_config(block_config(head_dim, dtype, interpret=False), True, dtype != torch.float32)
            common = dict(DOT_FP32=False, IEEE=dtype == torch.float32, BLOCK_D=BD, ROPE=False)
            t = {n: f"*{tname}" for n in ("Q", "K", "V", "O", "DO", "DK", "DV")}
            for label, extra in variants:
                if mask_variant_gap(dtype, head_dim, label) is not None:
                    continue
                tag = f"hd{BD},{tname},{label}"
                BM, BN, w, st = cfg["fwd"]
                ce = dict(common, BLOCK_M=BM, BLOCK_N=BN, **extra)
                register(KernelConfig(f"attn_fwd[{tag},M{BM},N{BN}]", _attn_fwd,
                                      _signature(_attn_fwd, {**t, "LSE": "*fp32", **tables}, ce), ce, w, st,
                                      expects_mma=True))
                for atomic in (False, True):
                    spec = cfg["bwd_kv_atomic" if atomic else "bwd_kv"]
                    if spec is None:
                        continue
                    BM, BN, w, st = spec
                    ce = dict(common, ATOMIC_DQ=atomic, BLOCK_M=BM, BLOCK_N=BN, **extra)
                    register(KernelConfig(
                        f"attn_bwd_dkdv[{tag}{',atomic_dq' if atomic else ''},M{BM},N{BN}]", _attn_bwd_dkdv,
                        _signature(_attn_bwd_dkdv, {**t, "DQ": "*fp32" if atomic else f"*{tname}", "LSE": "*fp32",
                                                    "DELTA": "*fp32", **tables}, ce), ce, w, st, expects_mma=True))
                BM, BN, w, st = cfg["bwd_q"]
                ce = dict(common, BLOCK_M=BM, BLOCK_N=BN, **extra)
                register(KernelConfig(
                    f"attn_bwd_dq[{tag},M{BM},N{BN}]", _attn_bwd_dq,
                    _signature(_attn_bwd_dq, {**t, "DQ": f"*{tname}", "LSE": "*fp32", "DELTA": "*fp32", **tables},
                               ce), ce, w, st, expects_mma=True))


_register_mask_variants()
