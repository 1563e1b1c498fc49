"""FrameAdaLN: LayerNorm modulated by per-frame (shift, scale), and the gated residual."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import frame_adaln_modulate, frame_gated_residual


class FrameAdaLN(nn.Module):
    """Frame-wise adaptive LayerNorm (no affine parameters of its own, as in AdaLN-zero).

    ``forward(x, shift, scale, frame_len)`` with x (B, T*N, D) and shift/scale (B, T, D)
    returns ``LN(x) * (1 + scale_t) + shift_t``; :meth:`gated_residual` returns
    ``x + gate_t * branch``.

    On CUDA (``backend="auto"``) both run as fused Triton kernels whose backward reduces
    dshift / dscale / dgate over each frame's tokens; elsewhere the PyTorch reference runs.

    Example:
        >>> norm = FrameAdaLN(64)
        >>> x = torch.randn(2, 3 * 16, 64); m = torch.zeros(2, 3, 64)
        >>> torch.allclose(norm(x, m, m, frame_len=16), torch.nn.functional.layer_norm(x, (64,), eps=1e-6))
        True
        >>> gate = torch.zeros(2, 3, 64)
        >>> torch.equal(FrameAdaLN.gated_residual(x, torch.randn_like(x), gate, frame_len=16), x)
        True
    """

    def __init__(self, dim: int, eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.backend = backend

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frame_len: int) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"x: expected last dim {self.dim} (FrameAdaLN dim), got shape {tuple(x.shape)}")
        return frame_adaln_modulate(x, shift, scale, frame_len, eps=self.eps, backend=self.backend)

    @staticmethod
    def gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, frame_len: int,
                       backend: str = "auto") -> torch.Tensor:
        return frame_gated_residual(x, branch, gate, frame_len, backend=backend)
