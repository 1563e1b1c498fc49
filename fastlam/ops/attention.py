"""Spatio-temporal attention: the one entry point every fastlam model calls.

``st_attention(q, k, v, frame_len=..., mask=...)`` attends over a video flattened to
``L = frames * frame_len`` tokens. The mask is a function of token indices only:

- ``full``: every token sees every token.
- ``causal``: token i sees tokens j <= i.
- ``frame_causal``: a token of frame t sees every token of frames <= t (block-causal, the
  predictor's teacher-forcing mask). With ``window_frames=k`` only frames t-k+1..t.
- ``frame_local``: a token sees only its own frame (spatial attention).
- ``temporal_causal``: a token sees the token at its own spatial position (index modulo
  ``frame_len``) in frames <= its own (Genie / UniVLA temporal attention, without the
  (B*S, T, E) reshape). With ``window_frames=k`` only the last k of those frames.
- ``temporal``: the same position in every frame.

Options: ``key_lengths`` (per-sample count of valid keys: key padding, computed in-kernel on
Triton), ``frame_key_lengths`` (per-frame count of valid keys: padding inside every frame of
the flattened video, also in-kernel on Triton), cross-attention (k, v with another length than
q; ``mask="full"``), ``dropout_p`` with an optional seed (training only; the reference path), RoPE as :class:`Rope3D` or
:class:`Rope1D` with optional explicit token ids ``rope_positions`` (the reference path for
ids, ``Rope1D("sequence")`` and ``interleaved=False``). A row left with no visible key (padding) gets output 0 and lse -inf.

Backends: this module implements and registers ``math`` (explicit softmax, the test oracle,
differentiable in float64) and ``torch`` (PyTorch SDPA with the mask built vectorised from
indices); ``fastlam.ops.triton_attention`` registers the accelerated ones (``triton``,
``flex``, ``flash_attn``, ``xformers``). :mod:`fastlam.ops.dispatch` holds them all and picks
one (:func:`~fastlam.ops.dispatch.select_backend`): ``auto`` picks the fastest backend that
supports the request and warns once when it has to fall back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_same, check_tensor
from .dispatch import AttentionRequest, attention_backend, register_backend, rotate_qk, select_backend
from .rope import Rope1D, Rope3D

MASKS = ("full", "causal", "frame_causal", "frame_local", "temporal_causal", "temporal")
WINDOW_MASKS = ("frame_causal", "temporal_causal")


def mask_allows(q_idx: torch.Tensor, k_idx: torch.Tensor, frame_len: int, mask: str, window_frames: int | None = None):
    """Whether query token ``q_idx`` may attend to key token ``k_idx`` (broadcasting indices).

    The single definition of every mask: the dense mask, FlexAttention's ``mask_mod`` and the
    tests all call it, and the Triton kernel evaluates the same predicate per tile.
    """
    if mask == "full":
        return torch.ones_like(q_idx >= k_idx)
    if mask == "causal":
        return q_idx >= k_idx
    if mask in ("temporal_causal", "temporal"):
        d = q_idx - k_idx
        allowed = d % frame_len == 0  # same spatial position
        if mask == "temporal_causal":
            allowed = allowed & (d >= 0)
            if window_frames is not None:
                allowed = allowed & (d < window_frames * frame_len)
        return allowed
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


def valid_keys(key_lengths, frame_key_lengths, k_len: int, frame_len: int, device) -> torch.Tensor | None:
    """Boolean (B, Lk), True for the keys that are not padding, or None without padding: keys
    below ``key_lengths[b]``; key j of frame f (frames of ``frame_len`` keys) when
    ``j % frame_len < frame_key_lengths[b, f]``. Built by broadcasting, on the device."""
    idx = torch.arange(k_len, device=device)
    valid = None
    if key_lengths is not None:
        valid = idx < key_lengths.to(device)[:, None]
    if frame_key_lengths is not None:
        counts = frame_key_lengths.to(device)[:, idx // frame_len]  # (B, Lk): the count of each key's frame
        in_frame = idx % frame_len < counts
        valid = in_frame if valid is None else valid & in_frame
    return valid


def request_mask(req: AttentionRequest, q_len: int, k_len: int, device) -> torch.Tensor | None:
    """Boolean mask of a request, True = allowed: (Lq, Lk), or (B, 1, Lq, Lk) with key
    padding; None when every pair is allowed."""
    allowed = None
    if req.mask != "full":
        allowed = dense_mask(q_len, req.frame_len, req.mask, req.window_frames, device=device)
    valid = valid_keys(req.key_lengths, req.frame_key_lengths, k_len, req.frame_len, device)
    if valid is not None:
        valid = valid[:, None, None, :]
        allowed = valid if allowed is None else allowed & valid
    return allowed


def _dropout_generator(req: AttentionRequest, device):
    if req.dropout_seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(req.dropout_seed))
    return gen


def attention_math(q, k, v, req: AttentionRequest):
    """Explicit softmax(QK^T * scale) V in the inputs' dtype: the reference and test oracle."""
    q, k = rotate_qk(q, k, req)
    scores = torch.matmul(q, k.transpose(-1, -2)) * req.scale
    allowed = request_mask(req, q.shape[-2], k.shape[-2], q.device)
    empty = None
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
        empty = ~allowed.any(-1, keepdim=True)  # rows with no visible key: output 0, lse -inf
    s = scores.float() if scores.dtype != torch.float64 else scores
    if empty is not None and bool(empty.any()):
        lse = torch.logsumexp(s.masked_fill(empty, 0.0), dim=-1)
        probs = torch.exp(scores - lse.to(scores.dtype)[..., None])  # exp(-inf) = 0 on empty rows
        lse = lse.masked_fill(empty[..., 0], float("-inf"))
    else:
        lse = torch.logsumexp(s, dim=-1)
        probs = torch.exp(scores - lse.to(scores.dtype)[..., None])
    if req.dropout_p > 0:
        keep = torch.rand(probs.shape, generator=_dropout_generator(req, q.device), device=q.device) >= req.dropout_p
        probs = probs * keep.to(probs.dtype) / (1.0 - req.dropout_p)
    out = torch.matmul(probs, v)
    return (out, lse) if req.return_lse else out


def attention_sdpa(q, k, v, req: AttentionRequest):
    """PyTorch SDPA; frame masks are passed as a dense boolean mask (what V-JEPA 2-AC does)."""
    q, k = rotate_qk(q, k, req)
    kwargs: dict = {"scale": req.scale, "dropout_p": req.dropout_p}
    if req.mask == "causal" and req.key_lengths is None and req.frame_key_lengths is None:
        kwargs["is_causal"] = True
    else:
        allowed = request_mask(req, q.shape[-2], k.shape[-2], q.device)
        if allowed is not None:
            kwargs["attn_mask"] = allowed
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _sdpa_supports(q, req: AttentionRequest):
    if req.return_lse:
        return "SDPA does not return the log-sum-exp"
    if req.dropout_p > 0 and req.dropout_seed is not None:
        return "SDPA dropout cannot be seeded per call"
    return None


register_backend("math", attention_math, lambda q, req: None)
register_backend("torch", attention_sdpa, _sdpa_supports)


def _check_frame_key_lengths(frame_key_lengths, key_lengths, batch: int, k_len: int, frame_len: int) -> None:
    """Shape and dtype always; values only on CPU (reading a CUDA tensor would sync the host)."""
    if key_lengths is not None:
        raise ValueError("frame_key_lengths: pass either key_lengths (one count per sequence) or frame_key_lengths "
                         "(one count per frame), not both")
    if k_len % frame_len:
        raise ValueError(f"frame_key_lengths: the key length {k_len} must be a multiple of frame_len={frame_len}")
    shape_doc = f"(B, key frames) = ({batch}, {k_len // frame_len})"
    check_tensor("frame_key_lengths", frame_key_lengths, ndim=2, shape_doc=shape_doc,
                 dtypes=(torch.int32, torch.int64))
    if tuple(frame_key_lengths.shape) != (batch, k_len // frame_len):
        raise ValueError(f"frame_key_lengths: expected shape {shape_doc}, got {tuple(frame_key_lengths.shape)}")
    if not frame_key_lengths.is_cuda and ((frame_key_lengths < 0) | (frame_key_lengths > frame_len)).any():
        raise ValueError(f"frame_key_lengths: expected values in [0, frame_len={frame_len}]")


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
    key_lengths: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_seed: int | None = None,
    rope_positions: torch.Tensor | None = None,
    frame_key_lengths: torch.Tensor | None = None,
):
    """Spatio-temporal attention over (B, heads, L, head_dim) tensors, L = frames * frame_len.

    Args:
        q, k, v: (B, heads, L, head_dim), same dtype and device; k and v may have another
            length Lk than q (cross-attention, ``mask="full"`` only).
        frame_len: tokens per frame (including per-frame prefix tokens).
        mask: one of ``full``, ``causal``, ``frame_causal``, ``frame_local``,
            ``temporal_causal``, ``temporal``.
        rope: optional :class:`Rope3D` or :class:`Rope1D`; q and k are rotated by their
            positions (on the Triton backend from per-axis tables: Rope3D, and Rope1D over
            time or space with interleaved pairs; ``rotary_dim`` and non-square grids too).
        scale: softmax scale, default ``head_dim ** -0.5``.
        window_frames: with ``frame_causal`` / ``temporal_causal``, attend only to the last
            ``window_frames`` frames.
        backend: ``auto``, ``math``, ``torch`` or a registered accelerated backend.
        deterministic: ask for a backward without atomics (Triton backend).
        return_lse: also return the natural-log log-sum-exp of the scaled scores, (B, heads, L) fp32.
        key_lengths: optional integer (B,) tensor; keys at or past ``key_lengths[b]`` are padding.
        frame_key_lengths: optional integer (B, Lk // frame_len) tensor, padding inside every
            frame of the flattened video (UniVLA-style per-frame padding): key token j of frame
            f is valid iff ``j % frame_len < frame_key_lengths[b, f]``. A count per frame, not
            a (B, Lk) boolean mask: the Triton kernels read one count per key frame (one
            gather per key tile) instead of streaming a dense mask. Either this or
            ``key_lengths``, not both. With either, a query whose every allowed key is padding
            gets output 0, lse -inf and gradients 0 (finite, no NaN): by construction on the
            math and Triton backends, from PyTorch's masked softmax on ``torch`` (SDPA; tested
            on CPU, not yet on a GPU). Values are checked (in [0, frame_len]) only for CPU
            tensors: a CUDA tensor is never read on the host.
        dropout_p: attention-probability dropout (the caller passes 0 in eval); runs on the
            reference backends. ``dropout_seed`` makes it reproducible (math backend).
        rope_positions: explicit token ids (L,) or (B, L) for the RoPE positions (kept tokens
            of a masked predictor); reference path.

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
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1] or (k.shape[-2] != q.shape[-2] and mask != "full"):
        raise ValueError(f"k: expected the same shape as q {tuple(q.shape)} (a different key length, "
                         f"cross-attention, only with mask='full'), got {tuple(k.shape)} with mask={mask!r}")
    check_same(("k", "v"), (k, v), what="shape")
    check_same(("q", "k", "v"), (q, k, v), what="dtype")
    check_same(("q", "k", "v"), (q, k, v), what="device")
    if isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected one of {MASKS}, got a tensor of shape {tuple(mask.shape)}; arbitrary "
                        "tensor masks are not supported (key padding: key_lengths=(B,) valid key counts)")
    check_choice("mask", mask, MASKS)
    if not isinstance(frame_len, int) or frame_len <= 0:
        raise ValueError(f"frame_len: expected a positive int, got {frame_len!r}")
    L, D = q.shape[-2], q.shape[-1]
    if L % frame_len and not (rope_positions is not None and mask == "full"):
        # (with explicit rope ids the tokens are a subset of a clip of frame_len-token frames)
        raise ValueError(f"frame_len: sequence length L={L} of q must be a multiple of frame_len={frame_len}")
    if key_lengths is not None:
        check_tensor("key_lengths", key_lengths, ndim=1, shape_doc="(B,)", dtypes=(torch.int32, torch.int64))
        if key_lengths.shape[0] != q.shape[0]:
            raise ValueError(f"key_lengths: expected shape ({q.shape[0]},), got {tuple(key_lengths.shape)}")
        if not key_lengths.is_cuda and ((key_lengths < 0) | (key_lengths > k.shape[-2])).any():
            raise ValueError(f"key_lengths: expected values in [0, {k.shape[-2]}]")
    if frame_key_lengths is not None:
        _check_frame_key_lengths(frame_key_lengths, key_lengths, q.shape[0], k.shape[-2], frame_len)
    if rope_positions is not None and rope is None:
        raise ValueError("rope_positions: only meaningful with rope=Rope3D(...) or Rope1D(...)")
    if not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")
    if window_frames is not None:
        if mask not in WINDOW_MASKS:
            raise ValueError(f"window_frames: only valid with mask in {WINDOW_MASKS}, got mask={mask!r}")
        if not isinstance(window_frames, int) or window_frames < 1:
            raise ValueError(f"window_frames: expected a positive int, got {window_frames!r}")
    if rope is not None:
        if not isinstance(rope, (Rope3D, Rope1D)):
            raise TypeError(f"rope: expected a fastlam.ops.Rope3D, Rope1D or None, got {type(rope).__name__}")
        if isinstance(rope, Rope3D):
            rope.grid_h(frame_len)
        if k.shape[-2] != L:
            raise ValueError("rope: not supported with cross-attention (q and k lengths differ); rotate q and k "
                             "yourself with fastlam.ops.apply_rope")
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
        key_lengths=key_lengths,
        dropout_p=float(dropout_p),
        dropout_seed=dropout_seed,
        rope_positions=rope_positions,
        kv_len=k.shape[-2] if k.shape[-2] != L else None,
        frame_key_lengths=frame_key_lengths,
    )
    name = select_backend(q, req, backend)
    return attention_backend(name).run(q, k, v, req)
