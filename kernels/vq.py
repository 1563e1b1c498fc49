"""Vector quantizer: nearest code by L2 with tiled distances, straight-through output, losses and
per-code usage counts. The N x K distance matrix never exists.

Forward, two launches:

1. ``_vq_argmin_kernel`` (grid: row blocks x K splits): a BLOCK_N x D tile of z stays in
   registers while the program walks its share of the codebook in BLOCK_K x D tiles,
   computing ``||e||^2 - 2 z.e`` with ``tl.dot`` (``||z||^2`` is constant per row) and keeping
   a running (min, argmin) per row; it writes one (distance, index) candidate per row and
   split. Splitting K keeps the GPU busy when N is small (the paper's per-GPU batch has ~100
   latents for codebooks of up to 32768 codes).
2. ``_vq_epilogue_kernel`` (grid: row blocks): picks the best candidate (ties go to the lower
   code index, as torch.argmin), gathers the code, writes the straight-through output (the
   code itself), the per-program partial of ``sum ||z - e||^2``, the usage counts
   (``tl.atomic_add``, finite rows only) and the number of rows with a NaN / Inf (reported by
   the caller instead of being propagated into the codebook statistics).

Backward (``_vq_bwd_kernel``, one launch): ``dz = dz_q + w_commit * 2 (z - e) / (N D)`` and
``dcodebook[idx] += w_cb * 2 (e - z) / (N D)`` with fp32 atomics (order-dependent in the last
bit); the upstream gradients of both losses are read on device.

Launch heuristics (from sm_90 builds: registers, spills, HGMMA): BLOCK_D = next_pow2(D)
(<= 256); the argmin kernel takes BLOCK_N = 64 rows with half operands from N >= 1024 on (HGMMA,
96 registers), else 32 (fp32 operands at 64 rows reach 254 registers), BLOCK_K = 64 codes,
4 warps (8 with fp32 operands: tf32x3 at 4 warps reaches 255 registers), and as many K splits as fill ~2 programs per SM; the epilogue and backward take
32-row tiles with 8 warps (64 rows at 4 warps spill). Dot operands:
fp16/bf16 when both z and the codebook are (exact products, fp32 accumulation), else fp32 with
``input_precision=FP32_PRECISION`` ("tf32x3": three TF32 tensor-core products, within a few
fp32 ulps of the exact distance, so the indices match the fp32 reference except at ties closer
than that; "ieee" would run on the FMA units, several times slower at K = 32768).
Under the interpreter half operands are upcast (bf16 ``tl.dot`` is wrong there).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TRITON_PTR, interpreting, next_pow2, num_sms
from .registry import KernelConfig, register

MAX_D = 256
BLOCK_K = 64
FP32_PRECISION = "tf32x3"
EPI_BLOCK_N = 32
EPI_WARPS = 8


@triton.jit
def _vq_argmin_kernel(
    z_ptr, cb_ptr, cbsq_ptr, cand_d_ptr, cand_i_ptr,
    N, K, D, K_PER_SPLIT, SPLIT, stride_z, stride_cb,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < N
    cmask = cols < D
    z = tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride_z + cols[None, :],
                mask=rmask[:, None] & cmask[None, :], other=0.0)
    if DOT_F32:
        z = z.to(tl.float32)
    else:
        z = z.to(cb_ptr.dtype.element_ty)
    best_d = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_i = tl.zeros([BLOCK_N], dtype=tl.int32)
    k_lo = split * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        kmask = codes < k_hi
        e = tl.load(cb_ptr + codes.to(tl.int64)[:, None] * stride_cb + cols[None, :],
                    mask=kmask[:, None] & cmask[None, :], other=0.0)
        if DOT_F32:
            e = e.to(tl.float32)
            ze = tl.dot(z, tl.trans(e), input_precision=PRECISION)
        else:
            ze = tl.dot(z, tl.trans(e))
        esq = tl.load(cbsq_ptr + codes, mask=kmask, other=0.0)
        dist = tl.where(kmask[None, :], esq[None, :] - 2.0 * ze, float("inf"))
        tile_d = tl.min(dist, axis=1)
        tile_i = tl.argmin(dist, axis=1).to(tl.int32) + k0
        better = tile_d < best_d  # strict: the earlier (lower) index keeps a tie
        best_i = tl.where(better, tile_i, best_i)
        best_d = tl.where(better, tile_d, best_d)
    out = rows.to(tl.int64) * SPLIT + split
    tl.store(cand_d_ptr + out, best_d, mask=rmask)
    tl.store(cand_i_ptr + out, best_i, mask=rmask)


@triton.jit
def _program_rows(N, BLOCK_N: tl.constexpr):
    """This program's id, which of its BLOCK_N rows exist, and their indices as int64."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    return pid, rows < N, rows.to(tl.int64)


@triton.jit
def _vq_epilogue_kernel(
    z_ptr, cb_ptr, cand_d_ptr, cand_i_ptr, idx_ptr, zq_ptr, part_ptr, counts_ptr, bad_ptr,
    N, D, SPLIT, stride_z, stride_cb, stride_zq,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid, rmask, r64 = _program_rows(N, BLOCK_N)
    ss = tl.arange(0, BLOCK_S)
    smask = rmask[:, None] & (ss < SPLIT)[None, :]
    cd = tl.load(cand_d_ptr + r64[:, None] * SPLIT + ss[None, :], mask=smask, other=float("inf"))
    ci = tl.load(cand_i_ptr + r64[:, None] * SPLIT + ss[None, :], mask=smask, other=0)
    pick = tl.argmin(cd, axis=1)  # splits are in code order: the lower split wins a tie
    idx = tl.sum(tl.where(ss[None, :] == pick[:, None], ci, 0), axis=1)
    cols = tl.arange(0, BLOCK_D)
    mask = rmask[:, None] & (cols < D)[None, :]
    z = tl.load(z_ptr + r64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    e = tl.load(cb_ptr + idx.to(tl.int64)[:, None] * stride_cb + cols[None, :], mask=mask, other=0.0)
    tl.store(zq_ptr + r64[:, None] * stride_zq + cols[None, :], e.to(zq_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + r64, idx.to(tl.int64), mask=rmask)
    diff = tl.where(mask, z - e.to(tl.float32), 0.0)
    sq = tl.sum(diff * diff, axis=1)
    # a NaN or Inf anywhere in the row makes its squared error NaN or Inf
    finite = sq < float("inf")
    tl.store(part_ptr + pid, tl.sum(tl.where(rmask, sq, 0.0), axis=0))
    tl.atomic_add(counts_ptr + idx, tl.full([BLOCK_N], 1, tl.int32), mask=rmask & finite)
    tl.store(bad_ptr + pid, tl.sum((rmask & ~finite).to(tl.int32), axis=0))


@triton.jit
def _vq_bwd_kernel(
    z_ptr, cb_ptr, idx_ptr, dzq_ptr, gloss_ptr, dz_ptr, dcb_ptr,
    N, D, stride_z, stride_cb, stride_dzq, stride_dz, scale, commitment,
    HAS_DZQ: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid, rmask, r64 = _program_rows(N, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    mask = rmask[:, None] & (cols < D)[None, :]
    idx = tl.load(idx_ptr + r64, mask=rmask, other=0)
    z = tl.load(z_ptr + r64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    e = tl.load(cb_ptr + idx[:, None] * stride_cb + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g_cb = tl.load(gloss_ptr).to(tl.float32) * scale
    g_commit = tl.load(gloss_ptr + 1).to(tl.float32) * (scale * commitment)
    d = z - e
    dz = g_commit * d
    if HAS_DZQ:
        dz += tl.load(dzq_ptr + r64[:, None] * stride_dzq + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(dz_ptr + r64[:, None] * stride_dz + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.atomic_add(dcb_ptr + idx[:, None] * D + cols[None, :], -g_cb * d, mask=mask)


def _dot_f32(z: torch.Tensor, cb: torch.Tensor) -> bool:
    return interpreting() or torch.float32 in (z.dtype, cb.dtype) or z.dtype != cb.dtype


def _argmin_warps(dot_f32: bool) -> int:
    return 8 if dot_f32 else 4  # the tf32x3 dot at 4 warps sits at the 255-register cap


def _block_n(n: int, dot_f32: bool) -> int:
    return 64 if n >= 1024 and not dot_f32 else 32


def vq_fwd(z: torch.Tensor, codebook: torch.Tensor):
    """z (N, D), codebook (K, D), unit stride along D. Returns (idx int64 (N,), z_q (N, D) in
    z's dtype, sum of squared errors (fp32 0-dim), counts int32 (K,), non-finite row count (0-dim))."""
    n, d = z.shape
    k = codebook.shape[0]
    dev = z.device
    block_d = max(16, next_pow2(d))
    dot_f32 = _dot_f32(z, codebook)
    block_n = _block_n(n, dot_f32)
    row_blocks = triton.cdiv(n, block_n)
    k_blocks = triton.cdiv(k, BLOCK_K)
    split = max(1, min(k_blocks, (2 * num_sms(dev)) // row_blocks, 64))
    k_per_split = BLOCK_K * triton.cdiv(k_blocks, split)
    split = triton.cdiv(k, k_per_split)
    cbsq = codebook.float().pow(2).sum(1)
    cand_d = torch.empty((n, split), device=dev, dtype=torch.float32)
    cand_i = torch.empty((n, split), device=dev, dtype=torch.int32)
    _vq_argmin_kernel[(row_blocks, split)](
        z, codebook, cbsq, cand_d, cand_i, n, k, d, k_per_split, split, z.stride(0), codebook.stride(0),
        DOT_F32=dot_f32, PRECISION=FP32_PRECISION, BLOCK_N=block_n, BLOCK_K=BLOCK_K, BLOCK_D=block_d,
        num_warps=_argmin_warps(dot_f32), num_stages=3,
    )
    idx = torch.empty(n, device=dev, dtype=torch.int64)
    zq = torch.empty((n, d), device=dev, dtype=z.dtype)
    epi_blocks = triton.cdiv(n, EPI_BLOCK_N)
    part = torch.empty(epi_blocks, device=dev, dtype=torch.float32)
    bad = torch.empty(epi_blocks, device=dev, dtype=torch.int32)
    counts = torch.zeros(k, device=dev, dtype=torch.int32)
    _vq_epilogue_kernel[(epi_blocks,)](
        z, codebook, cand_d, cand_i, idx, zq, part, counts, bad, n, d, split, z.stride(0), codebook.stride(0),
        zq.stride(0), BLOCK_N=EPI_BLOCK_N, BLOCK_S=next_pow2(split), BLOCK_D=block_d, num_warps=EPI_WARPS,
    )
    return idx, zq, part.sum(), counts, bad.sum()


def vq_bwd(z, codebook, idx, dzq, gloss, commitment: float):
    """dz (z's dtype) and dcodebook (fp32 (K, D)); ``gloss`` = upstream grads of (codebook_loss,
    commitment_loss) as a (2,) fp32 tensor, ``dzq`` may be None."""
    n, d = z.shape
    dz = torch.empty_like(z)
    dcb = torch.zeros(codebook.shape, device=z.device, dtype=torch.float32)
    _vq_bwd_kernel[(triton.cdiv(n, EPI_BLOCK_N),)](
        z, codebook, idx, dzq if dzq is not None else z, gloss, dz, dcb, n, d, z.stride(0), codebook.stride(0),
        dzq.stride(0) if dzq is not None else 0, dz.stride(0), 2.0 / (n * d), commitment,
        HAS_DZQ=dzq is not None, BLOCK_N=EPI_BLOCK_N, BLOCK_D=max(16, next_pow2(d)), num_warps=EPI_WARPS,
    )
    return dz, dcb


def _register():
    n, k, d = 8192, 32768, 128
    for zt, ct in ((torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float32, torch.float32)):
        zp, cp = TRITON_PTR[zt], TRITON_PTR[ct]
        f32 = torch.float32 in (zt, ct)
        for block_n in ((32,) if f32 else (32, 64)):
            tag = f"z{zp[1:]},cb{cp[1:]},N{block_n},K{BLOCK_K},D{d}"
            register(KernelConfig(
                name=f"vq_argmin[{tag}]", fn=_vq_argmin_kernel,
                signature={"z_ptr": zp, "cb_ptr": cp, "cbsq_ptr": "*fp32", "cand_d_ptr": "*fp32", "cand_i_ptr": "*i32",
                           "N": "i32", "K": "i32", "D": "i32", "K_PER_SPLIT": "i32", "SPLIT": "i32",
                           "stride_z": "i32", "stride_cb": "i32"},
                constexprs={"DOT_F32": f32, "PRECISION": FP32_PRECISION, "BLOCK_N": block_n, "BLOCK_K": BLOCK_K,
                            "BLOCK_D": d},
                num_warps=_argmin_warps(f32), num_stages=3, expects_mma=True,
                ref_shape=f"N={n},K={k},D={d}",
                flops=2.0 * n * k * d, min_bytes=n * d * (zt.itemsize) + k * d * ct.itemsize + 8.0 * n))
        tag = f"z{zp[1:]},cb{cp[1:]},N{EPI_BLOCK_N},D{d}"
        register(KernelConfig(
            name=f"vq_epilogue[{tag}]", fn=_vq_epilogue_kernel,
            signature={"z_ptr": zp, "cb_ptr": cp, "cand_d_ptr": "*fp32", "cand_i_ptr": "*i32", "idx_ptr": "*i64",
                       "zq_ptr": zp, "part_ptr": "*fp32", "counts_ptr": "*i32", "bad_ptr": "*i32", "N": "i32",
                       "D": "i32", "SPLIT": "i32", "stride_z": "i32", "stride_cb": "i32", "stride_zq": "i32"},
            constexprs={"BLOCK_N": EPI_BLOCK_N, "BLOCK_S": 64, "BLOCK_D": d}, num_warps=EPI_WARPS, num_stages=1,
            ref_shape=f"N={n},K={k},D={d},split=64", min_bytes=n * d * (2 * zt.itemsize + ct.itemsize) + 8.0 * n))
        register(KernelConfig(
            name=f"vq_bwd[{tag}]", fn=_vq_bwd_kernel,
            signature={"z_ptr": zp, "cb_ptr": cp, "idx_ptr": "*i64", "dzq_ptr": zp, "gloss_ptr": "*fp32",
                       "dz_ptr": zp, "dcb_ptr": "*fp32", "N": "i32", "D": "i32", "stride_z": "i32",
                       "stride_cb": "i32", "stride_dzq": "i32", "stride_dz": "i32", "scale": "fp32",
                       "commitment": "fp32"},
            constexprs={"HAS_DZQ": True, "BLOCK_N": EPI_BLOCK_N, "BLOCK_D": d}, num_warps=EPI_WARPS, num_stages=1,
            ref_shape=f"N={n},K={k},D={d}", min_bytes=n * d * (3 * zt.itemsize + ct.itemsize + 4) + 8.0 * n))

_register()
