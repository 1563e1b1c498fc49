"""The attention forward kernel: online softmax over the key tiles a query tile may see.

Softmax runs in base 2 (``exp2`` with ``scale * log2(e)`` folded into ``qk_scale``); the stored
log-sum-exp is natural-log, fp32, (B, H, L). Key tiles come in three runs (masked, unmasked,
masked) for the frame masks and in short runs per frame shift for the temporal ones
(:mod:`.attention_common`). Key padding (constexpr KEY_PAD): keys at or past ``KLEN[b]`` are
masked, tile ranges are clipped to them, and a row left with no key at all gets output 0 and
lse -inf. Launched by ``attention_forward`` in :mod:`.attention`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_common import (LN2, NEG, allowed, key_count, key_tile_runs, load_rows, program_tile, shifted_run,
                               temporal_key_shifts, tile_dot)
from .attention_rope import ROPE_INTS, load_qk


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW, qk_scale,
              COS, SIN, AXIS, F, NPREFIX, GRID_W,
              MASKED: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
              KL=None, TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    v = load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    s = tile_dot(q, tl.trans(k), IEEE) * qk_scale
    if MASKED:
        ok = allowed(offs_m[:, None], offs_n[None, :], L, KL, MF, MW, TEMPORAL)
        s = tl.where(ok, s, NEG)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    if MASKED and KEY_PAD:
        # With padding a row may have no key at all (so far): exp2(NEG - NEG) = 1 must not count.
        p = tl.where(ok, p, 0.0)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tile_dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


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
    TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False,
):
    start_m, bh, off_b, off_h = program_tile(BLOCK_M, H)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    O += off_b * stride_ob + off_h * stride_oh
    LSE += bh.to(tl.int64) * L

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + NEG
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    KL = key_count(KLEN, off_b, L, KEY_PAD)
    if TEMPORAL == 0:
        lo, s, e, hi = key_tile_runs(start_m, L, KL, MF, MW, BLOCK_M, BLOCK_N, KEY_PAD)
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
        j_hi, n_j = temporal_key_shifts(start_m, L, MF, MW, BLOCK_M, TEMPORAL)
        done = start_m * 0
        for t in range(0, n_j):
            k0, k1, done = shifted_run(start_m, m1, -(j_hi - t) * MF, KL, done, BLOCK_N)
            for start_n in range(k0, k1, BLOCK_N):
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                                          L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                                          True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL, KEY_PAD)

    row_ok = offs_m < L
    if KEY_PAD:
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
