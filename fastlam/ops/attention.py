"""Spatio-temporal attention: the one entry point every fastlam model calls.

``st_attention(q, k, v, frame_len=..., mask=...)`` attends over a video flattened to
``L = frames * frame_len`` tokens. The mask is a function of token indices only:

- ``full``: every token sees every token.
- ``causal``: token i sees tokens j <= i.
- ``frame_causal``: a token of frame t sees every token of frames <= t (block-causal, the
  predictor's teacher-forcing mask). With ``window_frames=k`` only frames t-k+1..t.
- ``frame_local``: a token sees only its own frame (spatial attention).

Backends (chosen in one place, :func:`select_backend`): ``math`` (explicit softmax, the test
oracle, differentiable in float64), ``torch`` (PyTorch SDPA with the mask built vectorised
from indices), and the accelerated backends registered by other modules (``triton``,
``flex``, ``flash_attn``, ``xformers``) through :func:`register_backend`. ``auto`` picks the
fastest backend that supports the request and warns once when it has to fall back.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ._backend import auto_default, import_error
from ._checks import check_choice, check_same, check_tensor
from .rope import Rope3D, apply_rope_3d

MASKS = ("full", "causal", "frame_causal", "frame_local")


class AttentionRequest(NamedTuple):
    """Everything a backend needs besides q/k/v; backends say whether they support it."""

    frame_len: int
    mask: str
    rope: Rope3D | None
    scale: float
    window_frames: int | None
    deterministic: bool
    return_lse: bool


class Backend(NamedTuple):
    run: Callable  # (q, k, v, req) -> out or (out, lse)
    supports: Callable  # (q, req) -> None if supported, else a reason string


_BACKENDS: dict[str, Backend] = {}
# Preference order for backend="auto"; the first that supports the request wins.
_AUTO_ORDER = ["triton", "torch"]
_warned: set[str] = set()
# Backends that "auto" never picks for CPU tensors: the Triton interpreter runs on CPU (for
# tests) but is ~300x slower than the torch reference.
_NO_AUTO_ON_CPU: set[str] = set()


def register_backend(
    name: str, run: Callable, supports: Callable, *, auto_priority: int | None = None, auto_on_cpu: bool = True
) -> None:
    """Make a backend available to ``st_attention`` (used by fastlam.ops.triton_attention etc.)."""
    _BACKENDS[name] = Backend(run, supports)
    if not auto_on_cpu:
        _NO_AUTO_ON_CPU.add(name)
    if auto_priority is not None and name not in _AUTO_ORDER:
        _AUTO_ORDER.insert(auto_priority, name)


def available_backends() -> list[str]:
    return list(_BACKENDS)


def mask_allows(q_idx: torch.Tensor, k_idx: torch.Tensor, frame_len: int, mask: str, window_frames: int | None = None):
    """Whether query token ``q_idx`` may attend to key token ``k_idx`` (broadcasting indices).

    The single definition of every mask: the dense mask, FlexAttention's ``mask_mod`` and the
    tests all call it, and the Triton kernel evaluates the same predicate per tile.
    """
    if mask == "full":
        return torch.ones_like(q_idx >= k_idx)
    if mask == "causal":
        return q_idx >= k_idx
    fq, fk = q_idx // frame_len, k_idx // frame_len
    if mask == "frame_local":
        return fq == fk
    allowed = fq >= fk  # frame_causal
    if window_frames is not None:
        allowed = allowed & (fq - fk < window_frames)
    return allowed


def dense_mask(seq_len: int, frame_len: int, mask: str, window_frames: int | None = None, device=None) -> torch.Tensor:
    """Boolean (L, L) mask, True where attention is allowed; built by broadcasting, no loops."""
    idx = torch.arange(seq_len, device=device)
    return mask_allows(idx[:, None], idx[None, :], frame_len, mask, window_frames)


def _prepare(q, k, req: AttentionRequest):
    if req.rope is not None:
        q = apply_rope_3d(q, req.frame_len, req.rope)
        k = apply_rope_3d(k, req.frame_len, req.rope)
    return q, k


def attention_math(q, k, v, req: AttentionRequest):
    """Explicit softmax(QK^T * scale) V in the inputs' dtype: the reference and test oracle."""
    q, k = _prepare(q, k, req)
    L = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * req.scale
    allowed = dense_mask(L, req.frame_len, req.mask, req.window_frames, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores.float() if scores.dtype != torch.float64 else scores, dim=-1)
    probs = torch.exp(scores - lse.to(scores.dtype)[..., None])
    out = torch.matmul(probs, v)
    return (out, lse) if req.return_lse else out


def attention_sdpa(q, k, v, req: AttentionRequest):
    """PyTorch SDPA; frame masks are passed as a dense boolean mask (what V-JEPA 2-AC does)."""
    q, k = _prepare(q, k, req)
    L = q.shape[-2]
    kwargs: dict = {"scale": req.scale}
    if req.mask == "causal":
        kwargs["is_causal"] = True
    elif req.mask != "full":
        kwargs["attn_mask"] = dense_mask(L, req.frame_len, req.mask, req.window_frames, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


register_backend("math", attention_math, lambda q, req: None)
register_backend(
    "torch",
    attention_sdpa,
    lambda q, req: "SDPA does not return the log-sum-exp" if req.return_lse else None,
)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def select_backend(q: torch.Tensor, req: AttentionRequest, backend: str = "auto") -> str:
    """The one place that picks an attention backend (and says why when it falls back).

    ``"auto"`` first resolves through :func:`fastlam.ops.use_backend` (a forced choice there
    behaves like an explicit ``backend=``)."""
    if backend == "auto":
        backend = auto_default("attention")
    if backend != "auto":
        if backend not in _BACKENDS:
            if import_error(f"attention.{backend}"):  # its module failed to import: say why
                raise RuntimeError(f"backend={backend!r} is unavailable: {import_error(f'attention.{backend}')}")
            raise ValueError(f"backend: expected one of {['auto'] + available_backends()}, got {backend!r}")
        reason = _BACKENDS[backend].supports(q, req)
        if reason:
            raise ValueError(f"backend={backend!r} cannot run this attention: {reason}")
        return backend
    reasons = []
    for name in _AUTO_ORDER:
        if name not in _BACKENDS or (name in _NO_AUTO_ON_CPU and q.device.type == "cpu"):
            continue
        reason = _BACKENDS[name].supports(q, req)
        if reason is None:
            if reasons and q.is_cuda:
                _warn_once(
                    f"{name}:{';'.join(reasons)}",
                    f"st_attention: backend 'auto' fell back to {name!r} ({'; '.join(reasons)})",
                )
            return name
        reasons.append(f"{name}: {reason}")
    return "math"


def st_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    frame_len: int,
    mask: str = "frame_causal",
    rope: Rope3D | None = None,
    scale: float | None = None,
    window_frames: int | None = None,
    backend: str = "auto",
    deterministic: bool = False,
    return_lse: bool = False,
):
    """Spatio-temporal attention over (B, heads, L, head_dim) tensors, L = frames * frame_len.

    Args:
        q, k, v: (B, heads, L, head_dim), same shape, dtype and device.
        frame_len: tokens per frame (including per-frame prefix tokens).
        mask: one of ``full``, ``causal``, ``frame_causal``, ``frame_local``.
        rope: optional :class:`Rope3D`; when given, q and k are rotated by their 3D positions
            (fused into the kernel on the Triton backend).
        scale: softmax scale, default ``head_dim ** -0.5``.
        window_frames: with ``frame_causal``, attend only to the last ``window_frames`` frames.
        backend: ``auto``, ``math``, ``torch`` or a registered accelerated backend.
        deterministic: ask for a backward without atomics (Triton backend).
        return_lse: also return the natural-log log-sum-exp of the scaled scores, (B, heads, L) fp32.

    Returns:
        out with the shape and dtype of q (and the lse when ``return_lse``).

    Example:
        >>> q = k = v = torch.randn(2, 4, 3 * 16, 32)
        >>> st_attention(q, k, v, frame_len=16, mask="frame_causal").shape
        torch.Size([2, 4, 48, 32])
    """
    shape = "(B, heads, L, head_dim)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4, shape_doc=shape)
    check_same(("q", "k", "v"), (q, k, v), what="shape")
    check_same(("q", "k", "v"), (q, k, v), what="dtype")
    check_same(("q", "k", "v"), (q, k, v), what="device")
    check_choice("mask", mask, MASKS)
    if not isinstance(frame_len, int) or frame_len <= 0:
        raise ValueError(f"frame_len: expected a positive int, got {frame_len!r}")
    L, D = q.shape[-2], q.shape[-1]
    if L % frame_len:
        raise ValueError(f"frame_len: sequence length L={L} of q must be a multiple of frame_len={frame_len}")
    if window_frames is not None:
        if mask != "frame_causal":
            raise ValueError(f"window_frames: only valid with mask='frame_causal', got mask={mask!r}")
        if not isinstance(window_frames, int) or window_frames < 1:
            raise ValueError(f"window_frames: expected a positive int, got {window_frames!r}")
    if rope is not None:
        if not isinstance(rope, Rope3D):
            raise TypeError(f"rope: expected a fastlam.ops.Rope3D or None, got {type(rope).__name__}")
        rope.grid_h(frame_len)
        if D % 2:
            raise ValueError(f"q: head_dim must be even when rope is used, got {D}")
    req = AttentionRequest(
        frame_len=frame_len,
        mask=mask,
        rope=rope,
        scale=float(scale) if scale is not None else 1.0 / math.sqrt(D),
        window_frames=window_frames,
        deterministic=deterministic,
        return_lse=return_lse,
    )
    name = select_backend(q, req, backend)
    return _BACKENDS[name].run(q, k, v, req)
