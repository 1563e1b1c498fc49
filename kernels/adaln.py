"""Frame-wise AdaLN: LayerNorm with per-frame (shift, scale), and the per-frame gated residual.

Tokens are rows of x viewed as (R, D) with R = B * T * F (F = frame_len tokens per frame), so
row r belongs to frame ``r // F`` and the modulation rows are (B * T, D). The grid is
(frames, chunks): program (f, c) handles rows ``c * CHUNK .. (c + 1) * CHUNK`` of frame f, so
the frame's shift/scale/gate row is loaded once per program and the backward reduces
dshift / dscale / dgate over the frame's tokens in registers, writing one fp32 partial per
chunk (summed by the caller: a deterministic, atomic-free reduction).

Launch heuristic: ``BLOCK_D = next_pow2(D)`` (one row per tile), ``BLOCK_M`` rows per inner
step so a tile holds ~4096 elements (8 warps from 4096 elements: at 4 warps the
sm_90 build of the gated residual spills), and ``CHUNK`` (a multiple of BLOCK_M) chosen by the caller
so frames * chunks covers the GPU at least ~4 programs per SM. The AdaLN backward takes half
the rows with 4 warps (``_bwd_tile``). Registered (static check): width 1024 in bf16 and fp32, the
autocast mix, and bf16 at widths 384 and 1408 (BLOCK_D 512 and 2048).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TRITON_PTR, next_pow2, num_sms, rows_per_block, triton_release
from .registry import KernelConfig, register

MAX_D = 16384


@triton.jit
def _frame_chunk(D, BLOCK_D: tl.constexpr):
    """This program's frame and chunk (grid axes 0 and 1), the channels and which of them exist."""
    frame = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    return frame, chunk, cols, cols < D


@triton.jit
def _frame_row(ptr, frame, stride_m, cols, cmask):
    """One frame's modulation row (shift, scale or gate) in fp32."""
    return tl.load(ptr + frame.to(tl.int64) * stride_m + cols, mask=cmask, other=0.0).to(tl.float32)


@triton.jit
def _chunk_rows(frame, chunk, F, CHUNK, start, cmask, BLOCK_M: tl.constexpr):
    """Rows ``start ...`` (BLOCK_M of them) of this program's chunk of its frame, tokens
    [chunk * CHUNK, min((chunk + 1) * CHUNK, F)): which lie in it, their row index in the (R, D)
    view (int64) and the element mask. Every kernel here walks its chunk with this one step."""
    lo = chunk * CHUNK
    local = lo + start + tl.arange(0, BLOCK_M)
    rmask = local < tl.minimum(lo + CHUNK, F)
    rows = frame.to(tl.int64) * F + local
    return rmask, rows, rmask[:, None] & cmask[None, :]


@triton.jit
def _load_rows(ptr, rows, stride, cols, mask):
    """A (rows, channels) tile in fp32, zeros outside ``mask``."""
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _adaln_fwd_kernel(
    x_ptr, shift_ptr, scale_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    F, D, CHUNK, stride_x, stride_m, stride_y, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    frame, chunk, cols, cmask = _frame_chunk(D, BLOCK_D)
    shift = _frame_row(shift_ptr, frame, stride_m, cols, cmask)
    scale1 = 1.0 + _frame_row(scale_ptr, frame, stride_m, cols, cmask)
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_B:
        bb = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    for start in range(0, CHUNK, BLOCK_M):
        rmask, rows, mask = _chunk_rows(frame, chunk, F, CHUNK, start, cmask, BLOCK_M)
        x = _load_rows(x_ptr, rows, stride_x, cols, mask)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / D + eps)
        y = xc * rstd[:, None]
        if HAS_W:
            y = y * w[None, :]
        if HAS_B:
            y = y + bb[None, :]
        y = y * scale1[None, :] + shift[None, :]
        tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + rows, mean, mask=rmask)
        tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def _adaln_bwd_kernel(
    x_ptr, scale_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dy_ptr, dx_ptr,
    dshift_part_ptr, dscale_part_ptr, dw_part_ptr, db_part_ptr,
    F, D, CHUNK, NCHUNK, stride_x, stride_m, stride_dy, stride_dx,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    frame, chunk, cols, cmask = _frame_chunk(D, BLOCK_D)
    scale1 = 1.0 + _frame_row(scale_ptr, frame, stride_m, cols, cmask)
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_B:
        bb = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dshift = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale = tl.zeros([BLOCK_D], dtype=tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK_M):
        rmask, rows, mask = _chunk_rows(frame, chunk, F, CHUNK, start, cmask, BLOCK_M)
        x = _load_rows(x_ptr, rows, stride_x, cols, mask)
        dy = _load_rows(dy_ptr, rows, stride_dy, cols, mask)
        mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        yln = xhat
        if HAS_W:
            yln = yln * w[None, :]
        if HAS_B:
            yln = yln + bb[None, :]
        dshift += tl.sum(dy, axis=0)
        dscale += tl.sum(dy * yln, axis=0)
        g = dy * scale1[None, :]  # gradient w.r.t. the LayerNorm output
        if HAS_W:
            dw += tl.sum(g * xhat, axis=0)
            g = g * w[None, :]
        if HAS_B:
            db += tl.sum(dy * scale1[None, :], axis=0)
        c1 = tl.sum(g * xhat, axis=1) / D
        c2 = tl.sum(g, axis=1) / D
        dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(dx_ptr + rows[:, None] * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
    part = (frame.to(tl.int64) * NCHUNK + chunk) * D
    tl.store(dshift_part_ptr + part + cols, dshift, mask=cmask)
    tl.store(dscale_part_ptr + part + cols, dscale, mask=cmask)
    if HAS_W:
        tl.store(dw_part_ptr + part + cols, dw, mask=cmask)
    if HAS_B:
        tl.store(db_part_ptr + part + cols, db, mask=cmask)


@triton.jit
def _gated_residual_fwd_kernel(
    x_ptr, br_ptr, gate_ptr, out_ptr, F, D, CHUNK, stride_x, stride_br, stride_m, stride_o,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    frame, chunk, cols, cmask = _frame_chunk(D, BLOCK_D)
    gate = _frame_row(gate_ptr, frame, stride_m, cols, cmask)
    for start in range(0, CHUNK, BLOCK_M):
        _, rows, mask = _chunk_rows(frame, chunk, F, CHUNK, start, cmask, BLOCK_M)
        x = _load_rows(x_ptr, rows, stride_x, cols, mask)
        br = _load_rows(br_ptr, rows, stride_br, cols, mask)
        out = x + gate[None, :] * br
        tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_bwd_kernel(
    br_ptr, gate_ptr, dout_ptr, dbr_ptr, dgate_part_ptr, F, D, CHUNK, NCHUNK,
    stride_br, stride_m, stride_do, stride_dbr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    frame, chunk, cols, cmask = _frame_chunk(D, BLOCK_D)
    gate = _frame_row(gate_ptr, frame, stride_m, cols, cmask)
    dgate = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK_M):
        _, rows, mask = _chunk_rows(frame, chunk, F, CHUNK, start, cmask, BLOCK_M)
        br = _load_rows(br_ptr, rows, stride_br, cols, mask)
        do = _load_rows(dout_ptr, rows, stride_do, cols, mask)
        dgate += tl.sum(do * br, axis=0)
        tl.store(dbr_ptr + rows[:, None] * stride_dbr + cols[None, :],
                 (do * gate[None, :]).to(dbr_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_part_ptr + (frame.to(tl.int64) * NCHUNK + chunk) * D + cols, dgate, mask=cmask)


def _launch_params(frames: int, frame_len: int, d: int, device: torch.device):
    block_d = next_pow2(d)
    block_m = rows_per_block(block_d, 4096)
    num_warps = 8 if block_m * block_d >= 4096 else 4
    # enough (frame, chunk) programs to fill the GPU: ~4 per SM
    want = max(1, (4 * num_sms(device) + frames - 1) // frames)
    steps = triton.cdiv(frame_len, block_m)
    chunk = block_m * triton.cdiv(steps, min(want, steps))
    return block_m, block_d, chunk, triton.cdiv(frame_len, chunk), num_warps


def _bwd_tile(block_m: int, block_d: int, version: str | None = None):
    """Rows and warps of the AdaLN backward: half the forward's rows (it holds x, dy, xhat and
    the LayerNorm-output gradient per element) with 4 warps; found spill-free on sm_80 and
    sm_90 for D = 512..2048 where 8 warps left a small STACK on one of them. Under triton
    releases before 3.7 (the GPU image's 3.6) a quarter of the rows: the fp32-input, bf16-
    modulation build at D 1024 with 2 rows spilled 8 B on sm_90."""
    rows = block_m // 4 if triton_release(version) < (3, 7) else block_m // 2
    return max(1, rows), (4 if block_d <= 2048 else 8)


def adaln_fwd(x2d, shift2d, scale2d, weight, bias, frame_len: int, eps: float, out_dtype=None):
    """x2d (R, D), shift2d/scale2d (R // frame_len, D), all with unit stride along D; each
    tensor may have its own dtype (loads upcast to fp32), y is written in ``out_dtype``."""
    r, d = x2d.shape
    frames = r // frame_len
    block_m, block_d, chunk, nchunk, warps = _launch_params(frames, frame_len, d, x2d.device)
    y = torch.empty(x2d.shape, device=x2d.device, dtype=out_dtype or x2d.dtype)
    mean = torch.empty(r, device=x2d.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _adaln_fwd_kernel[(frames, nchunk)](
        x2d, shift2d, scale2d, weight if weight is not None else x2d, bias if bias is not None else x2d,
        y, mean, rstd, frame_len, d, chunk, x2d.stride(0), shift2d.stride(0), y.stride(0), eps,
        HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
    )
    return y, mean, rstd


def adaln_bwd(x2d, scale2d, weight, bias, mean, rstd, dy2d, frame_len: int):
    """Returns dx (R, D) and fp32 partials (frames, nchunk, D) of dshift, dscale, dweight, dbias."""
    r, d = x2d.shape
    frames = r // frame_len
    block_m, block_d, chunk, nchunk, warps = _launch_params(frames, frame_len, d, x2d.device)
    dx = torch.empty_like(x2d)
    part = torch.empty((4 if weight is not None or bias is not None else 2, frames, nchunk, d),
                       device=x2d.device, dtype=torch.float32)
    dw_part = part[2] if weight is not None else part[0]
    db_part = part[3] if bias is not None else part[0]
    _adaln_bwd_kernel[(frames, nchunk)](
        x2d, scale2d, weight if weight is not None else x2d, bias if bias is not None else x2d, mean, rstd,
        dy2d, dx, part[0], part[1], dw_part, db_part,
        frame_len, d, chunk, nchunk, x2d.stride(0), scale2d.stride(0), dy2d.stride(0), dx.stride(0),
        HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_M=_bwd_tile(block_m, block_d)[0],
        BLOCK_D=block_d, num_warps=_bwd_tile(block_m, block_d)[1],
    )
    dshift, dscale = part[0].sum(1), part[1].sum(1)
    dw = part[2].sum((0, 1)) if weight is not None else None
    db = part[3].sum((0, 1)) if bias is not None else None
    return dx, dshift, dscale, dw, db


def gated_residual_fwd(x2d, br2d, gate2d, frame_len: int, out_dtype=None):
    r, d = x2d.shape
    frames = r // frame_len
    block_m, block_d, chunk, nchunk, warps = _launch_params(frames, frame_len, d, x2d.device)
    out = torch.empty(x2d.shape, device=x2d.device, dtype=out_dtype or x2d.dtype)
    _gated_residual_fwd_kernel[(frames, nchunk)](
        x2d, br2d, gate2d, out, frame_len, d, chunk, x2d.stride(0), br2d.stride(0), gate2d.stride(0),
        out.stride(0), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
    )
    return out


def gated_residual_bwd(br2d, gate2d, dout2d, frame_len: int):
    """Returns dbranch (R, D) and dgate (frames, D) in fp32."""
    r, d = br2d.shape
    frames = r // frame_len
    block_m, block_d, chunk, nchunk, warps = _launch_params(frames, frame_len, d, br2d.device)
    dbr = torch.empty_like(br2d)
    part = torch.empty((frames, nchunk, d), device=br2d.device, dtype=torch.float32)
    _gated_residual_bwd_kernel[(frames, nchunk)](
        br2d, gate2d, dout2d, dbr, part, frame_len, d, chunk, nchunk,
        br2d.stride(0), gate2d.stride(0), dout2d.stride(0), dbr.stride(0),
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
    )
    return dbr, part.sum(1)


def _register():
    # The paper's predictor block: B=8, T=8 frames of F=256 tokens, width 1024 in bf16 and fp32; bf16
    # also at widths 384 (small predictors, BLOCK_D 512) and 1408 (ViT-g, BLOCK_D 2048); and the
    # autocast mix (fp32 residual stream, bf16 modulation and branch, fp32 output).
    b, t, f = 8, 8, 256
    r = b * t * f
    bf16, fp32 = torch.bfloat16, torch.float32
    # (fp16 shares every code path with bf16 and is left out to keep the CI compile gate short)
    plan = [(1024, bf16, bf16), (1024, fp32, fp32), (384, bf16, bf16), (1408, bf16, bf16), (1024, fp32, bf16)]
    for d, xt, mt in plan:
        yt = torch.promote_types(xt, mt)
        px, pm, py = TRITON_PTR[xt], TRITON_PTR[mt], TRITON_PTR[yt]
        es = yt.itemsize
        block_d = next_pow2(d)
        block_m = rows_per_block(block_d, 4096)
        warps = 8 if block_m * block_d >= 4096 else 4
        dts = px[1:] if xt == mt else f"x{px[1:]},mod{pm[1:]}"
        tag = f"{dts},D{block_d},M{block_m}"
        bm_bwd, warps_bwd = _bwd_tile(block_m, block_d)
        shape = f"B={b},T={t},F={f},D={d}"
        for has_w in (False, True):
            pw = px  # LayerNorm weight / bias in the residual stream's dtype (or x itself as a dummy)
            sig = {"x_ptr": px, "shift_ptr": pm, "scale_ptr": pm, "w_ptr": pw, "b_ptr": pw, "y_ptr": py,
                   "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "F": "i32", "D": "i32", "CHUNK": "i32",
                   "stride_x": "i32", "stride_m": "i32", "stride_y": "i32", "eps": "fp32"}
            register(KernelConfig(
                name=f"adaln_fwd[{'affine' if has_w else 'plain'},{tag}]", fn=_adaln_fwd_kernel, signature=sig,
                constexprs={"HAS_W": has_w, "HAS_B": has_w, "BLOCK_M": block_m, "BLOCK_D": block_d},
                num_warps=warps, num_stages=1, ref_shape=shape,
                flops=10.0 * r * d, min_bytes=r * d * (xt.itemsize + es) + 8.0 * r))
            sig = {"x_ptr": px, "scale_ptr": pm, "w_ptr": pw, "b_ptr": pw, "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                   "dy_ptr": py, "dx_ptr": px, "dshift_part_ptr": "*fp32", "dscale_part_ptr": "*fp32",
                   "dw_part_ptr": "*fp32", "db_part_ptr": "*fp32", "F": "i32", "D": "i32", "CHUNK": "i32",
                   "NCHUNK": "i32", "stride_x": "i32", "stride_m": "i32", "stride_dy": "i32", "stride_dx": "i32"}
            register(KernelConfig(
                name=f"adaln_bwd[{'affine' if has_w else 'plain'},{dts},D{block_d},M{bm_bwd}]",
                fn=_adaln_bwd_kernel, signature=sig,
                constexprs={"HAS_W": has_w, "HAS_B": has_w, "BLOCK_M": bm_bwd, "BLOCK_D": block_d},
                num_warps=warps_bwd, num_stages=1, ref_shape=shape,
                flops=20.0 * r * d, min_bytes=r * d * (2 * xt.itemsize + es) + 8.0 * r))
        sig = {"x_ptr": px, "br_ptr": pm, "gate_ptr": pm, "out_ptr": py, "F": "i32", "D": "i32", "CHUNK": "i32",
               "stride_x": "i32", "stride_br": "i32", "stride_m": "i32", "stride_o": "i32"}
        register(KernelConfig(
            name=f"gated_residual_fwd[{tag}]", fn=_gated_residual_fwd_kernel, signature=sig,
            constexprs={"BLOCK_M": block_m, "BLOCK_D": block_d}, num_warps=warps, num_stages=1,
            ref_shape=shape, flops=2.0 * r * d, min_bytes=r * d * (xt.itemsize + mt.itemsize + es)))
        sig = {"br_ptr": pm, "gate_ptr": pm, "dout_ptr": py, "dbr_ptr": pm, "dgate_part_ptr": "*fp32", "F": "i32",
               "D": "i32", "CHUNK": "i32", "NCHUNK": "i32", "stride_br": "i32", "stride_m": "i32",
               "stride_do": "i32", "stride_dbr": "i32"}
        register(KernelConfig(
            name=f"gated_residual_bwd[{tag}]", fn=_gated_residual_bwd_kernel, signature=sig,
            constexprs={"BLOCK_M": block_m, "BLOCK_D": block_d}, num_warps=warps, num_stages=1,
            ref_shape=shape, flops=4.0 * r * d, min_bytes=r * d * (2 * mt.itemsize + es)))

_register()
