"""The attention kernels' shared ``@triton.jit`` parts: the program's tile, the mask predicate, tile ranges.

Every mask is one rule, frame-causal with a window over "mask frames" (``mask_frames`` in
:mod:`.attention`), or, for the temporal masks (constexpr TEMPORAL 1 / 2), the key at the
query's spatial position: q - k = j * frame_len. :func:`allowed` is that predicate on index tiles.

For each query tile a kernel derives, from the tile's first and last index, the range of key
tiles that may contain an allowed pair ``[lo, hi)`` and the sub-range whose every pair is
allowed (:func:`key_range`, :func:`align_ranges`); it runs three loops: masked tiles below,
unmasked tiles (no mask arithmetic), masked tiles above. Key tiles outside ``[lo, hi)`` are
never loaded. With frame lengths like 258 that do not divide the tile size, only the tiles that
straddle a frame boundary pay for the mask. The backward dK/dV pass does the same over query
tiles for each key tile (:func:`query_range`). Under the temporal masks only a 1/frame_len
fraction of the pairs is allowed, so no tile is ever full: for a query tile the kernels visit,
per frame shift j, the few key tiles covering [m0 - j*F, m1 - j*F) and skip the rest
(:func:`temporal_key_shifts`, :func:`shifted_run`; the dK/dV pass likewise over query tiles,
:func:`temporal_query_shifts`). Key padding clips these ranges to the keys that are not padding
(:func:`key_count`). Per-frame key padding (constexpr FRAME_PAD: key j of frame f is
padding when ``j % F >= counts[b, f]``) changes no range: it only adds an element mask
(:func:`frame_key_valid`) to every visited tile, the unmasked ones included.

These functions are inlined into the kernels that call them (``attention_fwd``,
``attention_bwd``, ``attention_rope``): moving code here costs nothing at run time.
"""
from __future__ import annotations

import triton
import triton.language as tl

NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": a row masked in one tile never gives inf - inf
LOG2E_F = 1.4426950408889634
LOG2E = tl.constexpr(LOG2E_F)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def tile_dot(a, b, IEEE: tl.constexpr):
    """a @ b on tensor cores; IEEE (the fp32 path): exact fp32 products instead of TF32."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def program_tile(BLOCK: tl.constexpr, H):
    """The tile this program owns: its first row (grid axis 0, tiles of BLOCK rows) and its
    (batch, head) pair (grid axis 1, ``bh = b * H + h``); returns (start, bh, b, h), b and h
    as int64 so that batch and head offsets of large tensors do not overflow."""
    start = tl.program_id(0) * BLOCK
    bh = tl.program_id(1)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    return start, bh, off_b, off_h


@triton.jit
def key_count(KLEN, off_b, L, KEY_PAD: tl.constexpr):
    """How many keys of batch row ``off_b`` are not padding: KLEN[off_b] clipped to L, or L."""
    KL = L
    if KEY_PAD:
        KL = tl.minimum(tl.load(KLEN + off_b), L)
    return KL


@triton.jit
def program_heads(BLOCK: tl.constexpr, H, Q, K, V, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh):
    """:func:`program_tile`, and the q, k, v pointers moved to this program's (batch, head)
    rows: every attention kernel starts with both. Returns (start, bh, b, h, Q, K, V)."""
    start, bh, off_b, off_h = program_tile(BLOCK, H)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    return start, bh, off_b, off_h, Q, K, V


@triton.jit
def frame_counts(KLEN, off_b, L, F, FRAME_PAD: tl.constexpr):
    """Per-frame key padding: batch row ``off_b``'s counts in the (B, L // F) table KLEN (KLEN
    itself, unused, without FRAME_PAD)."""
    FKLEN = KLEN
    if FRAME_PAD:
        FKLEN += off_b * (L // F)
    return FKLEN


@triton.jit
def frame_key_valid(FKLEN, k_idx, L, F):
    """Per-frame key padding: whether key ``k_idx`` is valid, i.e. its position inside its frame
    of F tokens is below that frame's count. ``FKLEN`` points at this batch row's counts, one
    per frame (int32, L // F of them). One gather per key tile, and a tile holds keys of at
    most a few frames, so the loads hit the same cache lines; keys past L are never valid."""
    ok = k_idx < L
    counts = tl.load(FKLEN + k_idx // F, mask=ok, other=0)
    return ok & (k_idx % F < counts)


@triton.jit
def allowed(q_idx, k_idx, L, KL, MF, MW, TEMPORAL: tl.constexpr):
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
def temporal_key_shifts(m0, L, MF, MW, BLOCK_M: tl.constexpr, TEMPORAL: tl.constexpr):
    """Temporal masks, query tile at m0: keys are q - j*MF; returns (j_hi, number of shifts,
    m1 = the tile's end clipped to L), j runs j_hi, j_hi - 1, ... so the key intervals
    [m0 - j*MF, m1 - j*MF) ascend."""
    m1 = tl.minimum(m0 + BLOCK_M, L)
    j_hi = (m1 - 1) // MF
    if TEMPORAL == 1:
        j_hi = tl.minimum(j_hi, MW - 1)
        n = j_hi + 1
    else:
        n = j_hi + (L - 1 - m0) // MF + 1
    return j_hi, n, m1


@triton.jit
def temporal_query_shifts(n0, n1, L, MF, MW, TEMPORAL: tl.constexpr):
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
def shifted_run(a0, a1, off, lim, done, BLOCK: tl.constexpr):
    """Tiles [r0, r1) (step BLOCK) covering the shifted interval [a0 + off, a1 + off) clipped
    to [0, lim), starting at or after ``done`` (tiles an earlier shift already ran); returns
    them and the new ``done``. Shifts come in ascending order, so no tile runs twice."""
    r1 = tl.minimum(a1 + off, lim)
    r0 = tl.maximum(tl.maximum(a0 + off, 0) // BLOCK * BLOCK, done)
    return r0, r1, tl.maximum(done, r0 + tl.cdiv(tl.maximum(r1 - r0, 0), BLOCK) * BLOCK)


@triton.jit
def align_ranges(lo, hi, a, b, BLOCK: tl.constexpr):
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
def key_range(m0, L, MF, MW, BLOCK_M: tl.constexpr):
    """Keys a query tile starting at m0 may see ([lo, hi)) and sees in full ([a, b))."""
    f0 = m0 // MF
    f1 = (tl.minimum(m0 + BLOCK_M, L) - 1) // MF
    lo = tl.maximum(f0 - MW + 1, 0) * MF
    hi = tl.minimum((f1 + 1) * MF, L)
    a = tl.maximum(f1 - MW + 1, 0) * MF
    b = tl.minimum((f0 + 1) * MF, L)
    return lo, hi, a, b


@triton.jit
def query_range(n0, L, MF, MW, BLOCK_N: tl.constexpr):
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
def key_tile_runs(m0, L, KL, MF, MW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KEY_PAD: tl.constexpr):
    """Frame masks, query tile at m0 (forward and dQ pass): key tile starts ``lo <= s <= e <= hi``,
    masked tiles in [lo, s) and [e, hi), unmasked ones in [s, e); with padding, clipped to the
    KL keys that are not."""
    lo, hi, a, b = key_range(m0, L, MF, MW, BLOCK_M)
    if KEY_PAD:
        hi = tl.minimum(hi, KL)
        b = tl.minimum(b, KL)
    lo, s, e, hi = align_ranges(lo, hi, a, b, BLOCK_N)
    return lo, s, e, hi


@triton.jit
def query_tile_runs(n0, L, KL, MF, MW, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, KEY_PAD: tl.constexpr):
    """Frame masks, key tile at n0 (dK/dV pass): query tile starts ``lo <= s <= e <= hi`` as in
    :func:`key_tile_runs`."""
    lo, hi, a, b = query_range(n0, L, MF, MW, BLOCK_N)
    if KEY_PAD:
        # A key tile reaching into the padding masks every query tile; one wholly in it has none.
        b = tl.where(n0 + BLOCK_N > KL, a, b)
        hi = tl.where(n0 >= KL, lo, hi)
    lo, s, e, hi = align_ranges(lo, hi, a, b, BLOCK_M)
    return lo, s, e, hi


@triton.jit
def load_rows(PTR, tok, offs_d, stride_l, L, D, DOT_FP32: tl.constexpr):
    """Rows ``tok`` of a (L, D) tile as a dot operand: zeros past L and D, fp32 when DOT_FP32."""
    x = tl.load(PTR + tok[:, None] * stride_l + offs_d[None, :], mask=(tok < L)[:, None] & (offs_d < D)[None, :], other=0.0)
    if DOT_FP32:
        x = x.to(tl.float32)
    return x
