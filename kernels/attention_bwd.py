"""The attention backward kernels: the flash-attention split into a preprocess and two passes.

A preprocess (Delta = rowsum(O * dO)), a dK/dV pass over query tiles per key tile, and either a
separate dQ pass (deterministic, no atomics) or dQ accumulated with fp32 atomics in the dK/dV
pass (constexpr ATOMIC_DQ: fewer matmuls, run-to-run non-deterministic summation order; only
where it compiles without spills, head dims <= 64). The tile runs are the forward's
(:mod:`.attention_common`), seen from the key side in the dK/dV pass; as in the forward, one
inner loop per pass (:func:`_dkdv_run`, :func:`_dq_run`) runs every run, masked or not. Key
padding as in the forward (KEY_PAD, FRAME_PAD): padded pairs get P = 0, so the dK and dV rows
of a padded key are exactly 0 and a row with no key (lse -inf) contributes nothing. Launched
by ``attention_backward`` in :mod:`.attention`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_common import (LOG2E, allowed, frame_counts, frame_key_valid, key_count, key_tile_runs, load_rows,
                               program_heads, program_tile, query_tile_runs, shifted_run, temporal_key_shifts,
                               temporal_query_shifts, tile_dot)
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
def _bwd_program(BLOCK: tl.constexpr, H, L, Q, K, V, DO, DQ, LSE, DELTA, stride_qb, stride_qh, stride_kb,
                 stride_kh, stride_vb, stride_vh, stride_dob, stride_doh, stride_dqb, stride_dqh):
    """:func:`program_heads`, with dO and dQ moved to the same (batch, head) rows and LSE and Delta
    to this head's entries of the (B, H, L) row vectors: how both backward passes start.
    Returns (start, bh, b, h, Q, K, V, DO, DQ, LSE, DELTA)."""
    start, bh, off_b, off_h, Q, K, V = program_heads(BLOCK, H, Q, K, V, stride_qb, stride_qh, stride_kb, stride_kh,
                                                     stride_vb, stride_vh)
    DO += off_b * stride_dob + off_h * stride_doh
    DQ += off_b * stride_dqb + off_h * stride_dqh
    LSE += bh.to(tl.int64) * L
    DELTA += bh.to(tl.int64) * L
    return start, bh, off_b, off_h, Q, K, V, DO, DQ, LSE, DELTA


@triton.jit
def _dkdv_run(dk, dv, k, v, kvalid, Q, DO, LSE, DELTA, DQ, lo, hi, offs_n, offs_d,
              stride_ql, stride_dol, stride_dql, L, D, MF, MW, qk_scale, sm_scale,
              COS, SIN, AXIS, F, NPREFIX, GRID_W, KL,
              MASKED: tl.constexpr, ATOMIC_DQ: tl.constexpr, ROPE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
              TEMPORAL: tl.constexpr, FRAME_PAD: tl.constexpr):
    """dK, dV of the resident key tile over the query tiles starting in [lo, hi); MASKED as in
    the forward's ``_fwd_run``. ``kvalid``: the keys that are not per-frame padding (FRAME_PAD)."""
    for start_m in range(lo, hi, BLOCK_M):
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
        if FRAME_PAD:
            p_t = tl.where(kvalid[:, None], p_t, 0.0)
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
    TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False, FRAME_PAD: tl.constexpr = False,
):
    """Program (j, b * H + h): dK and dV of key rows [j * BLOCK_N, (j + 1) * BLOCK_N) of head h
    of batch row b, over the query tiles that see them (and their dQ share, ATOMIC_DQ)."""
    start_n, bh, off_b, off_h, Q, K, V, DO, DQ, LSE, DELTA = _bwd_program(
        BLOCK_N, H, L, Q, K, V, DO, DQ, LSE, DELTA, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
        stride_dob, stride_doh, stride_dqb, stride_dqh)
    DK += off_b * stride_dkb + off_h * stride_dkh
    DV += off_b * stride_dvb + off_h * stride_dvh

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    v = load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    KL = key_count(KLEN, off_b, L, KEY_PAD)
    kvalid = offs_n < L
    if FRAME_PAD:  # the resident keys' padding, read once for every query tile
        kvalid = frame_key_valid(frame_counts(KLEN, off_b, L, F, FRAME_PAD), offs_n, L, F)
    if TEMPORAL == 0:
        lo, s, e, hi = query_tile_runs(start_n, L, KL, MF, MW, BLOCK_N, BLOCK_M, KEY_PAD)
        # masked tiles below, the unmasked run, masked tiles above
        dk, dv = _dkdv_run(dk, dv, k, v, kvalid, Q, DO, LSE, DELTA, DQ, lo, s, offs_n, offs_d, stride_ql, stride_dol,
                           stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL,
                           True, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, TEMPORAL, FRAME_PAD)
        dk, dv = _dkdv_run(dk, dv, k, v, kvalid, Q, DO, LSE, DELTA, DQ, s, e, offs_n, offs_d, stride_ql, stride_dol,
                           stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL,
                           False, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, TEMPORAL, FRAME_PAD)
        dk, dv = _dkdv_run(dk, dv, k, v, kvalid, Q, DO, LSE, DELTA, DQ, e, hi, offs_n, offs_d, stride_ql, stride_dol,
                           stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL,
                           True, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, TEMPORAL, FRAME_PAD)
    else:
        # Only the query tiles holding k + j*MF for some key of the tile (see the forward).
        n1 = tl.minimum(start_n + BLOCK_N, KL)
        j_lo, n_j = temporal_query_shifts(start_n, n1, L, MF, MW, TEMPORAL)
        done = start_n * 0
        for t in range(0, n_j):
            q0, q1, done = shifted_run(start_n, n1, (j_lo + t) * MF, L, done, BLOCK_M)
            dk, dv = _dkdv_run(dk, dv, k, v, kvalid, Q, DO, LSE, DELTA, DQ, q0, q1, offs_n, offs_d, stride_ql,
                               stride_dol, stride_dql, L, D, MF, MW, qk_scale, sm_scale, COS, SIN, AXIS, F, NPREFIX,
                               GRID_W, KL, True, ATOMIC_DQ, ROPE, BLOCK_M, BLOCK_D, DOT_FP32, IEEE, TEMPORAL,
                               FRAME_PAD)

    dk *= sm_scale
    ok = (offs_n < L)[:, None] & (offs_d < D)[None, :]
    tl.store(DK + offs_n[:, None] * stride_dkl + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + offs_n[:, None] * stride_dvl + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _dq_run(dq, q, do, lse2, delta, K, V, lo, hi, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW, qk_scale,
            COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN,
            MASKED: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr,
            TEMPORAL: tl.constexpr, FRAME_PAD: tl.constexpr):
    """dQ of the resident query tile over the key tiles starting in [lo, hi) (MASKED, FRAME_PAD
    as in the forward's ``_fwd_run``)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_qk(K, offs_n, offs_d, stride_kl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
        v = load_rows(V, offs_n, offs_d, stride_vl, L, D, DOT_FP32)
        p = tl.math.exp2(tile_dot(q, tl.trans(k), IEEE) * qk_scale - lse2[:, None])
        if MASKED:
            p = tl.where(allowed(offs_m[:, None], offs_n[None, :], L, KL, MF, MW, TEMPORAL), p, 0.0)
        if FRAME_PAD:
            p = tl.where(frame_key_valid(FKLEN, offs_n, L, F)[None, :], p, 0.0)
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
    TEMPORAL: tl.constexpr = 0, KEY_PAD: tl.constexpr = False, FRAME_PAD: tl.constexpr = False,
):
    """Program (i, b * H + h): dQ of query rows [i * BLOCK_M, (i + 1) * BLOCK_M) of head h of
    batch row b, over the key tiles they see (the deterministic path: no atomics)."""
    start_m, bh, off_b, off_h, Q, K, V, DO, DQ, LSE, DELTA = _bwd_program(
        BLOCK_M, H, L, Q, K, V, DO, DQ, LSE, DELTA, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
        stride_dob, stride_doh, stride_dqb, stride_dqh)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < L
    q = load_qk(Q, offs_m, offs_d, stride_ql, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, ROPE, DOT_FP32)
    do = load_rows(DO, offs_m, offs_d, stride_dol, L, D, DOT_FP32)
    lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    KL = key_count(KLEN, off_b, L, KEY_PAD)
    FKLEN = frame_counts(KLEN, off_b, L, F, FRAME_PAD)
    if TEMPORAL == 0:
        lo, s, e, hi = key_tile_runs(start_m, L, KL, MF, MW, BLOCK_M, BLOCK_N, KEY_PAD)
        # masked tiles below, the unmasked run, masked tiles above
        dq = _dq_run(dq, q, do, lse2, delta, K, V, lo, s, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW,
                     qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, True, ROPE, BLOCK_N, BLOCK_D,
                     DOT_FP32, IEEE, TEMPORAL, FRAME_PAD)
        dq = _dq_run(dq, q, do, lse2, delta, K, V, s, e, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW,
                     qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, False, ROPE, BLOCK_N, BLOCK_D,
                     DOT_FP32, IEEE, TEMPORAL, FRAME_PAD)
        dq = _dq_run(dq, q, do, lse2, delta, K, V, e, hi, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW,
                     qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, True, ROPE, BLOCK_N, BLOCK_D,
                     DOT_FP32, IEEE, TEMPORAL, FRAME_PAD)
    else:
        j_hi, n_j, m1 = temporal_key_shifts(start_m, L, MF, MW, BLOCK_M, TEMPORAL)
        done = start_m * 0
        for t in range(0, n_j):
            k0, k1, done = shifted_run(start_m, m1, -(j_hi - t) * MF, KL, done, BLOCK_N)
            dq = _dq_run(dq, q, do, lse2, delta, K, V, k0, k1, offs_m, offs_d, stride_kl, stride_vl, L, D, MF, MW,
                         qk_scale, COS, SIN, AXIS, F, NPREFIX, GRID_W, KL, FKLEN, True, ROPE, BLOCK_N, BLOCK_D,
                         DOT_FP32, IEEE, TEMPORAL, FRAME_PAD)

    dq *= sm_scale
    tl.store(DQ + offs_m[:, None] * stride_dql + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])
