"""The attention implementations benchmarks/bench_attention.py times against fastlam's Triton
kernels, each as a :class:`Runner` that says what it computes and, where it cannot run here, why.

For a fastlam mask over (B, H, L, D) tensors (L = frames x frame_len):

- ``fastlam_triton`` (and ``_det``, the backward without atomics): fastlam's kernels;
- ``cudnn_sdpa_causal`` / ``cudnn_sdpa`` / ``cudnn_sdpa_reshaped``: PyTorch SDPA forced onto
  cuDNN attention, the FA3-class kernel on the GPU image (causal for ``frame_causal``, which
  has no cuDNN mask: the bound at a similar FLOP count);
- ``flex``: FlexAttention, compiled on CUDA, with its block mask (fully masked blocks skipped);
- ``sdpa_flash_causal`` / ``sdpa_flash`` / ``sdpa_flash_reshaped``: SDPA's FlashAttention-2;
- ``sdpa_dense_mask_efficient`` / ``sdpa_dense_mask_math``: SDPA with the dense boolean mask
  (V-JEPA 2-AC's path), on the memory-efficient and on the math kernel;
- ``*_reshaped`` (``frame_local``): full attention within each frame on the (B*T, H, F, D)
  layout, frames folded into the batch (the transposes to and from it included), the fair
  baseline for that mask instead of a dense L x L one;
- ``flash_attn`` / ``xformers`` (when installed), ``sdpa_factorised`` (temporal masks: the
  (B*S, H, T, D) reshape Genie / UniVLA-style code does);
- with ``frame_causal`` and 3D RoPE: fastlam with the rotation fused into the kernels and as a
  pre-pass, and FlexAttention after the reference rotation.

``Runner.computes`` is the mask whose maths a runner does (``causal`` for the causal bounds):
the output check's reference and the FLOP count follow it.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastlam.ops import Rope3D, dense_mask, st_attention
from fastlam.ops.dispatch import AttentionRequest, attention_backend
from fastlam.ops.triton_attention import ROPE_FUSION_ENV


@dataclass(frozen=True)
class Runner:
    """One attention implementation for one (mask, frame_len): ``fn(q, k, v) -> out`` on
    (B, H, L, D) tensors, or None with ``skipped`` saying why it cannot run here."""

    name: str
    fn: Callable | None
    computes: str  # the fastlam mask whose maths it does: the check's reference, the FLOP count
    rope: Rope3D | None = None  # rotation applied to q and k (the reference applies it too)
    skipped: str | None = None
    # A math kernel holds the scores of every pair this mask allows ("full": the L x L matrix of
    # a dense mask), in memory: timed only where those fit.
    materialises_scores: str | None = None


def folded(attend: Callable, frame_len: int) -> Callable:
    """``attend`` (full attention over (N, H, S, D)) within each frame: frames folded into the
    batch, (B, H, T*F, D) -> (B*T, H, F, D) and back."""
    def run(q, k, v):
        B, H, L, D = q.shape
        T = L // frame_len

        def to(x):
            return x.view(B, H, T, frame_len, D).transpose(1, 2).reshape(B * T, H, frame_len, D)

        return attend(to(q), to(k), to(v)).view(B, T, H, frame_len, D).transpose(1, 2).reshape(B, H, L, D)
    return run


def sdpa_on(sdpa_backend, is_causal: bool = False, mask_of: Callable | None = None) -> Callable:
    """PyTorch SDPA forced onto one kernel (an error, not a silent fallback, where that kernel
    cannot run); ``mask_of(L, device)`` gives the dense boolean mask, None for none."""
    def run(q, k, v):
        attn_mask = None if mask_of is None else mask_of(q.shape[-2], q.device)
        with sdpa_kernel(sdpa_backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    return run


@functools.lru_cache(maxsize=8)
def _cached_dense_mask(seq_len: int, frame_len: int, mask: str, device: str) -> torch.Tensor:
    return dense_mask(seq_len, frame_len, mask, device=device)


def unavailable(fn: Callable, frame_len: int, head_dim: int, dtype, device: str) -> str | None:
    """Why ``fn`` cannot run on two frames of (1, 1, frame_len, head_dim) here (the message
    SDPA gives when the forced kernel refuses), or None."""
    x = torch.randn(1, 1, 2 * frame_len, head_dim, device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(x, x, x)
            return None
        except Exception as exc:  # SDPA says which constraint failed in its warnings
            why = "; ".join(str(w.message).splitlines()[0] for w in caught if "kernel" in str(w.message).lower())
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" + (f" ({why[:240]})" if why else "")


def _sdpa_runner(name, fn, computes, frame_len, head_dim, dtype, device, scores: str | None = None) -> Runner:
    reason = unavailable(fn, frame_len, head_dim, dtype, device)
    if reason and device != "cuda":
        reason = f"not on {device}: {reason}"
    return Runner(name, None if reason else fn, computes, skipped=reason, materialises_scores=scores)


def _backend_runner(name, backend, mask, frame_len, head_dim, dtype, device, **kwargs) -> Runner:
    """st_attention on a registered backend, skipped with the reason its ``supports`` gives."""
    probe = torch.empty(1, 1, frame_len, head_dim, device=device, dtype=dtype)
    req = AttentionRequest(frame_len, mask, None, head_dim ** -0.5, None, False, False)
    reason = attention_backend(backend).supports(probe, req)

    def run(q, k, v):
        return st_attention(q, k, v, frame_len=frame_len, mask=mask, backend=backend, **kwargs)
    return Runner(name, None if reason else run, mask, skipped=reason)


def make_runners(mask: str, frame_len: int, device: str = "cuda", dtype=torch.bfloat16, head_dim: int = 64,
                 with_rope: bool = True) -> list[Runner]:
    """Every implementation of ``mask`` at ``frame_len``-token frames, most telling first (the
    time budget may stop the list); those that cannot run here carry the reason."""
    Fl, D = frame_len, head_dim
    cuda = device == "cuda"
    sdpa = functools.partial(_sdpa_runner, frame_len=Fl, head_dim=D, dtype=dtype, device=device)

    def cudnn(name, fn, computes):
        return sdpa(name, fn, computes) if cuda else Runner(name, None, computes,
                                                            skipped="cuDNN attention runs on CUDA only")

    runners = [_backend_runner("fastlam_triton", "triton", mask, Fl, D, dtype, device)]
    if mask == "frame_causal":
        runners.append(cudnn("cudnn_sdpa_causal", sdpa_on(SDPBackend.CUDNN_ATTENTION, is_causal=True), "causal"))
    elif mask == "full":
        runners.append(cudnn("cudnn_sdpa", sdpa_on(SDPBackend.CUDNN_ATTENTION), "full"))
    elif mask == "frame_local":
        runners.append(cudnn("cudnn_sdpa_reshaped", folded(sdpa_on(SDPBackend.CUDNN_ATTENTION), Fl), mask))
    runners.append(_backend_runner("flex", "flex", mask, Fl, D, dtype, device) if cuda else
                   Runner("flex", None, mask, skipped="FlexAttention is compiled for CUDA and has no CPU backward"))
    if mask == "frame_causal":
        runners += [sdpa("sdpa_flash_causal", sdpa_on(SDPBackend.FLASH_ATTENTION, is_causal=True), "causal")]
    elif mask == "full":
        runners += [sdpa("sdpa_flash", sdpa_on(SDPBackend.FLASH_ATTENTION), "full")]
    elif mask == "frame_local":
        runners += [sdpa("sdpa_flash_reshaped", folded(sdpa_on(SDPBackend.FLASH_ATTENTION), Fl), mask)]
    runners += _dense_library_runners(mask, Fl, D, dtype, device)
    if mask != "full":
        mask_of = functools.partial(_dense_mask_on, frame_len=Fl, mask=mask)
        runners += [sdpa("sdpa_dense_mask_efficient", sdpa_on(SDPBackend.EFFICIENT_ATTENTION, mask_of=mask_of), mask)]
    runners.append(_backend_runner("fastlam_triton_det", "triton", mask, Fl, D, dtype, device, deterministic=True)
                   if cuda else Runner("fastlam_triton_det", None, mask, skipped="the deterministic backward is "
                                       "timed on CUDA (on CPU the interpreter proves fastlam_triton's path)"))
    if mask == "frame_causal" and with_rope:
        runners += rope_runners(Fl, device)
    if mask == "frame_local":
        runners += [sdpa("sdpa_efficient_reshaped", folded(sdpa_on(SDPBackend.EFFICIENT_ATTENTION), Fl), mask),
                    sdpa("sdpa_math_reshaped", folded(sdpa_on(SDPBackend.MATH), Fl), mask, scores=mask)]
    if mask in ("temporal_causal", "temporal"):
        runners.append(Runner("sdpa_factorised", factorised_sdpa(Fl, mask), mask))
    if mask != "full":
        mask_of = functools.partial(_dense_mask_on, frame_len=Fl, mask=mask)
        runners += [sdpa("sdpa_dense_mask_math", sdpa_on(SDPBackend.MATH, mask_of=mask_of), mask, scores="full")]
    return runners


def _dense_mask_on(seq_len: int, device, *, frame_len: int, mask: str) -> torch.Tensor:
    return _cached_dense_mask(seq_len, frame_len, mask, str(device))


def _dense_library_runners(mask, Fl, D, dtype, device) -> list[Runner]:
    """flash-attn and xformers where installed: causal for frame_causal (the bound), full, and
    full within each frame for frame_local."""
    out = []
    for lib in ("flash_attn", "xformers"):
        if mask == "frame_local":
            inner = "full"
        elif mask in ("frame_causal", "causal"):
            inner = "causal"
        else:
            inner = mask
        r = _backend_runner(lib, lib, inner, Fl, D, dtype, device)
        if mask == "frame_local" and r.fn is not None:
            r = Runner(f"{lib}_reshaped", folded(r.fn, Fl), mask)
        elif mask == "frame_local":
            r = Runner(f"{lib}_reshaped", None, mask, skipped=r.skipped)
        elif inner == "causal" and mask != "causal":
            r = Runner(f"{lib}_causal", r.fn, "causal", skipped=r.skipped)
        out.append(r)
    return out


def factorised_sdpa(frame_len: int, mask: str) -> Callable:
    """What Genie / UniVLA-style code does for temporal attention: reshape to (B*S, H, T, D),
    SDPA, reshape back."""
    def run(q, k, v):
        B, H, L, D = q.shape

        def fact(x):
            return x.unflatten(2, (L // frame_len, frame_len)).permute(0, 3, 1, 2, 4).reshape(
                B * frame_len, H, L // frame_len, D)

        o = F.scaled_dot_product_attention(fact(q), fact(k), fact(v), is_causal=mask == "temporal_causal")
        return o.reshape(B, frame_len, H, L // frame_len, D).permute(0, 2, 3, 1, 4).reshape(B, H, L, D)
    return run


def rope_for(F: int) -> Rope3D:
    """V-JEPA 2 layout for a frame of F tokens: a square patch grid after the per-frame
    prefix tokens (258 = 2 action/state tokens + 16 x 16), duplicated-frequency quirk on."""
    prefix = 2 if F % 2 else F % 16  # 258: V-JEPA 2-AC's action + state tokens
    return Rope3D(grid_w=math.isqrt(F - prefix), num_prefix=prefix)


def rope_runners(F: int, device: str = "cuda") -> list[Runner]:
    """fastlam with RoPE fused into the kernels and as a pre-pass, and FlexAttention + RoPE."""
    rope = rope_for(F)
    names = ("fastlam_triton_rope_kernel", "fastlam_triton_rope_prepass", "flex_rope")
    if device != "cuda":
        why = "RoPE variants are timed on CUDA (the interpreter's RoPE kernels are too slow for the dry run)"
        return [Runner(n, None, "frame_causal", rope, skipped=why) for n in names]

    def fused(fusion):
        def run(q, k, v):
            # Read when the forward is called; the backward reuses the forward's choice.
            old = os.environ.get(ROPE_FUSION_ENV)
            os.environ[ROPE_FUSION_ENV] = fusion
            try:
                return st_attention(q, k, v, frame_len=F, mask="frame_causal", rope=rope, backend="triton")
            finally:
                if old is None:
                    os.environ.pop(ROPE_FUSION_ENV, None)
                else:
                    os.environ[ROPE_FUSION_ENV] = old
        return run

    def flex(q, k, v):
        return st_attention(q, k, v, frame_len=F, mask="frame_causal", rope=rope, backend="flex")

    return [Runner(names[0], fused("kernel"), "frame_causal", rope),
            Runner(names[1], fused("prepass"), "frame_causal", rope),
            Runner(names[2], flex, "frame_causal", rope)]
