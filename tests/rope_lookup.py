"""The attention kernels' RoPE lookup, done in torch: which row and column of the position
tables (``fastlam.ops.triton_attention.rope_position_tables``) each token and channel reads,
with the same index maths as ``kernels/attention_rope.rope_positions``. The rope tests compare
what it gathers with the reference's cos / sin."""
from __future__ import annotations

import torch

from fastlam.ops import triton_attention as ta


def kernel_rope_lookup(L: int, frame_len: int, D: int, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` as the kernels read them for ``L`` tokens of ``frame_len`` a frame and head
    dim ``D``, each (L, D), and the tables' per-channel ``axis`` (3: not rotated)."""
    cos, sin, axis, npre, gw = ta.rope_position_tables(L, frame_len, D, rope, "cpu")
    idx = torch.arange(L)
    t, j = idx // frame_len, idx % frame_len
    p = (j - npre).clamp(min=0)
    h = torch.where(j >= npre, p // gw, 0)
    w = torch.where(j >= npre, p % gw, 0)
    pos = torch.stack([t, h, w, torch.zeros_like(t)], 1)[:, axis.long()]
    cols = torch.arange(D).expand(L, D)
    return cos[pos, cols], sin[pos, cols], axis
