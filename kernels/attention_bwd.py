"""The attention backward kernels: the flash-attention split into a preprocess and two passes.

A preprocess (Delta = rowsum(O * dO)), a dK/dV pass over query tiles per key tile, and either a
separate dQ pass (deterministic, no atomics) or dQ accumulated with fp32 atomics in the dK/dV
pass (constexpr ATOMIC_DQ: fewer matmuls, run-to-run non-deterministic summation order; only
where it compiles without spills, head dims <= 64). The tile runs are the forward's
(:mod:`.attention_common`), seen from the key side in the dK/dV pass. Launched by
``attention_backward`` in :mod:`.attention`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_common import (LOG2E, allowed, key_count, key_tile_runs, load_rows, program_tile, query_tile_runs,
                               shifted_run, temporal_key_shifts, temporal_query_shifts, tile_dot)
from .attention_rope import ROPE_INTS, load_qk


@triton.jit
def attn_bwd_preprocess(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_ol,
    stride_db, stride_dh, stride_dl,
    H, L, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m, bh, off_b, off_h = program_tile(BLOCK_M, H)
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
    q = load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    do = load_rows(DO, offs_m, offs_d, stride_dol, L, D, DOT_FP32)
    row_ok = offs_m < L
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    # Work transposed (keys on rows) so dK and dV accumulate without transposing tiles.
    p_t = tl.math.exp2(tile_dot(k, tl.trans(q), IEEE) * qk_scale - lse2[None, :])
    if MASKED:
        p_t = tl.where(allowed(offs_m[None, :], offs_n[:, None], L, KL, MF, MW, TEMPORAL), p_t, 0.0)
    dv += tile_dot(p_t.to(do.dtype), do, IEEE)
    dp_t = tile_dot(v, tl.trans(do), IEEE)
    ds_t = p_t * (dp_t - delta[None, :])
    ds_t_lo = ds_t.to(q.dtype)
    dk += tile_dot(ds_t_lo, q, IEEE)
    if ATOMIC_DQ:
        dq = tile_dot(tl.trans(ds_t_lo), k, IEEE) * sm_scale
        tl.atomic_add(DQ + offs_m[:, None] * stride_dql + offs_d[None, :], dq,
                      mask=row_ok[:, None] & (offs_d < D)[None, :], sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=ROPE_INTS)
def attn_bwd_dkdv(
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
    start_n, bh, off_b, off_h = program_tile(BLOCK_N, H)
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
    k = load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    v = load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    KL = key_count(KLEN, off_b, L, KEY_PAD)
    if TEMPORAL == 0:
        lo, s, e, hi = query_tile_runs(start_n, L, KL, MF, MW, BLOCK_N, BLOCK_M, KEY_PAD)
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
        j_lo, n_j = temporal_query_shifts(start_n, n1, L, MF, MW, TEMPORAL)
        done = start_n * 0
        for t in range(0, n_j):
            q0, q1, done = shifted_run(start_n, n1, (j_lo + t) * MF, L, done, BLOCK_M)
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
    k = load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    v = load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    p = tl.math.exp2(tile_dot(q, tl.trans(k), IEEE) * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(allowed(offs_m[:, None], offs_n[None, :], L, KL, MF, MW, TEMPORAL), p, 0.0)
    dp = tile_dot(do, tl.trans(v), IEEE)
    ds = p * (dp - delta[:, None])
    dq += tile_dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit(do_not_specialize=ROPE_INTS)
def attn_bwd_dq(
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
    start_m, bh, off_b, off_h = program_tile(BLOCK_M, H)
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
    q = load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    do = load_rows(DO, offs_m, offs_d, stride_dol, L, D, DOT_FP32)
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    KL = key_count(KLEN, off_b, L, KEY_PAD)
    if TEMPORAL == 0:
        lo, s, e, hi = key_tile_runs(start_m, L, KL, MF, MW, BLOCK_M, BLOCK_N, KEY_PAD)
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
        j_hi, n_j = temporal_key_shifts(start_m, L, MF, MW, BLOCK_M, TEMPORAL)
        done = start_m * 0
        for t in range(0, n_j):
            k0, k1, done = shifted_run(start_m, m1, -(j_hi - t) * MF, KL, done, BLOCK_N)
            for start_n in range(k0, k1, BLOCK_N):
                dq = _dq_tile(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_d, stride_kl, stride_vl,
                              L, D, MF, MW, qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W,
                              True, ROPE, BLOCK_N, BLOCK_D, DOT_FP32, IEEE, KL, TEMPORAL)

    dq *= sm_scale
    tl.store(DQ + offs_m[:, None] * stride_dql + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])
