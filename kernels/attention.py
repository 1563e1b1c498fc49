"""Fused spatio-temporal attention: the host launchers of the Triton forward and backward.

Layout: q, k, v, o are (B, H, L, D) with a unit stride on the head dim (any strides for B,
H, L, so views of a packed qkv projection need no copy). The mask is a predicate of the
query and key token indices (the same one as ``fastlam.ops.attention.mask_allows``). All
four masks are one rule, frame-causal with a window over "mask frames" (:func:`mask_frames`):

    full          one frame of L tokens        every key
    causal        frames of 1 token, no window k <= q
    frame_causal  the video's frames, window   frame(q) - window < frame(k) <= frame(q)
    frame_local   the video's frames, window 1 frame(k) == frame(q)

Two temporal masks (constexpr TEMPORAL, Genie / UniVLA temporal attention on the flattened
layout): ``temporal_causal`` (the key at the query's spatial position in frames <= t, with
the window) and ``temporal`` (same position, every frame): q - k = j * frame_len. Key padding
(constexpr KEY_PAD): keys at or past ``key_lengths[b]`` (an int32 (B,) tensor) are masked;
per-frame key padding (constexpr FRAME_PAD): key j of frame f is masked when ``j % frame_len
>= frame_key_lengths[b, f]`` (an int32 (B, L // frame_len) tensor). Both are read by the
kernels from device memory: nothing is synchronised with the host.

The pieces, one concern each:

- :mod:`.attention_common`: the ``@triton.jit`` parts the kernels share (the program's tile,
  the mask predicate, the tile ranges that skip fully masked tiles and find the unmasked run);
- :mod:`.attention_rope`: the point-wise rotation kernel (the default ``rope_fusion="prepass"``)
  and 3D RoPE fused into the kernels' q / k tile loads (``rope_fusion="kernel"``);
- :mod:`.attention_fwd` / :mod:`.attention_bwd`: the forward and the backward kernels;
- :mod:`.tile_tables`: the tiles (:func:`block_config`: a fixed table per triton release, no
  autotuning, replaced by tuned tables or ``FASTLAM_ATTN_TILES``);
- :mod:`.attention_configs`: their static-check registry entries;
- here: the launchers, plain functions (no autograd) that ``fastlam.ops.triton_attention``
  wraps, and the names that code outside the kernels imports.

RoPE (``rope_tables``), two modes (``rope_fusion``):

- ``"prepass"`` (default, :data:`DEFAULT_ROPE_FUSION`): FlashAttention's choice, rotary applied
  once outside the attention kernel (:func:`rope_rotate_qk`). The rotation kernel reads q and
  k where they are (any (B, H, L) strides: the views of a packed qkv projection are read in
  place, no ``.contiguous()`` first, both by one launch) and writes rotated, contiguous q and
  k; the plain (ROPE=False) kernels then run with the plain tiles of :func:`block_config`
  (``rope=False``), v still the caller's view.
- ``"kernel"``: every q / k tile is rotated as the attention kernels load it (per tile visit:
  a second load of the partner channels, cos / sin gathers, ``_ROPE_TILES`` where the plain
  tile spilled with the extra registers). Kept as an option for the device tuning / the
  benchmark suite to pick where it measures faster; no GPU has compared them yet.

Both round the rotated operand to the input dtype before the matmuls, so they feed the
kernels the same values. In both, dQ and dK leave the kernels in the rotated basis and one
point-wise pass applies R^T (which also casts the fp32 atomic dQ accumulator).
"""
from __future__ import annotations

import torch
import triton

from ._common import interpreting
from .attention_bwd import attn_bwd_dkdv, attn_bwd_dq, attn_bwd_preprocess
from .attention_common import LOG2E_F
from .attention_fwd import attn_fwd
from .attention_rope import rope_rotate_kernel
from .tile_tables import (block_config, mask_combination_gap, mask_variant_config, mask_variant_gap, triton_tiles,
                          use_atomic_dq)

__all__ = [
    "DEFAULT_ROPE_FUSION", "DTYPES", "HEAD_DIMS", "MASKS", "ROPE_FUSIONS", "TEMPORAL_MODE", "attention_backward",
    "attention_forward", "attn_bwd_dkdv", "attn_bwd_dq", "attn_bwd_preprocess", "attn_fwd", "block_config",
    "interpreting", "mask_combination_gap", "mask_frames", "mask_variant_config", "mask_variant_gap", "rope_rotate",
    "rope_rotate_kernel", "rope_rotate_qk", "triton_tiles", "use_atomic_dq",
]

MASKS = ("full", "causal", "frame_causal", "frame_local", "temporal_causal", "temporal")
# TEMPORAL constexpr per mask: 0 = the frame rule below, 1 = same spatial position in frames
# <= t (Genie / UniVLA temporal attention on the flattened layout), 2 = same position, all frames.
TEMPORAL_MODE = {"temporal_causal": 1, "temporal": 2}
HEAD_DIMS = (32, 64, 80, 96, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ROPE_FUSIONS = ("prepass", "kernel")
# Rotate q and k once before the plain kernels (see the module docstring).
DEFAULT_ROPE_FUSION = "prepass"


def _check(name: str, x: torch.Tensor) -> None:
    if x.dtype not in DTYPES:
        raise TypeError(f"{name}: the Triton attention kernel takes float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected (B, heads, L, head_dim), got shape {tuple(x.shape)}")
    if x.stride(-1) != 1:
        raise ValueError(f"{name}: the head dim must have unit stride (call .contiguous()), got strides {x.stride()}")
    if x.device.type == "cpu" and not interpreting():
        raise ValueError(f"{name}: CPU tensor; the Triton kernels need CUDA (or TRITON_INTERPRET=1 before import)")


def rope_rotate(x: torch.Tensor, frame_len: int, rope_tables, *, transpose: bool = False,
                out: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """R x (or R^T x with ``transpose``) by the tokens' 3D positions, into a contiguous
    tensor of ``out_dtype`` (default x's dtype); ``out`` may be x itself when x is contiguous.

    ``rope_tables`` = (cos, sin, axis, n_prefix, grid_w): cos/sin fp32 (n_positions, D)
    contiguous, axis int32 (D,) in {0=t, 1=h, 2=w, 3=none}.
    """
    _check_rotation_input(x)
    if out is None:
        out = torch.empty(x.shape, device=x.device, dtype=out_dtype or x.dtype)
    elif not out.is_contiguous() or out.shape != x.shape:
        raise ValueError(f"out: expected a contiguous tensor of shape {tuple(x.shape)}")
    _launch_rotation(x, out, frame_len, rope_tables, transpose=transpose, count=1, stride_t=0)
    return out


def rope_rotate_qk(q: torch.Tensor, k: torch.Tensor, frame_len: int, rope_tables) -> tuple:
    """(R q, R k), contiguous, for the pre-pass; q and k are read in place (any (B, H, L) strides).

    When k is q's layout shifted inside the same storage (the q and k views of a packed qkv
    projection) one launch rotates both, straight from the projection, into one (2, B, H, L, D)
    buffer; the same tensor passed as q and k is rotated once; otherwise one launch each.
    """
    _check_rotation_input(q)
    offset = _pair_offset(q, k)
    if offset is None:
        return rope_rotate(q, frame_len, rope_tables), rope_rotate(k, frame_len, rope_tables)
    if offset == 0:
        rotated = rope_rotate(q, frame_len, rope_tables)
        return rotated, rotated
    out = torch.empty((2, *q.shape), device=q.device, dtype=q.dtype)
    _launch_rotation(q, out, frame_len, rope_tables, transpose=False, count=2, stride_t=offset)
    return out[0], out[1]


def _check_rotation_input(x: torch.Tensor) -> None:
    if x.dtype not in DTYPES or x.dim() != 4 or x.stride(-1) != 1:
        raise ValueError(f"x: expected a (B, H, L, D) float tensor with unit head-dim stride, got {x.dtype} "
                         f"{tuple(x.shape)} strides {x.stride()}")


def _pair_offset(q: torch.Tensor, k: torch.Tensor) -> int | None:
    """Elements from q's first element to k's when k has q's shape, strides and dtype in q's
    storage (then k = q's layout shifted), else None. 0: k is q."""
    if (k.shape != q.shape or k.stride() != q.stride() or k.dtype != q.dtype or k.device != q.device
            or k.untyped_storage().data_ptr() != q.untyped_storage().data_ptr()):
        return None
    offset = k.storage_offset() - q.storage_offset()
    return offset if abs(offset) < 2**31 else None  # an i32 kernel argument


def _launch_rotation(x: torch.Tensor, out: torch.Tensor, frame_len: int, rope_tables, *, transpose: bool,
                     count: int, stride_t: int) -> None:
    """The rotation kernel over ``count`` sources, the t-th ``t * stride_t`` elements after x,
    into the contiguous ``out`` ((count, B, H, L, D) or, count 1, (B, H, L, D))."""
    B, H, L, D = x.shape
    cos, sin, axis, n_prefix, grid_w = rope_tables
    BM, warps = block_config(D, x.dtype)["rope_pointwise"]
    rope_rotate_kernel[(triton.cdiv(L, BM), B * H, count)](
        x, out, cos, sin, axis, *_bhl_strides(x), stride_t,
        H, L, D, frame_len, int(n_prefix), int(grid_w),
        TRANSPOSE=transpose, BLOCK_M=BM, BLOCK_D=max(16, triton.next_power_of_2(D)), num_warps=warps,
    )


def mask_frames(seq_len: int, frame_len: int, mask: str, window_frames: int | None = None) -> tuple[int, int]:
    """Every mask as frame-causal attention over "mask frames": (mask_frame_len, window).

    frame(k) <= frame(q) < frame(k) + window, frames of mask_frame_len tokens:
    full = one frame of L tokens; causal = frames of one token, no window; frame_local =
    window 1; frame_causal = the video's frames with its window (none = all frames). One
    predicate and one tile-range rule then serve every mask, with no per-mask compile.
    """
    if mask not in MASKS:
        raise ValueError(f"mask: expected one of {MASKS}, got {mask!r}")
    if mask == "full":
        return max(seq_len, 1), 1
    if mask == "causal":
        return 1, seq_len + 1
    if mask == "frame_local":
        return frame_len, 1
    n_frames = max(1, seq_len // frame_len)
    if mask == "temporal":  # the predicate ignores the window (TEMPORAL=2)
        return frame_len, n_frames + 1
    return frame_len, (n_frames + 1 if window_frames is None else int(window_frames))


def _bhl_strides(*tensors: torch.Tensor) -> tuple:
    """The batch, head and row strides of each (B, H, L, D) tensor in turn: the kernels' stride
    arguments (the head dim has unit stride)."""
    return tuple(st for x in tensors for st in x.stride()[:3])


def _dot_fp32(dtype: torch.dtype) -> bool:
    # The interpreter multiplies raw bf16 bit patterns in tl.dot: upcast there only.
    return interpreting() and dtype == torch.bfloat16


def _check_fusion(rope_fusion: str) -> None:
    if rope_fusion not in ROPE_FUSIONS:
        raise ValueError(f"rope_fusion: expected one of {ROPE_FUSIONS}, got {rope_fusion!r}")


def _rope_kernel_args(rope_tables, fused: bool, frame_len: int, dummy: torch.Tensor) -> tuple:
    """(COS, SIN, AXIS, F, NPREFIX, GRID_W) for an attention kernel; the tables are unused when
    not fused (any pointer, and integers that keep the position maths defined). F is always
    the video's frame length: per-frame key padding reads it too."""
    if not fused:
        return dummy, dummy, dummy, frame_len, 0, 1
    cos, sin, axis, n_prefix, grid_w = rope_tables
    return cos, sin, axis, frame_len, int(n_prefix), int(grid_w)


def _key_pad_args(key_lengths, frame_key_lengths, B: int, n_frames: int, dummy: torch.Tensor):
    """(KLEN pointer, KEY_PAD, FRAME_PAD) for the kernels: int32 (B,) valid key counts, int32
    (B, n_frames) valid keys per frame, or a dummy. Shapes and dtypes only: the values are
    not read on the host (no synchronisation)."""
    if key_lengths is not None and frame_key_lengths is not None:
        raise ValueError("key_lengths, frame_key_lengths: pass one of them, not both")
    for name, lengths, shape in (("key_lengths", key_lengths, (B,)),
                                 ("frame_key_lengths", frame_key_lengths, (B, n_frames))):
        if lengths is None:
            continue
        if tuple(lengths.shape) != shape or lengths.dtype != torch.int32 or lengths.device != dummy.device:
            raise ValueError(f"{name}: expected an int32 tensor of shape {shape} on {dummy.device}, got "
                             f"{lengths.dtype} {tuple(lengths.shape)} on {lengths.device}")
        return lengths.contiguous(), name == "key_lengths", name == "frame_key_lengths"
    return dummy, False, False


def _launch_config(q, mask: str, rope_tables, rope_fusion: str, key_lengths, frame_key_lengths) -> tuple:
    """(whether RoPE is fused, the launch parameters) of one attention call, forward or backward:
    the tiles of :func:`block_config`, or :func:`mask_variant_config`'s for the temporal masks
    and key padding."""
    fused = rope_tables is not None and rope_fusion == "kernel"
    # seq_len picks the device tuning's shape class (kernels/attention_tuning.py).
    tiles = block_config(q.shape[-1], q.dtype, rope=fused, device=q.device, seq_len=q.shape[-2])
    padded = key_lengths is not None or frame_key_lengths is not None
    return fused, mask_variant_config(tiles, mask in TEMPORAL_MODE or padded, q.dtype != torch.float32)


def attention_forward(q, k, v, *, frame_len: int, mask: str, scale: float, window_frames=None, rope_tables=None,
                      rope_fusion: str = DEFAULT_ROPE_FUSION, out: torch.Tensor | None = None,
                      lse: torch.Tensor | None = None, key_lengths: torch.Tensor | None = None,
                      frame_key_lengths: torch.Tensor | None = None):
    """Launch the forward. Returns (out (B,H,L,D) in q's dtype, lse (B,H,L) fp32, natural log).

    ``rope_tables``: None, or the tables of :func:`rope_rotate`. ``rope_fusion="prepass"``
    (default) rotates q and k once by the rotation kernel, reading them in place, into new
    contiguous tensors that the plain kernels take; ``"kernel"`` rotates them inside the
    attention kernel (the resident q tile once, each streamed k tile as it is loaded); see
    the module docstring. ``key_lengths``: int32 (B,), keys at or past ``key_lengths[b]``
    are padding; or ``frame_key_lengths``: int32 (B, L // frame_len), key j of frame f is
    padding when ``j % frame_len >= frame_key_lengths[b, f]``. A row left with no key gets out
    0, lse -inf.
    """
    _check_fusion(rope_fusion)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(name, x)
    B, H, L, D = q.shape
    fused, cfg = _launch_config(q, mask, rope_tables, rope_fusion, key_lengths, frame_key_lengths)
    BM, BN, warps, stages = cfg["fwd"]
    mask_frame, window = mask_frames(L, frame_len, mask, window_frames)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if lse is None:
        lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    if rope_tables is not None and not fused:
        q, k = rope_rotate_qk(q, k, frame_len, rope_tables)
    cos, sin, axis, F, npre, gw = _rope_kernel_args(rope_tables, fused, frame_len, lse)
    klen, key_pad, frame_pad = _key_pad_args(key_lengths, frame_key_lengths, B, L // frame_len, lse)
    attn_fwd[(triton.cdiv(L, BM), B * H)](
        q, k, v, out, lse, cos, sin, axis,
        *_bhl_strides(q, k, v, out),
        H, L, D, mask_frame, window, scale * LOG2E_F, F, npre, gw, klen,
        ROPE=fused, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=cfg["BLOCK_D"], DOT_FP32=_dot_fp32(q.dtype), IEEE=q.dtype == torch.float32,
        TEMPORAL=TEMPORAL_MODE.get(mask, 0), KEY_PAD=key_pad, FRAME_PAD=frame_pad,
        num_warps=warps, num_stages=stages,
    )
    return out, lse


def attention_backward(do, q, k, v, out, lse, *, frame_len: int, mask: str, scale: float, window_frames=None,
                       rope_tables=None, rope_fusion: str = DEFAULT_ROPE_FUSION, deterministic: bool = False,
                       dlse: torch.Tensor | None = None, grads: tuple | None = None,
                       key_lengths: torch.Tensor | None = None, frame_key_lengths: torch.Tensor | None = None):
    """Launch the backward. Returns (dq, dk, dv) in q's dtype, contiguous (B, H, L, D).

    ``deterministic=True`` computes dQ in its own pass (no atomics: bit-identical across
    runs); otherwise dQ may be accumulated with fp32 atomics inside the dK/dV pass
    (:func:`use_atomic_dq`). ``dlse`` (B, H, L), the gradient of the lse output, if any:
    since d lse_i / d s_ij = p_ij it enters as dS = P * (dP - (Delta - dlse)). ``grads``:
    optional preallocated contiguous (dq, dk, dv) (tests poison them to prove every element
    is written). ``key_lengths`` / ``frame_key_lengths``: as in :func:`attention_forward`.
    With RoPE, the attention kernels see rotated q and k, and dQ and dK come
    out in the rotated basis; one point-wise pass applies the transposed rotation to them in
    place (the atomic dQ accumulator is fp32; that pass also casts it into dq).

    ``rope_fusion="prepass"`` (default): the backward recomputes the rotation of q and k
    (the rotation kernel again, from the caller's q and k) instead of saving the rotated
    copies from the forward. Why: saving them would keep two more (B, H, L, D) tensors per
    attention layer alive from the forward to the backward, and they replace nothing (the
    packed qkv projection stays pinned through the v view, which the backward needs); the
    recomputation is O(L*D) memory traffic (2 reads, 2 writes) next to the backward's
    O(L^2*D) matmuls, and it keeps the ops' saved inputs the same in both modes (activation
    checkpointing recomputes them anyway). ``"kernel"``: the dK/dV pass rotates its resident
    k tile and each streamed q tile, the dQ pass its resident q tile and each streamed k tile.
    """
    _check_fusion(rope_fusion)
    for name, x in (("do", do), ("q", q), ("k", k), ("v", v), ("out", out)):
        _check(name, x)
    B, H, L, D = q.shape
    fused, cfg = _launch_config(q, mask, rope_tables, rope_fusion, key_lengths, frame_key_lengths)
    BD = cfg["BLOCK_D"]
    mask_frame, window = mask_frames(L, frame_len, mask, window_frames)
    dot_fp32 = _dot_fp32(q.dtype)
    ieee = q.dtype == torch.float32
    lse = lse.contiguous()
    if grads is None:
        grads = tuple(torch.empty((B, H, L, D), device=q.device, dtype=q.dtype) for _ in range(3))
    dq, dk, dv = grads
    for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
        if g.shape != q.shape or g.dtype != q.dtype or not g.is_contiguous():
            raise ValueError(f"grads: {name} must be a contiguous {tuple(q.shape)} {q.dtype} tensor")
    if rope_tables is not None and not fused:
        q, k = rope_rotate_qk(q, k, frame_len, rope_tables)

    delta = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    PM, pw = cfg["pointwise"]
    attn_bwd_preprocess[(triton.cdiv(L, PM), B * H)](
        out, do, delta,
        *_bhl_strides(out, do),
        H, L, D, BLOCK_M=PM, BLOCK_D=BD, num_warps=pw,
    )
    if dlse is not None:
        delta = delta - dlse.to(torch.float32)
    atomic = use_atomic_dq(D, q.dtype, deterministic, rope=fused)
    cos, sin, axis, F, npre, gw = _rope_kernel_args(rope_tables, fused, frame_len, delta)
    klen, key_pad, frame_pad = _key_pad_args(key_lengths, frame_key_lengths, B, L // frame_len, delta)
    temporal = TEMPORAL_MODE.get(mask, 0)
    dq_acc = torch.zeros((B, H, L, D), device=q.device, dtype=torch.float32) if atomic else dq

    BM, BN, warps, stages = cfg["bwd_kv_atomic" if atomic else "bwd_kv"]
    attn_bwd_dkdv[(triton.cdiv(L, BN), B * H)](
        q, k, v, do, dk, dv, dq_acc, lse, delta, cos, sin, axis,
        *_bhl_strides(q, k, v, do, dk, dv, dq_acc),
        H, L, D, mask_frame, window, scale * LOG2E_F, scale, F, npre, gw, klen,
        ATOMIC_DQ=atomic, ROPE=fused, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
        DOT_FP32=dot_fp32, IEEE=ieee, TEMPORAL=temporal, KEY_PAD=key_pad, FRAME_PAD=frame_pad,
        num_warps=warps, num_stages=stages,
    )
    if not atomic:
        BM, BN, warps, stages = cfg["bwd_q"]
        attn_bwd_dq[(triton.cdiv(L, BM), B * H)](
            q, k, v, do, dq, lse, delta, cos, sin, axis,
            *_bhl_strides(q, k, v, do, dq),
            H, L, D, mask_frame, window, scale * LOG2E_F, scale, F, npre, gw, klen,
            ROPE=fused, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
            DOT_FP32=dot_fp32, IEEE=ieee, TEMPORAL=temporal, KEY_PAD=key_pad, FRAME_PAD=frame_pad,
        num_warps=warps, num_stages=stages,
        )
    if rope_tables is not None:
        # The atomic accumulator is fp32: the transposed rotation also casts it into dq.
        rope_rotate(dq_acc, frame_len, rope_tables, transpose=True, out=dq)
        rope_rotate(dk, frame_len, rope_tables, transpose=True, out=dk)
    elif atomic:
        dq.copy_(dq_acc)
    return dq, dk, dv
