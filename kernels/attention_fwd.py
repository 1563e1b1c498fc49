"""The attention forward kernel: online softmax over the key tiles a query tile may see.

Softmax runs in base 2 (``exp2`` with ``scale * log2(e)`` folded into ``qk_scale``); the stored
log-sum-exp is natural-log, fp32, (B, H, L). Key tiles come in three runs (masked, unmasked,
masked) for the frame masks and in short runs per frame shift for the temporal ones
(:mod:`.attention_common`); one inner loop, :func:`_fwd_run`, runs each of them (the Triton
fused-attention tutorial's pattern: the unmasked run compiles without the mask arithmetic).
Key padding (constexpr KEY_PAD): keys at or past ``KLEN[b]`` are masked and tile ranges are
clipped to them; per-frame key padding (constexpr FRAME_PAD): KLEN is (B, L // F) counts, key
j of frame f is valid iff ``j % F < KLEN[b, f]``, an element mask on every tile. Either way a
row left with no key at all gets output 0 and lse -inf. Launched by ``attention_forward`` in
:mod:`.attention`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_common import (LN2, NEG, allowed, frame_counts, frame_key_valid, key_count, key_tile_runs, load_rows,
                               program_heads, shifted_run, temporal_key_shifts, tile_dot)
from .attention_rope import ROPE_INTS, load_qk


@triton.jit
def _fwd_run(acc, m_i, l_i, q, K, V, lo, hi, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW, qk_scale,
             COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN,
             MASKED: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
             TEMPORAL: tl.constexpr, KEY_PAD: tl.constexpr, FRAME_PAD: tl.constexpr):
    """Online softmax over the key tiles starting in [lo, hi): MASKED evaluates the mask
    predicate on every pair; the unmasked run (MASKED False) has no mask arithmetic, except
    the per-frame padding mask when FRAME_PAD (padding can lie inside any tile)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
        v = load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
        s = tile_dot(q, tl.trans(k), IEEE) * qk_scale
        if MASKED:
            ok = allowed(offs_m[:, None], offs_n[None, :], L, KL, MF, MW, TEMPORAL)
            if FRAME_PAD:
                ok = ok & frame_key_valid(FKLEN, offs_n, L, F)[None, :]
        elif FRAME_PAD:
            ok = frame_key_valid(FKLEN, offs_n, L, F)[None, :]
        if MASKED or FRAME_PAD:
            s = tl.where(ok, s, NEG)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        if (MASKED and KEY_PAD) or FRAME_PAD:
            # With padding a row may have no key at all (so far): exp2(NEG - NEG) = 1 must not count.
            p = tl.where(ok, p, 0.0)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tile_dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=ROPE_INTS)
def attn_fwd(
    Q, K, V, O, LSE, COS, SIN, AXIS,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    H, L, D, MF, MW, qk_scale, F, NPREFIX, GRID_W, KLEN,
    ROPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
    TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False, FRAME_PAD: tl.constexpr = False,
):
    """Program (i, b * H + h): query rows [i * BLOCK_M, (i + 1) * BLOCK_M) of head h of batch
    row b; writes their output rows and log-sum-exp."""
    start_m, bh, off_b, off_h, Q, K, V = program_heads(BLOCK_M, H, Q, K, V, stride_qb, stride_qh,
                                                       stride_kb, stride_kh, stride_vb, stride_vh)
    O += off_b * stride_ob + off_h * stride_oh
    LSE += bh.to(tl.int64) * L

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + NEG
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    KL = key_count(KLEN, off_b, L, KEY_PAD)
    FKLEN = frame_counts(KLEN, off_b, L, F, FRAME_PAD)
    if TEMPORAL == 0:
        lo, s, e, hi = key_tile_runs(start_m, L, KL, MF, MW, BLOCK_M, BLOCK_N, KEY_PAD)
        # masked tiles below, the unmasked run, masked tiles above
        acc, m_i, l_i = _fwd_run(acc, m_i, l_i, q, K, V, lo, s, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW,
                                 qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, True, ROPE, BLOCK_N,
                                 BLOCK_D, DOT_FP32, IEEE, TEMPORAL, KEY_PAD, FRAME_PAD)
        acc, m_i, l_i = _fwd_run(acc, m_i, l_i, q, K, V, s, e, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW,
                                 qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, False, ROPE, BLOCK_N,
                                 BLOCK_D, DOT_FP32, IEEE, TEMPORAL, KEY_PAD, FRAME_PAD)
        acc, m_i, l_i = _fwd_run(acc, m_i, l_i, q, K, V, e, hi, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW,
                                 qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, True, ROPE, BLOCK_N,
                                 BLOCK_D, DOT_FP32, IEEE, TEMPORAL, KEY_PAD, FRAME_PAD)
    else:
        # Only the key tiles holding q - j*MF for some query of the tile: one short run of
        # tiles per shift j, in ascending order; `done` skips a tile two shifts share.
        j_hi, n_j, m1 = temporal_key_shifts(start_m, L, MF, MW, BLOCK_M, TEMPORAL)
        done = start_m * 0
        for t in range(0, n_j):
            k0, k1, done = shifted_run(start_m, m1, -(j_hi - t) * MF, KL, done, BLOCK_N)
            acc, m_i, l_i = _fwd_run(acc, m_i, l_i, q, K, V, k0, k1, offs_m, offs_d, stride_kl, stride_vl, L, D, MF,
                                     MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, True, ROPE,
                                     BLOCK_N, BLOCK_D, DOT_FP32, IEEE, TEMPORAL, KEY_PAD, FRAME_PAD)

    row_ok = offs_m < L
    if KEY_PAD or FRAME_PAD:
        # A row with no visible key: output 0, lse -inf (the reference's convention).
        empty = l_i == 0.0
        acc = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse_row = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2)
    else:
        acc = acc / l_i[:, None]
        lse_row = (m_i + tl.math.log2(l_i)) * LN2
    tl.store(LSE + offs_m, lse_row, mask=row_ok)
    tl.store(O + offs_m[:, None] * stride_ol + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])
