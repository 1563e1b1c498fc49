"""STAttention called the way the peers call their attention modules, so a swap is one assignment.

- :class:`SequenceAttention`: ``attn(x, causal=False)`` on a layout the peer already reshaped
  (UniVLA's LAM and 1xgpt's ST blocks: ``(B*T, S, E)`` for space, ``(B*S, T, E)`` for time).
  The whole sequence is one frame; RoPE, if any, is fixed at construction (the peers build it
  there too) as a Rope1D over the position in that sequence.
- :class:`GridAttention`: V-JEPA 2-AC's ``ACRoPEAttention`` call, ``attn(x, mask=None,
  attn_mask=None, T=None, H=None, W=None, action_tokens=0)``: the frame layout (grid and action
  tokens) arrives per call, so one module serves every grid; ``grid_size`` (the model's
  constant) scales rows by ``grid_size / H`` and columns by ``grid_size / W``.

Both are STAttention subclasses: same parameters, same peer-checkpoint loading and converters
(:mod:`fastlam.nn.attention_checkpoints`), same backends.
"""
from __future__ import annotations

import torch

from ..ops import Rope1D, Rope3D
from .attention import STAttention


class SequenceAttention(STAttention):
    """``attn(x, causal=False)`` over ``x: (N, L, dim)``, one sequence per row (see module doc).

    Args:
        rope_dim: rotate the first ``rope_dim`` channels of each head by the token's position
            (interleaved pairs, UniVLA's ``RotaryEmbedding(head_dim // 2)``); None = no RoPE.
        rope_theta: its frequency base.
        Other arguments as :class:`STAttention` (``qk_norm="shared"``, ``scale=8 / head_dim``
        for 1xgpt).
    """

    def __init__(self, dim: int, num_heads: int, *args, rope_dim: int | None = None, rope_theta: float = 10000.0,
                 **kwargs):
        super().__init__(dim, num_heads, *args, **kwargs)
        # "space" with frame_len = L is the position in the sequence, and (unlike "sequence")
        # is what the fused kernels' tables express.
        self.rope = None if rope_dim is None else Rope1D("space", theta=rope_theta, rotary_dim=rope_dim)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, frame_len=x.shape[1], mask="causal" if causal else "full", rope=self.rope)


class GridAttention(STAttention):
    """V-JEPA 2-AC's attention call with the frame layout per call (see module doc): frame-causal
    attention over ``T`` frames of ``action_tokens + H * W`` tokens, 3-D RoPE with the action
    tokens rotated by time only. ``mask`` (ids of kept tokens) must be None, as the AC
    predictor passes it: frame-causal attention over a subset of the tokens would need each
    token's frame from its id, which the fused mask does not take (an error, not ignored).
    ``attn_mask``: the peer's block-causal boolean mask, checked on the first call of each shape
    against the frame-causal one this module runs (another mask is an error, not ignored)."""

    def __init__(self, dim: int, num_heads: int, *args, grid_size: int = 16, **kwargs):
        super().__init__(dim, num_heads, *args, **kwargs)
        self.grid_size = grid_size
        self._checked_masks: set = set()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                T: int | None = None, H: int | None = None, W: int | None = None,  # noqa: N803 (peer's names)
                action_tokens: int = 0) -> torch.Tensor:  # type: ignore[override]
        if H is None or W is None:
            raise ValueError("GridAttention: pass the grid per call (H=, W=; T= optional), as ACBlock passes it")
        if mask is not None:
            raise ValueError("GridAttention: mask (kept-token ids) is not supported with frame-causal attention; "
                             "run the whole clip (mask=None), as V-JEPA 2-AC's predictor does")
        frame_len = action_tokens + H * W
        rope = Rope3D(grid_w=W, num_prefix=action_tokens, spatial_scale=self.grid_size / H,
                      col_scale=self.grid_size / W)
        if attn_mask is not None:
            self._check_attn_mask(attn_mask, frame_len)
        return super().forward(x, frame_len=frame_len, mask="frame_causal", rope=rope)

    def _check_attn_mask(self, attn_mask: torch.Tensor, frame_len: int) -> None:
        key = (tuple(attn_mask.shape), frame_len)
        if key in self._checked_masks:
            return
        L = attn_mask.shape[-1]
        frames = torch.arange(L, device=attn_mask.device) // frame_len
        expected = frames[:, None] >= frames[None, :]
        if attn_mask.dtype != torch.bool or not torch.equal(attn_mask.reshape(-1, L, L)[0], expected):
            raise ValueError(f"attn_mask: GridAttention runs frame-causal attention over frames of {frame_len} "
                             "tokens; this mask is another (pass None, or use STAttention with the mask you need)")
        self._checked_masks.add(key)
