"""Frame-wise AdaLN (plain-PyTorch reference).

The predictor conditions every token of frame t on that frame's latent action through
per-frame (shift, scale, gate) vectors. Tokens are laid out as (B, T * N, D) with N tokens per
frame; modulation tensors are (B, T, D) and are broadcast over each frame's tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_tensor
from .dispatch import kernel_limits, use_triton
from .triton_adaln import triton_frame_adaln_modulate, triton_frame_gated_residual


def _check_frame_len(frame_len, x: torch.Tensor) -> None:
    if not isinstance(frame_len, int) or frame_len < 1:
        raise ValueError(f"frame_len: expected a positive int (tokens per frame), got {frame_len!r}")
    if x.numel() == 0:
        raise ValueError(f"x: expected a non-empty (B, T*N, D) tensor, got shape {tuple(x.shape)}")


def _per_frame(name: str, m: torch.Tensor, x: torch.Tensor, frame_len: int) -> torch.Tensor:
    B, L, D = x.shape
    if L % frame_len:
        raise ValueError(f"frame_len: token count {L} of x must be a multiple of frame_len={frame_len}")
    check_tensor(name, m, ndim=3, shape_doc=f"(B, T, D) = ({B}, {L // frame_len}, {D})")
    if tuple(m.shape) != (B, L // frame_len, D):
        raise ValueError(f"{name}: expected shape {(B, L // frame_len, D)}, got {tuple(m.shape)}")
    return m.repeat_interleave(frame_len, dim=1)


def frame_adaln_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    frame_len: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale_t) + shift_t, with (shift, scale) of frame t for its tokens.

    ``backend``: ``auto`` (fused Triton kernel on CUDA), ``torch`` (this reference) or ``triton``.
    """
    check_tensor("x", x, ndim=3, shape_doc="(B, T*N, D)")
    _check_frame_len(frame_len, x)
    sh = _per_frame("shift", shift, x, frame_len)
    sc = _per_frame("scale", scale, x, frame_len)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (x.shape[-1],):
            raise ValueError(f"{name}: expected shape ({x.shape[-1]},), got {tuple(p.shape)}")
    present = [t for t in (x, shift, scale, weight, bias) if t is not None]
    if use_triton(backend, *present, unsupported=kernel_limits(*present, max_d=16384),
                  kernel="adaln"):
        return triton_frame_adaln_modulate(x, shift, scale, frame_len, weight, bias, eps)
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return y * (1 + sc) + sh


def frame_gated_residual(
    x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, frame_len: int, *, backend: str = "auto"
) -> torch.Tensor:
    """x + gate_t * branch, with frame t's gate broadcast over its tokens (AdaLN-zero's residual)."""
    check_tensor("x", x, ndim=3, shape_doc="(B, T*N, D)")
    _check_frame_len(frame_len, x)
    if branch.shape != x.shape:
        raise ValueError(f"branch: expected the shape of x {tuple(x.shape)}, got {tuple(branch.shape)}")
    if use_triton(backend, x, branch, gate, unsupported=kernel_limits(x, branch, gate, max_d=16384),
                  kernel="adaln"):
        _per_frame("gate", gate, x, frame_len)  # shape check only
        return triton_frame_gated_residual(x, branch, gate, frame_len)
    return x + _per_frame("gate", gate, x, frame_len) * branch
