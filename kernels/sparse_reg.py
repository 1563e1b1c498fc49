"""Sparse (energy-based) latent regularizer: energy + VCM terms in one pass over Z.

Z is (N, D) with D <= 128 (the paper's action dim). Forward, three launches:

1. ``_sparse_stats_kernel`` (grid: P persistent programs, P ~ number of SMs): one read of Z.
   Each program walks row blocks ``pid, pid + P, ...`` and accumulates the row energies
   (L2-norm hinge and L1, row-local), the column sums and the Gram matrix Z^T Z (``tl.dot``
   tiles, fp32 accumulation), writing one fp32 partial of each.
2. ``_sparse_finish_kernel`` (grid: D / BLOCK_I programs): sums the partials of BLOCK_I rows of
   the Gram, forms the covariance rows ``C = (G - N mu mu^T) / (N - 1)`` (stored for the
   backward), and their variance-hinge and off-diagonal-square partial sums.
3. ``_sparse_final_kernel`` (one program): the five scalars (total, energy, variance,
   covariance, mean) in a single fp32 vector.

The covariance comes from the uncentred Gram (one pass instead of two): its fp32 rounding
error grows with mean^2 / variance of a column, negligible for regularised latents
(|mean| ~ std) and checked against the centred float64 reference in the tests.

Backward, one launch (``_sparse_bwd_kernel``, one program per BLOCK_N rows): the row-local
energy gradient, the variance and mean terms as per-column vectors, and the covariance term
as ``(Z - mu) @ C_offdiag`` via ``tl.dot``; the five upstream gradients are read from device
memory (no host sync). The gradient through mu vanishes because the centred columns sum to 0.

Launch heuristics: BLOCK_D = next_pow2(D) (<= 128: the D x D fp32 Gram accumulator must stay
in registers), 32-row tiles, 16 warps; P = min(row blocks,
SMs). Dot operands are fp16/bf16 for half inputs (exact products, fp32 accumulation), fp32
otherwise (see STATS_PRECISION / BWD_PRECISION); in the interpreter, where bf16 ``tl.dot`` is
wrong, half inputs are upcast to fp32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import TRITON_PTR, interpreting, next_pow2, num_sms, triton_release
from .registry import KernelConfig, register

MAX_D = 128
MEAN_KINDS = {"signed": 0, "abs": 1, "squared": 2}
# Chosen from sm_90 builds (cuobjdump -res-usage): the 128 x 128 fp32 Gram accumulator needs
# 16 warps to stay in registers; 8 warps or 64-row stats tiles spill.
STATS_BLOCK_N = 32
# triton >= 3.9 spills the fp32 (ieee) Gram at 32 rows on sm_80 (3320 B of STACK); 16 rows
# (the tl.dot minimum) do not. The other dtypes and releases keep 32.
STATS_BLOCK_N_FP32_TRITON_3_9 = 16
BWD_BLOCK_N = 32  # 64 spills on sm_80
NUM_WARPS = 16
# fp32 inputs: the forward Gram in full fp32 ("tf32x3" spills, plain tf32 would cost ~1e-3 of
# relative accuracy on the covariance); the backward's covariance term, weighted by l_c = 1e-3,
# takes tf32.
STATS_PRECISION = "ieee"
BWD_PRECISION = "tf32"


@triton.jit
def _sparse_stats_kernel(
    z_ptr, energy_part_ptr, colsum_part_ptr, gram_part_ptr,
    N, D, stride_z, sqrt_d, l_l1, l_l2, P,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    energy = tl.zeros([BLOCK_N], dtype=tl.float32)
    colsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    gram = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    for blk in range(pid, tl.cdiv(N, BLOCK_N), P):
        rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        mask = rmask[:, None] & cmask[None, :]
        zraw = tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride_z + cols[None, :], mask=mask, other=0.0)
        z = zraw.to(tl.float32)
        sq = tl.sum(z * z, axis=1)
        row_e = l_l2 * tl.maximum(sqrt_d - sq, 0.0) + l_l1 * tl.sum(tl.abs(z), axis=1)
        energy += tl.where(rmask, row_e, 0.0)
        colsum += tl.sum(z, axis=0)
        if DOT_F32:
            gram = tl.dot(tl.trans(z), z, gram, input_precision=PRECISION)
        else:
            gram = tl.dot(tl.trans(zraw), zraw, gram)
    tl.store(energy_part_ptr + pid, tl.sum(energy, axis=0))
    tl.store(colsum_part_ptr + pid * BLOCK_D + cols, colsum)
    tl.store(gram_part_ptr + pid * BLOCK_D * BLOCK_D + cols[:, None] * BLOCK_D + cols[None, :], gram)


@triton.jit
def _sparse_finish_kernel(
    energy_part_ptr, colsum_part_ptr, gram_part_ptr, mu_ptr, cov_ptr, part2_ptr, misc_ptr,
    N, D, P, eps,
    MEAN_KIND: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    ri = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = ri < D
    colsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    g = tl.zeros([BLOCK_I, BLOCK_D], dtype=tl.float32)
    for p in range(0, P):
        colsum += tl.load(colsum_part_ptr + p * BLOCK_D + cols)
        g += tl.load(gram_part_ptr + p * BLOCK_D * BLOCK_D + ri[:, None] * BLOCK_D + cols[None, :],
                     mask=imask[:, None], other=0.0)
    mu = colsum / N
    mu_i = tl.sum(tl.where(ri[:, None] == cols[None, :], mu[None, :], 0.0), axis=1)
    mask = imask[:, None] & cmask[None, :]
    cov = tl.where(mask, (g - N * mu_i[:, None] * mu[None, :]) / (N - 1), 0.0)
    tl.store(cov_ptr + ri[:, None] * D + cols[None, :], cov, mask=mask)
    diag = ri[:, None] == cols[None, :]
    var = tl.sum(tl.where(diag, cov, 0.0), axis=1)
    hinge = tl.where(imask, tl.maximum(1.0 - tl.sqrt(tl.maximum(var, 0.0) + eps), 0.0), 0.0)
    off = tl.where(diag, 0.0, cov)
    tl.store(part2_ptr + pid * 2, tl.sum(hinge, axis=0))
    tl.store(part2_ptr + pid * 2 + 1, tl.sum(tl.sum(off * off, axis=1), axis=0))
    if pid == 0:
        tl.store(mu_ptr + cols, mu, mask=cmask)
        pp = tl.arange(0, BLOCK_P)
        e_tot = tl.zeros([BLOCK_P], dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            e_tot += tl.load(energy_part_ptr + p0 + pp, mask=p0 + pp < P, other=0.0)
        tl.store(misc_ptr, tl.sum(e_tot, axis=0) / N)
        if MEAN_KIND == 0:
            m = tl.sum(mu, axis=0) / D
        elif MEAN_KIND == 1:
            m = tl.sum(tl.abs(mu), axis=0) / D
        else:
            m = tl.sum(mu * mu, axis=0) / D
        tl.store(misc_ptr + 1, m)


@triton.jit
def _sparse_final_kernel(part2_ptr, misc_ptr, out_ptr, NPROG, D, l_v, l_c, l_m, BLOCK_P: tl.constexpr):
    pp = tl.arange(0, BLOCK_P)
    pm = pp < NPROG
    variance = tl.sum(tl.load(part2_ptr + pp * 2, mask=pm, other=0.0), axis=0) / D
    covariance = tl.sum(tl.load(part2_ptr + pp * 2 + 1, mask=pm, other=0.0), axis=0) / (D * (D - 1))
    energy = tl.load(misc_ptr)
    mean = tl.load(misc_ptr + 1)
    tl.store(out_ptr, energy + l_v * variance + l_c * covariance + l_m * mean)
    tl.store(out_ptr + 1, energy)
    tl.store(out_ptr + 2, variance)
    tl.store(out_ptr + 3, covariance)
    tl.store(out_ptr + 4, mean)


@triton.jit
def _sparse_bwd_kernel(
    z_ptr, mu_ptr, cov_ptr, gout_ptr, dz_ptr,
    N, D, stride_z, stride_dz, sqrt_d, l_l1, l_l2, l_v, l_c, l_m, eps,
    MEAN_KIND: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    mask = rmask[:, None] & cmask[None, :]
    # effective weight of each term: d total / d term * g_total + the term's own upstream grad
    g_total = tl.load(gout_ptr)
    w_e = g_total + tl.load(gout_ptr + 1)
    w_v = g_total * l_v + tl.load(gout_ptr + 2)
    w_c = g_total * l_c + tl.load(gout_ptr + 3)
    w_m = g_total * l_m + tl.load(gout_ptr + 4)

    z = tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mu = tl.load(mu_ptr + cols, mask=cmask, other=0.0)
    ci = tl.arange(0, BLOCK_D)
    cov = tl.load(cov_ptr + ci[:, None] * D + cols[None, :], mask=(ci < D)[:, None] & cmask[None, :], other=0.0)
    diag = ci[:, None] == cols[None, :]
    var = tl.sum(tl.where(diag, cov, 0.0), axis=0)
    off = tl.where(diag, 0.0, cov)

    sq = tl.sum(z * z, axis=1)
    hinge_on = (sqrt_d - sq) > 0.0
    sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
    dz = (w_e / N) * (l_l1 * sign - tl.where(hinge_on, 2.0 * l_l2, 0.0)[:, None] * z)

    std = tl.sqrt(tl.maximum(var, 0.0) + eps)
    dvar = tl.where(1.0 - std > 0.0, -0.5 / (D * std), 0.0)  # d variance_term / d var_d
    zc = tl.where(mask, z - mu[None, :], 0.0)
    dz += zc * (w_v * 2.0 * dvar / (N - 1))[None, :]

    if DOT_F32:
        prod = tl.dot(zc, off, input_precision=PRECISION)
    else:
        prod = tl.dot(zc.to(z_ptr.dtype.element_ty), off.to(z_ptr.dtype.element_ty))
    dz += prod * (w_c * 4.0 / (D * (D - 1.0) * (N - 1)))

    if MEAN_KIND == 0:
        dmean = tl.zeros([BLOCK_D], dtype=tl.float32) + 1.0
    elif MEAN_KIND == 1:
        dmean = tl.where(mu > 0, 1.0, tl.where(mu < 0, -1.0, 0.0))
    else:
        dmean = 2.0 * mu
    dz += (dmean * (w_m / (N * D)))[None, :]
    tl.store(dz_ptr + rows.to(tl.int64)[:, None] * stride_dz + cols[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=mask)


def stats_block_n(dtype: torch.dtype, version: str | None = None) -> int:
    """Rows per tile of the stats kernel for a dtype under a triton release (installed one)."""
    if dtype == torch.float32 and triton_release(version) >= (3, 9):
        return STATS_BLOCK_N_FP32_TRITON_3_9
    return STATS_BLOCK_N


def _dot_f32(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or interpreting()


def sparse_fwd(z: torch.Tensor, *, l_l1: float, l_l2: float, l_v: float, l_c: float, l_m: float, eps: float,
               mean_term: str):
    """z (N, D), D <= 128, unit stride along D. Returns out[5] = (total, energy, variance,
    covariance, mean) in fp32, and (mu, cov) for the backward."""
    n, d = z.shape
    block_d = max(16, next_pow2(d))
    block_n = stats_block_n(z.dtype)
    nblk = triton.cdiv(n, block_n)
    p = max(1, min(nblk, num_sms(z.device)))
    dev = z.device
    energy_part = torch.empty(p, device=dev, dtype=torch.float32)
    colsum_part = torch.empty((p, block_d), device=dev, dtype=torch.float32)
    gram_part = torch.empty((p, block_d, block_d), device=dev, dtype=torch.float32)
    _sparse_stats_kernel[(p,)](
        z, energy_part, colsum_part, gram_part, n, d, z.stride(0), math.sqrt(d), l_l1, l_l2, p,
        DOT_F32=_dot_f32(z.dtype), PRECISION=STATS_PRECISION, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=NUM_WARPS,
    )
    block_i = 4
    nprog = triton.cdiv(d, block_i)
    mu = torch.empty(d, device=dev, dtype=torch.float32)
    cov = torch.empty((d, d), device=dev, dtype=torch.float32)
    part2 = torch.empty((nprog, 2), device=dev, dtype=torch.float32)
    misc = torch.empty(2, device=dev, dtype=torch.float32)
    _sparse_finish_kernel[(nprog,)](
        energy_part, colsum_part, gram_part, mu, cov, part2, misc, n, d, p, eps,
        MEAN_KIND=MEAN_KINDS[mean_term], BLOCK_I=block_i, BLOCK_D=block_d, BLOCK_P=256, num_warps=4,
    )
    out = torch.empty(5, device=dev, dtype=torch.float32)
    _sparse_final_kernel[(1,)](part2, misc, out, nprog, d, l_v, l_c, l_m, BLOCK_P=next_pow2(nprog), num_warps=1)
    return out, mu, cov


def sparse_bwd(z, mu, cov, grad_out, *, l_l1, l_l2, l_v, l_c, l_m, eps, mean_term):
    """dL/dz for upstream gradients ``grad_out`` (5,) of (total, energy, variance, covariance, mean)."""
    n, d = z.shape
    block_d = max(16, next_pow2(d))
    dz = torch.empty_like(z)
    _sparse_bwd_kernel[(triton.cdiv(n, BWD_BLOCK_N),)](
        z, mu, cov, grad_out.float().contiguous(), dz, n, d, z.stride(0), dz.stride(0), math.sqrt(d),
        l_l1, l_l2, l_v, l_c, l_m, eps,
        MEAN_KIND=MEAN_KINDS[mean_term], DOT_F32=_dot_f32(z.dtype), PRECISION=BWD_PRECISION,
        BLOCK_N=BWD_BLOCK_N, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return dz


def _register():
    n, d = 100_000, 128
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        ptr = TRITON_PTR[dt]
        es = torch.finfo(dt).bits // 8
        f32 = dt == torch.float32
        tag = f"{ptr[1:]},D{d}"
        register(KernelConfig(
            name=f"sparse_stats[{tag}]", fn=_sparse_stats_kernel,
            signature={"z_ptr": ptr, "energy_part_ptr": "*fp32", "colsum_part_ptr": "*fp32",
                       "gram_part_ptr": "*fp32", "N": "i32", "D": "i32", "stride_z": "i32", "sqrt_d": "fp32",
                       "l_l1": "fp32", "l_l2": "fp32", "P": "i32"},
            constexprs={"DOT_F32": f32, "PRECISION": STATS_PRECISION, "BLOCK_N": stats_block_n(dt), "BLOCK_D": d},
            num_warps=NUM_WARPS, num_stages=1, expects_mma=not f32, ref_shape=f"N={n},D={d}",
            flops=2.0 * n * d * d + 6.0 * n * d, min_bytes=n * d * es))
        register(KernelConfig(
            name=f"sparse_bwd[{tag}]", fn=_sparse_bwd_kernel,
            signature={"z_ptr": ptr, "mu_ptr": "*fp32", "cov_ptr": "*fp32", "gout_ptr": "*fp32", "dz_ptr": ptr,
                       "N": "i32", "D": "i32", "stride_z": "i32", "stride_dz": "i32", "sqrt_d": "fp32",
                       "l_l1": "fp32", "l_l2": "fp32", "l_v": "fp32", "l_c": "fp32", "l_m": "fp32", "eps": "fp32"},
            constexprs={"MEAN_KIND": 0, "DOT_F32": f32, "PRECISION": BWD_PRECISION, "BLOCK_N": BWD_BLOCK_N,
                        "BLOCK_D": d},
            num_warps=NUM_WARPS, num_stages=1, expects_mma=True, ref_shape=f"N={n},D={d}",
            flops=2.0 * n * d * d + 12.0 * n * d, min_bytes=2.0 * n * d * es))
    register(KernelConfig(
        name=f"sparse_finish[D{d},I4]", fn=_sparse_finish_kernel,
        signature={"energy_part_ptr": "*fp32", "colsum_part_ptr": "*fp32", "gram_part_ptr": "*fp32",
                   "mu_ptr": "*fp32", "cov_ptr": "*fp32", "part2_ptr": "*fp32", "misc_ptr": "*fp32",
                   "N": "i32", "D": "i32", "P": "i32", "eps": "fp32"},
        constexprs={"MEAN_KIND": 0, "BLOCK_I": 4, "BLOCK_D": d, "BLOCK_P": 256},
        num_warps=4, num_stages=1, ref_shape=f"P=132,D={d}", min_bytes=132.0 * (d * d + d) * 4))
    register(KernelConfig(
        name=f"sparse_final[P{d // 4}]", fn=_sparse_final_kernel,
        signature={"part2_ptr": "*fp32", "misc_ptr": "*fp32", "out_ptr": "*fp32", "NPROG": "i32", "D": "i32",
                   "l_v": "fp32", "l_c": "fp32", "l_m": "fp32"},
        constexprs={"BLOCK_P": d // 4}, num_warps=1, num_stages=1, ref_shape=f"D={d}", min_bytes=(d // 2 + 7) * 4.0))


_register()
