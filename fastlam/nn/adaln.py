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

    Example:
        >>> norm = FrameAdaLN(64)
        >>> x = torch.randn(2, 3 * 16, 64); m = torch.zeros(2, 3, 64)
        >>> torch.allclose(norm(x, m, m, frame_len=16), torch.nn.functional.layer_norm(x, (64,), eps=1e-6))
        True
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frame_len: int) -> torch.Tensor:
        return frame_adaln_modulate(x, shift, scale, frame_len, eps=self.eps)

    @staticmethod
    def gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, frame_len: int) -> torch.Tensor:
        return frame_gated_residual(x, branch, gate, frame_len)
