"""Noisy (VAE-like) latents: reparameterised sample with in-kernel RNG and the KL to N(0, I).

Forward (one pass over mu, logvar): ``z = mu + exp(logvar / 2) * eps`` with
``eps = normal(seed, row * D + col)`` (Philox: reproducible for a seed, independent of the
launch configuration), and per-program partial sums of
``0.5 * (mu^2 + exp(logvar) - 1 - logvar) / N`` (reduced by the caller).
The seed is read from a one-element int64 tensor (``seed_ptr``), so the caller can draw it on
the device without a ``.item()`` (a host sync, and a graph break under ``torch.compile``).
Backward (one pass): eps is regenerated from the seed instead of being stored, so nothing but
the inputs is kept for the backward; the KL's upstream gradient is read on device.

mu and logvar may be strided views (e.g. the two halves of one IDM head output): only the
last dim must have unit stride. Launch heuristic: BLOCK_D = next_pow2(D), ~1024 elements per
tile (Philox + Box-Muller is register-hungry: 4096-element tiles reach 255 registers on sm_90),
4 warps.

The normal sample is Box-Muller on Philox uniforms (``tl.rand4x``), as ``tl.randn`` does, but
on the GPU the cosine is PTX's ``cos.approx.f32`` (abs. error ~1e-6 on [-pi, pi]): libdevice's
accurate cosine carries a 32-byte local stack for its huge-argument range reduction (a bare
``tl.randn`` kernel compiles to STACK:32), which the static check counts as a spill. The
interpreter uses ``tl.cos``; both draw the same uniforms for a seed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TRITON_PTR, interpreting, next_pow2, rows_per_block
from .registry import KernelConfig, register


@triton.jit
def _normal(seed, offsets, FAST_COS: tl.constexpr):
    u1, u2, _, _ = tl.rand4x(seed, offsets)
    r = tl.sqrt(-2.0 * tl.log(tl.maximum(u1, 1.0e-7)))
    th = 6.283185307179586 * (u2 - 0.5)  # in [-pi, pi), where cos.approx is accurate
    if FAST_COS:
        c = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [th], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        c = tl.cos(th)
    return r * c


@triton.jit
def _mu_logvar_rows(mu_ptr, lv_ptr, N, D, stride_mu, stride_lv, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's BLOCK_M rows of mu and logvar in fp32 (zeros outside N x D), with the
    program id, row and column indices, the element mask and the rows as an int64 column."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < N)[:, None] & (cols < D)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    mu = tl.load(mu_ptr + r64 * stride_mu + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    lv = tl.load(lv_ptr + r64 * stride_lv + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return pid, rows, cols, mask, r64, mu, lv


@triton.jit
def _gaussian_fwd_kernel(
    mu_ptr, lv_ptr, z_ptr, part_ptr, N, D, stride_mu, stride_lv, stride_z, seed_ptr,
    SAMPLE: tl.constexpr, FAST_COS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid, rows, cols, mask, r64, mu, lv = _mu_logvar_rows(mu_ptr, lv_ptr, N, D, stride_mu, stride_lv, BLOCK_M, BLOCK_D)
    kl = tl.where(mask, 0.5 * (mu * mu + tl.exp(lv) - 1.0 - lv), 0.0)
    tl.store(part_ptr + pid, tl.sum(tl.sum(kl, axis=1), axis=0) / N)
    if SAMPLE:
        eps = _normal(tl.load(seed_ptr), rows[:, None] * D + cols[None, :], FAST_COS)
        z = mu + tl.exp(0.5 * lv) * eps
        tl.store(z_ptr + r64 * stride_z + cols[None, :], z.to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gaussian_bwd_kernel(
    mu_ptr, lv_ptr, dz_ptr, gkl_ptr, dmu_ptr, dlv_ptr, N, D, stride_mu, stride_lv, stride_dz, stride_d, seed_ptr,
    SAMPLE: tl.constexpr, FAST_COS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid, rows, cols, mask, r64, mu, lv = _mu_logvar_rows(mu_ptr, lv_ptr, N, D, stride_mu, stride_lv, BLOCK_M, BLOCK_D)
    gkl = tl.load(gkl_ptr).to(tl.float32) / N
    dmu = gkl * mu
    dlv = gkl * 0.5 * (tl.exp(lv) - 1.0)
    if SAMPLE:
        dz = tl.load(dz_ptr + r64 * stride_dz + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        eps = _normal(tl.load(seed_ptr), rows[:, None] * D + cols[None, :], FAST_COS)
        dmu += dz
        dlv += dz * 0.5 * tl.exp(0.5 * lv) * eps
    tl.store(dmu_ptr + r64 * stride_d + cols[None, :], dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
    tl.store(dlv_ptr + r64 * stride_d + cols[None, :], dlv.to(dlv_ptr.dtype.element_ty), mask=mask)



def _params(d: int):
    block_d = next_pow2(d)
    return rows_per_block(block_d, 1024), block_d


def gaussian_fwd(mu: torch.Tensor, logvar: torch.Tensor, seed: torch.Tensor, sample: bool):
    """Returns (z or None, kl) for 2-D mu/logvar with unit stride along D; ``seed`` a one-element
    int64 tensor on mu's device holding a value in [0, 2**31)."""
    n, d = mu.shape
    block_m, block_d = _params(d)
    grid = (triton.cdiv(n, block_m),)
    part = torch.empty(grid[0], device=mu.device, dtype=torch.float32)
    z = torch.empty((n, d), device=mu.device, dtype=mu.dtype) if sample else part
    _gaussian_fwd_kernel[grid](
        mu, logvar, z, part, n, d, mu.stride(0), logvar.stride(0), z.stride(0) if sample else 0,
        seed,
        SAMPLE=sample, FAST_COS=not interpreting(), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4,
    )
    return (z if sample else None), part.sum()


def gaussian_bwd(mu, logvar, dz, gkl, seed: torch.Tensor):
    """dmu, dlogvar; ``dz`` None when z was not sampled (KL only)."""
    n, d = mu.shape
    block_m, block_d = _params(d)
    dmu = torch.empty((n, d), device=mu.device, dtype=mu.dtype)
    dlv = torch.empty((n, d), device=mu.device, dtype=logvar.dtype)
    sample = dz is not None
    _gaussian_bwd_kernel[(triton.cdiv(n, block_m),)](
        mu, logvar, dz if sample else mu, gkl.reshape(1).float(), dmu, dlv, n, d, mu.stride(0), logvar.stride(0),
        dz.stride(0) if sample else 0, dmu.stride(0), seed,
        SAMPLE=sample, FAST_COS=not interpreting(), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4,
    )
    return dmu, dlv


def _register():
    n, d = 100_000, 128
    block_m, block_d = _params(d)
    for dt in (torch.bfloat16, torch.float32):  # fp16 shares the bf16 code path
        p = TRITON_PTR[dt]
        es = torch.finfo(dt).bits // 8
        for sample in (True, False):
            tag = f"{'sample' if sample else 'kl'},{p[1:]},D{block_d}"
            register(KernelConfig(
                name=f"gaussian_fwd[{tag}]", fn=_gaussian_fwd_kernel,
                signature={"mu_ptr": p, "lv_ptr": p, "z_ptr": p, "part_ptr": "*fp32", "N": "i32", "D": "i32",
                           "stride_mu": "i32", "stride_lv": "i32", "stride_z": "i32", "seed_ptr": "*i64"},
                constexprs={"SAMPLE": sample, "FAST_COS": True, "BLOCK_M": block_m, "BLOCK_D": block_d},
                num_warps=4, num_stages=1,
                ref_shape=f"N={n},D={d}", flops=(20.0 if sample else 6.0) * n * d,
                min_bytes=(3 if sample else 2) * n * d * es))
            register(KernelConfig(
                name=f"gaussian_bwd[{tag}]", fn=_gaussian_bwd_kernel,
                signature={"mu_ptr": p, "lv_ptr": p, "dz_ptr": p, "gkl_ptr": "*fp32", "dmu_ptr": p, "dlv_ptr": p,
                           "N": "i32", "D": "i32", "stride_mu": "i32", "stride_lv": "i32", "stride_dz": "i32",
                           "stride_d": "i32", "seed_ptr": "*i64"},
                constexprs={"SAMPLE": sample, "FAST_COS": True, "BLOCK_M": block_m, "BLOCK_D": block_d},
                num_warps=4, num_stages=1,
                ref_shape=f"N={n},D={d}", flops=(24.0 if sample else 6.0) * n * d,
                min_bytes=(5 if sample else 4) * n * d * es))


_register()
