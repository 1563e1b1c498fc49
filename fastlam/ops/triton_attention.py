"""Accelerated backends of :func:`fastlam.ops.st_attention`: Triton (fastlam's own kernels),
FlexAttention, flash-attn and xformers.

``triton``: the fused kernels of ``fastlam.kernels.attention`` wrapped as two
``torch.library.custom_op`` s (``fastlam::st_attention_fwd`` / ``fastlam::st_attention_bwd``)
with fake (meta) implementations and ``register_autograd``, so the op is differentiable and a
``torch.compile`` d model traces it as one node without a graph break. Inputs only need a
unit stride on the head dim (views of a packed qkv projection are read in place); a tensor
whose head dim is strided is copied with ``.contiguous()`` first. Outputs and gradients are
contiguous. The log-sum-exp output is differentiable too (its gradient folds into Delta).
RoPE (Rope3D, or Rope1D over time or space with interleaved pairs; positions from the token
index; partial rotary and per-axis scales are in the tables) is applied once by default: a Triton rotation
kernel reads q and k in place (the views of ``STAttention``'s packed qkv projection, no copy)
and writes rotated contiguous copies that the plain attention kernels take; the backward
recomputes that rotation rather than keeping the copies (the reason is in
``fastlam.kernels.attention.attention_backward``). ``FASTLAM_ROPE_FUSION=kernel`` rotates the
q and k tiles inside the attention kernels on every tile visit instead (:func:`rope_fusion`),
an option for a device where the benchmark suite or tuning measures it faster. Either way dQ
and dK are rotated back by one point-wise pass after the backward, from position tables
bit-identical to the reference.

``flex``: FlexAttention with a block mask built from :func:`mask_allows` and cached per
(L, frame_len, mask, window, device); compiled on CUDA. Its forward runs on CPU, its
backward does not. ``flash_attn`` / ``xformers``: only when importable, on CUDA, for the
masks they have (full, causal); never hard dependencies.

Every backend's ``supports`` returns a reason string when it cannot run the request, so
``backend="auto"`` can say why it fell back.
"""
from __future__ import annotations

import functools
import os

import torch
from torch.nn.attention import flex_attention as fa

from .attention import mask_allows
from .dispatch import AttentionRequest, kernel_import_error, register_backend, rotate_qk
from .rope import Rope1D, Rope3D, channel_frequencies, index_rope_gap

# Optional dependency: the kernels need triton, and fastlam's reference paths work without it.
# The dispatch module checks the import (once, the same check the fused ops use) and keeps the
# reason, which triton_supports reports, should triton be missing or the kernel module broken.
_TRITON_ERROR = kernel_import_error("attention")
if _TRITON_ERROR is None:
    from ..kernels import attention as _kernels
else:  # pragma: no cover - exercised only where triton is absent
    _kernels = None

MAX_HEAD_DIM = 128
ROPE_FUSION_ENV = "FASTLAM_ROPE_FUSION"


def rope_fusion() -> str:
    """Where the Triton backend applies RoPE, from $FASTLAM_ROPE_FUSION: ``prepass`` (default:
    q and k rotated once by a rotation kernel before the plain attention kernels) or
    ``kernel`` (rotated inside the attention kernels on every tile visit; which one is faster
    on a device is for ``benchmarks/bench_attention.py`` and the tile tuning to measure).
    Read at call time, so a benchmark can compare both in one process. Only the Triton
    backend asks, so the kernel module is importable here."""
    default = _kernels.DEFAULT_ROPE_FUSION
    value = os.environ.get(ROPE_FUSION_ENV, default).strip().lower() or default
    if value not in _kernels.ROPE_FUSIONS:
        raise ValueError(f"{ROPE_FUSION_ENV}: expected one of {_kernels.ROPE_FUSIONS}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- RoPE tables


@functools.lru_cache(maxsize=64)
def _rope_tables_cached(n_pos: int, head_dim: int, rope, device: torch.device):
    freqs, axis = channel_frequencies(head_dim, rope, device=device, dtype=torch.float32)
    i = torch.arange(n_pos, device=device, dtype=torch.float32)[:, None]
    # Same fp32 operations as fastlam.ops.rope: the time axis is the integer index, the row /
    # column axes are index * their scale (a non-square grid scales them differently); a
    # channel past rotary_dim has axis -1 and frequency 0, so its rows are cos 1, sin 0.
    _, row_scale, col_scale = rope.axis_scales if isinstance(rope, Rope3D) else (1.0, 1.0, 1.0)
    pos = torch.where(axis == 0, i, torch.where(axis == 1, i * row_scale,
                                                torch.where(axis == 2, i * col_scale, torch.zeros_like(i))))
    angle = pos * freqs
    axis_i32 = torch.where(axis < 0, torch.full_like(axis, 3), axis).to(torch.int32)
    return angle.cos().contiguous(), angle.sin().contiguous(), axis_i32.contiguous()


def rope_position_tables(seq_len: int, frame_len: int, head_dim: int, rope, device) -> tuple:
    """(cos, sin, axis, num_prefix, grid_w) for the kernel: cos/sin are (n_positions, head_dim)
    fp32 indexed by the integer position along the channel's axis, axis is int32 (head_dim,)
    in {0=t, 1=h, 2=w, 3=none}. Bit-identical angles to :func:`fastlam.ops.rope.apply_rope`.

    ``rope``: a Rope3D, or a Rope1D over time or space with interleaved pairs
    (:func:`fastlam.ops.rope.index_rope_gap` says which): a Rope1D over space is laid out as
    one row of ``frame_len`` columns without prefix tokens, so the kernel's column index is
    the position inside the frame. Partial rotary (``rotary_dim``) is axis 3 past it, the
    kernels' identity, so no kernel source knows about it."""
    if isinstance(rope, Rope1D):
        num_prefix, grid_w, grid_h = 0, frame_len, 1
    else:
        num_prefix, grid_w, grid_h = rope.num_prefix, rope.grid_w, rope.grid_h(frame_len)
    n_pos = max(seq_len // frame_len, grid_h, grid_w, 1)
    cos, sin, axis = _rope_tables_cached(n_pos, head_dim, rope, torch.device(device))
    return cos, sin, axis, num_prefix, grid_w


# ----------------------------------------------------------------------------- custom ops


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    # The kernels take any (B, H, L) strides but need contiguous head dims.
    return x if x.stride(-1) == 1 else x.contiguous()


def _rope_from_args(rope_on, grid_w, num_prefix, duplicated_freqs, theta, spatial_scale, col_scale, rotary_dim,
                    rope_axis):
    # The custom ops take plain scalars (their schema has no dataclass type): the rope is
    # rebuilt from them. rope_axis "3d" is a Rope3D, "time" / "space" a Rope1D; rotary_dim 0 = all.
    if not rope_on:
        return None
    rotary = rotary_dim or None
    if rope_axis != "3d":
        return Rope1D(axis=rope_axis, theta=theta, rotary_dim=rotary)
    return Rope3D(grid_w=grid_w, num_prefix=num_prefix, duplicated_freqs=duplicated_freqs, theta=theta,
                  spatial_scale=spatial_scale, col_scale=col_scale, rotary_dim=rotary)


def _kernel_args(q, frame_len, window_frames, rope_on, grid_w, num_prefix, duplicated_freqs, theta, spatial_scale,
                 col_scale, rotary_dim, rope_axis):
    rope = _rope_from_args(rope_on, grid_w, num_prefix, duplicated_freqs, theta, spatial_scale, col_scale,
                           rotary_dim, rope_axis)
    tables = None
    if rope is not None:
        tables = rope_position_tables(q.shape[2], frame_len, q.shape[3], rope, q.device)
    return (window_frames if window_frames > 0 else None), tables


@torch.library.custom_op("fastlam::st_attention_fwd", mutates_args=(), device_types=None)
def st_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_len: int, mask: str, scale: float, window_frames: int,
    deterministic: bool, rope_on: bool, grid_w: int, num_prefix: int, duplicated_freqs: bool, theta: float,
    spatial_scale: float, col_scale: float, rotary_dim: int, rope_axis: str, rope_fusion: str,
    key_lengths: torch.Tensor | None = None, frame_key_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention forward: (out (B,H,L,D) in q's dtype, lse (B,H,L) fp32). window_frames 0 = none.
    ``key_lengths``: int32 (B,) valid keys per sample, or None; ``frame_key_lengths``: int32
    (B, L // frame_len) valid keys per frame, or None."""
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    window, tables = _kernel_args(q, frame_len, window_frames, rope_on, grid_w, num_prefix, duplicated_freqs, theta,
                                  spatial_scale, col_scale, rotary_dim, rope_axis)
    return _kernels.attention_forward(q, k, v, frame_len=frame_len, mask=mask, scale=scale, window_frames=window,
                                      rope_tables=tables, rope_fusion=rope_fusion, key_lengths=key_lengths,
                                      frame_key_lengths=frame_key_lengths)


@st_attention_fwd.register_fake
def _(q, k, v, frame_len, mask, scale, window_frames, deterministic, rope_on, grid_w, num_prefix, duplicated_freqs,
      theta, spatial_scale, col_scale, rotary_dim, rope_axis, rope_fusion, key_lengths=None, frame_key_lengths=None):
    B, H, L, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, L), dtype=torch.float32)


@torch.library.custom_op("fastlam::st_attention_bwd", mutates_args=(), device_types=None)
def st_attention_bwd(
    dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, frame_len: int, mask: str, scale: float, window_frames: int,
    deterministic: bool, rope_on: bool, grid_w: int, num_prefix: int, duplicated_freqs: bool, theta: float,
    spatial_scale: float, col_scale: float, rotary_dim: int, rope_axis: str, rope_fusion: str,
    key_lengths: torch.Tensor | None = None, frame_key_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused attention backward: (dq, dk, dv). ``dlse`` (or None) is the gradient of the lse output."""
    q, k, v, out, dout = (_unit_stride(x) for x in (q, k, v, out, dout))
    window, tables = _kernel_args(q, frame_len, window_frames, rope_on, grid_w, num_prefix, duplicated_freqs, theta,
                                  spatial_scale, col_scale, rotary_dim, rope_axis)
    return _kernels.attention_backward(dout, q, k, v, out, lse, frame_len=frame_len, mask=mask, scale=scale,
                                       window_frames=window, rope_tables=tables, rope_fusion=rope_fusion,
                                       deterministic=deterministic, dlse=dlse, key_lengths=key_lengths,
                                       frame_key_lengths=frame_key_lengths)


@st_attention_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, frame_len, mask, scale, window_frames, deterministic, rope_on, grid_w,
      num_prefix, duplicated_freqs, theta, spatial_scale, col_scale, rotary_dim, rope_axis, rope_fusion,
      key_lengths=None, frame_key_lengths=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_PARAMS = ("frame_len", "mask", "scale", "window_frames", "deterministic", "rope_on", "grid_w", "num_prefix",
           "duplicated_freqs", "theta", "spatial_scale", "col_scale", "rotary_dim", "rope_axis", "rope_fusion",
           "key_lengths", "frame_key_lengths")


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = inputs[3:]


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = st_attention_bwd(dout, dlse, q, k, v, out, lse, *ctx.params)
    return (dq, dk, dv) + (None,) * len(_PARAMS)


st_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _op_args(req: AttentionRequest) -> tuple:
    rope = req.rope
    r3 = rope if isinstance(rope, Rope3D) else None  # the Rope3D-only fields; placeholders otherwise
    return (
        req.frame_len, req.mask, req.scale, req.window_frames or 0, req.deterministic, rope is not None,
        r3.grid_w if r3 else 1, r3.num_prefix if r3 else 0, r3.duplicated_freqs if r3 else True,
        float(rope.theta) if rope else 10000.0, float(r3.spatial_scale) if r3 else 1.0,
        float(r3.axis_scales[2]) if r3 else 1.0, (rope.rotary_dim or 0) if rope else 0,
        "3d" if r3 or rope is None else rope.axis,
        rope_fusion() if rope else "prepass",  # no RoPE: unused
        None if req.key_lengths is None else req.key_lengths.to(torch.int32).contiguous(),
        None if req.frame_key_lengths is None else req.frame_key_lengths.to(torch.int32).contiguous(),
    )


def triton_st_attention(q, k, v, req: AttentionRequest):
    """Backend ``triton``: differentiable, compile-friendly fused attention (RoPE in Triton too)."""
    out, lse = torch.ops.fastlam.st_attention_fwd(q, k, v, *_op_args(req))
    return (out, lse) if req.return_lse else out


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_supports(q: torch.Tensor, req: AttentionRequest):
    if _kernels is None:
        return _TRITON_ERROR
    if q.dtype not in _kernels.DTYPES:
        return f"dtype {q.dtype} (the kernel takes float16, bfloat16, float32)"
    D = q.shape[-1]
    if not 8 <= D <= MAX_HEAD_DIM:
        return f"head_dim {D} (the kernel takes 8..{MAX_HEAD_DIM}, e.g. 32, 64, 80, 96, 128)"
    if q.device.type == "cpu" and not _interpreting():
        return "CPU tensor (the Triton kernel needs CUDA, or TRITON_INTERPRET=1 set before triton is imported)"
    if q.device.type not in ("cpu", "cuda"):
        return f"device {q.device} (the Triton kernel runs on CUDA)"
    if q.device.type == "cuda" and _interpreting():
        return "CUDA tensor while TRITON_INTERPRET=1 (the interpreter runs on CPU tensors)"
    if q.device.type == "cuda":
        variants = ([req.mask] if req.mask in _kernels.TEMPORAL_MODE else []) + (
            ["key_pad"] if req.key_lengths is not None else []) + (
            ["frame_key_pad"] if req.frame_key_lengths is not None else [])
        for variant in variants:
            gap = _kernels.mask_variant_gap(q.dtype, D, variant)
            if gap is not None:
                return gap
        gap = _kernels.mask_combination_gap(variants, req.rope is not None and rope_fusion() == "kernel")
        if gap is not None:
            return gap
    return _reference_only(req)


def _reference_only(req: AttentionRequest):
    """Options only the reference backends (math, torch SDPA) implement, with the reason."""
    if req.dropout_p > 0:
        return "attention dropout (runs on the reference path)"
    if req.kv_len is not None:
        return "cross-attention with another key length than the query's"
    if req.rope_positions is not None:
        return "explicit rope_positions (the kernel derives positions from the token index)"
    gap = index_rope_gap(req.rope)
    if gap is not None:
        return gap
    return None


register_backend("triton", triton_st_attention, triton_supports, auto_on_cpu=False)


# ----------------------------------------------------------------------------- FlexAttention


@functools.lru_cache(maxsize=32)
def flex_block_mask(seq_len: int, frame_len: int, mask: str, window_frames: int | None, device: str):
    """FlexAttention block mask of a fastlam mask (cached: building it costs a pass over L^2)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return mask_allows(q_idx, kv_idx, frame_len, mask, window_frames)

    return fa.create_block_mask(mask_mod, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(fa.flex_attention, dynamic=False)


def flex_st_attention(q, k, v, req: AttentionRequest):
    """Backend ``flex``: FlexAttention (compiled on CUDA) with the cached block mask; RoPE unfused."""
    q, k = rotate_qk(q, k, req)
    block_mask = flex_block_mask(q.shape[2], req.frame_len, req.mask, req.window_frames, str(q.device))
    fn = _compiled_flex() if q.is_cuda else fa.flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=req.scale)


def flex_supports(q: torch.Tensor, req: AttentionRequest):
    if req.return_lse:
        return "the flex backend does not return the log-sum-exp"
    if q.device.type == "cpu" and q.requires_grad and torch.is_grad_enabled():
        return "FlexAttention has no backward on CPU"
    if q.device.type not in ("cpu", "cuda"):
        return f"device {q.device}"
    if req.key_lengths is not None or req.frame_key_lengths is not None:
        return "key padding (the cached block mask is per (L, mask), not per batch)"
    return _reference_only(req)


register_backend("flex", flex_st_attention, flex_supports)


# ----------------------------------------------------------------------------- flash-attn, xformers


@functools.lru_cache(maxsize=None)
def _dense_library(name: str):
    """flash-attn's ``flash_attn_func`` (``name="flash_attn"``) or ``xformers.ops``, imported on
    first use; None where it is not installed or does not import."""
    try:
        if name == "flash_attn":
            from flash_attn import flash_attn_func  # optional dependency: flash-attn (never required)

            return flash_attn_func
        if name == "xformers":
            import xformers.ops as xops  # optional dependency: xformers (never required)

            return xops
    except Exception:
        return None
    raise ValueError(f"unknown dense attention library {name!r}")


def _on_token_major(fn, q, k, v, **kwargs):
    """``fn`` on the (B, L, H, D) layout flash-attn and xformers take; its output as (B, H, L, D)."""
    return fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kwargs).transpose(1, 2)


def flash_attn_st_attention(q, k, v, req: AttentionRequest):
    """Backend ``flash_attn``: FlashAttention-2 for the masks it has (full, causal)."""
    q, k = rotate_qk(q, k, req)
    return _on_token_major(_dense_library("flash_attn"), q, k, v, softmax_scale=req.scale,
                           causal=req.mask == "causal", deterministic=req.deterministic)


def _dense_lib_supports(q, req, name, available):
    if not available:
        return f"{name} is not installed"
    if not q.is_cuda:
        return f"{name} runs on CUDA only"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"{name} takes float16/bfloat16, got {q.dtype}"
    if req.mask not in ("full", "causal"):
        return f"{name} has no {req.mask!r} mask (only full and causal)"
    if req.return_lse:
        return f"the {name} backend does not return the log-sum-exp"
    if req.key_lengths is not None or req.frame_key_lengths is not None:
        return f"the {name} backend takes no key padding (key_lengths, frame_key_lengths)"
    return _reference_only(req)


register_backend("flash_attn", flash_attn_st_attention,
                 lambda q, req: _dense_lib_supports(q, req, "flash-attn", _dense_library("flash_attn") is not None))


def xformers_st_attention(q, k, v, req: AttentionRequest):
    """Backend ``xformers``: memory-efficient attention for full / causal masks."""
    q, k = rotate_qk(q, k, req)
    xops = _dense_library("xformers")
    bias = xops.LowerTriangularMask() if req.mask == "causal" else None
    return _on_token_major(xops.memory_efficient_attention, q, k, v, attn_bias=bias, scale=req.scale)


register_backend("xformers", xformers_st_attention,
                 lambda q, req: _dense_lib_supports(q, req, "xformers", _dense_library("xformers") is not None))
