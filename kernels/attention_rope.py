"""3D RoPE inside the attention kernels: token positions, rotated tile loads, the rotation kernel.

V-JEPA 2 layout: the token's (t, h, w) position is derived from its index, the frame length,
the number of per-frame prefix tokens and the grid width; per channel the launcher passes the
axis (0=t, 1=h, 2=w, 3=none) and cos/sin tables indexed by (integer position along that axis,
channel). The tables are ``cos((i * scale_axis) * f_c)`` built in fp32 by the same torch ops
as the reference, so the angles are bit-identical to ``fastlam.ops.rope`` and no per-element
sin/cos is evaluated. Rotation is ``x*cos + pair_swap(x)*sin``, its transpose
``g*cos - pair_swap(g*sin)``, where ``pair_swap(y)[c] = sign(c) * y[c ^ 1]``. The partner
channel ``c ^ 1`` is read by a second load of the same rows (an L1/L2 hit), so everything is
element-wise: an earlier in-register swap (reshape / split / join) forced layout conversions
through shared memory and made the sm_90 builds spill.

Two fusions (``rope_fusion``): ``"prepass"`` (default) rotates q and k once by the point-wise
:func:`rope_rotate_kernel`, which reads them in place (any (B, H, L) strides, e.g. the views
of a packed qkv projection) and writes new contiguous tensors; the attention kernels then run
without rotation (ROPE=False, the plain tiles). ``"kernel"`` rotates inside the attention
kernels (constexpr ROPE) on every tile visit: the forward rotates its resident q tile once
and each streamed k tile as it is loaded; the dK/dV pass its resident k tile and each
streamed q tile; the dQ pass its resident q tile and each streamed k tile. The rotated tile
is rounded to the input dtype before the matmul, which is what the pre-pass stores, so both
fusions feed the same operands. In both, dQ and dK leave the kernels in the rotated basis
and one point-wise pass applies R^T in place (O(L*D); the atomic dQ path accumulates
rotated-basis dQ in fp32 and that pass casts it). R^T in the epilogue would need the partner channel of an accumulator that
lives in registers of other threads: a store, a CTA barrier and a re-load, i.e. the same
memory traffic as the post-pass but inside the most register-bound part of the kernel.
The extra tiles of the fused rotation (x, partner, cos, sin and their 64-bit addresses) cost
registers: with the plain tiles, 20 of the 33 ROPE=True configurations spilled on sm_90 or
sm_80 (STACK 8-496 B; e.g. bf16 hd64 forward 128x64: 32 / 168 B), so ``_ROPE_TILES`` in
:mod:`.tile_tables` holds other tiles for those, mostly 8 warps instead of 4 or a halved key
tile (bf16 hd64 forward 128x32 with 8 warps: 208 / 244 registers, no spill); every default is
spill-free (REG and STACK per config: benchmarks/results/static). The point-wise rotation
kernel with 4 warps still spills at 64 rows x BLOCK_D 128 (STACK 168-432 B), with 8 warps it
does not (104-158 registers). The pre-pass is the default because it is what FlashAttention
does and it lets the attention kernels keep their larger plain tiles; whether the per-visit
fusion is faster on a device is for ``benchmarks/bench_attention.py`` / the tile tuning to
measure (``fastlam_triton_rope_kernel`` vs ``fastlam_triton_rope_prepass``): no GPU has run
it yet.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_common import load_rows, program_tile

# The RoPE layout integers (frame length, prefix tokens, grid width) only enter index maths:
# never specialized on their value or divisibility, so 256 and 258-token frames (and the
# unused placeholders of ROPE=False launches) run the one binary the static check compiled.
ROPE_INTS = ["F", "NPREFIX", "GRID_W"]


@triton.jit
def rope_positions(tok, offs_d, AXIS, D, F, NPREFIX, GRID_W):
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
def rope_load(PTR, tok, offs_d, stride_l, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, TRANSPOSE: tl.constexpr):
    """Rows ``tok`` of a (L, D) tile read from memory and rotated, fp32.

    R x = x*cos + pair_swap(x)*sin and R^T x = x*cos - pair_swap(x*sin), where
    pair_swap(y)[c] = sign(c) * y[c ^ 1] (sign -1 on even channels). The partner channel
    is read by a second load of the same rows at column ``c ^ 1`` (an L1/L2 hit) instead of
    a register shuffle: the reshape/split/join swap made the tile's layout conversions
    spill registers on sm_90, the second load is element-wise. The partner of a rotated
    channel lies in the same chunk (chunks have an even width), hence has the same axis and
    position; unrotated channels have sin = 0 at every position.
    """
    pos = rope_positions(tok, offs_d, AXIS, D, F, NPREFIX, GRID_W)
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
def load_qk(PTR, tok, offs_d, stride_l, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W,
            ROPE: tl.constexpr, DOT_FP32: tl.constexpr):
    """A q or k tile as a dot operand, rotated when ROPE. The rotation runs in fp32 and is
    rounded to the input dtype, exactly what the rotation pre-pass stores, so both fusions
    feed the matmuls the same operands."""
    if ROPE:
        x = rope_load(PTR, tok, offs_d, stride_l, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, False)
        x = x.to(PTR.dtype.element_ty)
        if DOT_FP32:
            x = x.to(tl.float32)
    else:
        x = load_rows(PTR, tok, offs_d, stride_l, L, D, DOT_FP32)
    return x


@triton.jit(do_not_specialize=ROPE_INTS)
def rope_rotate_kernel(
    X, Y, COS, SIN, AXIS,
    stride_xb, stride_xh, stride_xl, stride_xt,
    H, L, D, F, NPREFIX, GRID_W,
    TRANSPOSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Y = R x (q or k before attention) or Y = R^T x (dq, dk after it), in fp32, stored in
    Y's dtype into a contiguous (T, B, H, L, D) Y. Grid axis 2 picks the tensor t < T: the
    t-th source starts ``t * stride_xt`` elements after X, so q and k, two views of one packed
    qkv projection, are rotated by one launch (T = 1: ``stride_xt`` unused). Y may alias a
    contiguous X (T = 1): a program owns whole rows (BLOCK_D >= D) and reads them (both
    loads) before a barrier, then writes."""
    start_m, bh, off_b, off_h = program_tile(BLOCK_M, H)
    t = tl.program_id(2).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < L)[:, None] & (offs_d < D)[None, :]
    src = X + t * stride_xt + off_b * stride_xb + off_h * stride_xh
    y = rope_load(src, offs_m, offs_d, stride_xl, L, D, COS, SIN, AXIS, F, NPREFIX, GRID_W, TRANSPOSE)
    # In place, another warp of this program may still have to read (as a partner) an
    # element this warp is about to overwrite.
    tl.debug_barrier()
    rows = (t * tl.num_programs(1) + bh) * L * D
    tl.store(Y + rows + offs_m[:, None] * D + offs_d[None, :], y.to(Y.dtype.element_ty), mask=ok)
