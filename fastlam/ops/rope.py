"""3D rotary position embedding in V-JEPA 2's layout (plain-PyTorch reference).

The head dimension is split into three chunks of ``2 * ((head_dim // 3) // 2)`` channels,
rotated by the token's time, row and column index respectively; any remaining channels are
left unrotated. Within a chunk of ``d`` channels the frequencies are
``f_i = theta ** (-i / (d / 2))`` for ``i < d / 2`` and adjacent channel pairs
``(2i, 2i + 1)`` are rotated together.

V-JEPA 2 (and V-JEPA 2-AC) build the per-channel frequency vector by *repeating* the
``d / 2`` frequencies (``[f_0..f_{n-1}, f_0..f_{n-1}]``) rather than interleaving them, so
the two channels of a pair see different angles. That is not a rotation, but released
checkpoints were trained with it, so ``duplicated_freqs=True`` reproduces it;
``duplicated_freqs=False`` gives the textbook rotation (``f_{c // 2}`` for channel ``c``).

Per-frame prefix tokens (V-JEPA 2-AC's action and state tokens) are rotated by time only:
their row and column positions are zero, which makes those chunks the identity.

Non-square grids: V-JEPA 2-AC scales rows by ``grid_size / H`` and columns by ``grid_size / W``
(``spatial_scale`` and ``col_scale``). Partial rotary (``rotary_dim``, as UniVLA's LAM rotates
half of each head): only the first ``rotary_dim`` channels are rotated, with the frequencies
of a ``rotary_dim``-wide head; the rest pass unchanged.

Everything is expressed as ``x * cos + pair_swap(x) * sin`` with per-(token, channel) tables,
so the Triton kernel computes exactly the same angles from the token index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rope3D:
    """Where a token sits in (time, row, column), derived from its index.

    Args:
        grid_w: patch tokens per row of a frame.
        num_prefix: tokens at the start of every frame that are rotated by time only.
        duplicated_freqs: reproduce V-JEPA 2's repeated-frequency quirk (needed to load its
            checkpoints); False gives a true rotation.
        theta: frequency base.
        spatial_scale: multiplies row positions, and column positions unless ``col_scale`` is
            given (V-JEPA 2-AC uses grid_size / H).
        col_scale: multiplies column positions (V-JEPA 2-AC: grid_size / W on a non-square
            grid); None = ``spatial_scale``.
        rotary_dim: rotate only the first ``rotary_dim`` channels, split in three chunks as a
            head of that width would be; None = the whole head.
    """

    grid_w: int
    num_prefix: int = 0
    duplicated_freqs: bool = True
    theta: float = 10000.0
    spatial_scale: float = 1.0
    col_scale: float | None = None
    rotary_dim: int | None = None

    def __post_init__(self):
        _check_rotary_dim(self.rotary_dim)

    @property
    def axis_scales(self) -> tuple[float, float, float]:
        """What the (time, row, column) positions are multiplied by."""
        return 1.0, self.spatial_scale, self.spatial_scale if self.col_scale is None else self.col_scale

    def grid_h(self, frame_len: int) -> int:
        patches = frame_len - self.num_prefix
        if patches <= 0 or patches % self.grid_w:
            raise ValueError(
                f"rope: frame_len - num_prefix = {patches} must be a positive multiple of grid_w={self.grid_w}"
            )
        return patches // self.grid_w


def _check_rotary_dim(rotary_dim) -> None:
    if rotary_dim is not None and (not isinstance(rotary_dim, int) or rotary_dim <= 0 or rotary_dim % 2):
        raise ValueError(f"rotary_dim: expected a positive even int or None, got {rotary_dim!r}")


def rotary_width(head_dim: int, rope) -> int:
    """Channels of a head the rope may rotate: ``rope.rotary_dim`` (checked against the head), or all."""
    if rope.rotary_dim is None:
        return head_dim
    if rope.rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: expected at most head_dim={head_dim}, got {rope.rotary_dim}")
    return rope.rotary_dim


def rope_chunk_dim(head_dim: int) -> int:
    """Channels per (time / row / column) chunk: V-JEPA 2's ``2 * ((head_dim // 3) // 2)``."""
    return 2 * ((head_dim // 3) // 2)


def token_positions(seq_len: int, frame_len: int, rope: Rope3D, device=None, dtype=torch.float32):
    """(t, h, w) positions of tokens ``0..seq_len-1``; prefix tokens get h = w = 0."""
    return _id_positions(torch.arange(seq_len, device=device), frame_len, rope, dtype)


def _id_positions(ids: torch.Tensor, frame_len: int, rope: Rope3D, dtype):
    """(t, h, w) positions of the token ids ``ids`` (any shape) in the full layout."""
    rope.grid_h(frame_len)  # validates the layout
    t = ids // frame_len
    j = ids % frame_len
    # Negative for prefix tokens, which the where() below discards. (Not clamped: inductor's
    # index simplification fails on clamp-then-floordiv, which broke torch.compile of blocks
    # with prefix tokens.)
    p = j - rope.num_prefix
    is_patch = j >= rope.num_prefix
    _, row_scale, col_scale = rope.axis_scales
    h = torch.where(is_patch, p // rope.grid_w, torch.zeros_like(p)).to(dtype) * row_scale
    w = torch.where(is_patch, p % rope.grid_w, torch.zeros_like(p)).to(dtype) * col_scale
    return t.to(dtype), h, w


def channel_frequencies(head_dim: int, rope, device=None, dtype=torch.float32):
    """Per-channel frequency (head_dim,) and the axis it belongs to (0=t, 1=h, 2=w, -1=none),
    of a Rope3D or of a Rope1D over time (axis 0) or space (axis 2: the fused kernels see a
    frame as one row of ``frame_len`` columns) with pair-interleaved channels."""
    freqs = torch.zeros(head_dim, device=device, dtype=dtype)
    axis = torch.full((head_dim,), -1, device=device, dtype=torch.long)
    if isinstance(rope, Rope1D):
        gap = index_rope_gap(rope)
        if gap is not None:
            raise ValueError(f"rope: no per-channel table for {gap}")
        r = rotary_width(head_dim, rope)
        freqs[:r] = rope_1d_frequencies(r, rope, device, dtype)
        axis[:r] = 0 if rope.axis == "time" else 2
        return freqs, axis
    d = rope_chunk_dim(rotary_width(head_dim, rope))
    n = d // 2
    if n == 0:
        return freqs, axis
    base = rope.theta ** (-torch.arange(n, device=device, dtype=torch.float64) / n)
    c = torch.arange(d, device=device)
    within = base[c % n] if rope.duplicated_freqs else base[c // 2]
    for a in range(3):
        freqs[a * d : (a + 1) * d] = within.to(dtype)
        axis[a * d : (a + 1) * d] = a
    return freqs, axis


def rope_tables(seq_len: int, frame_len: int, head_dim: int, rope: Rope3D, device=None, dtype=torch.float32):
    """cos / sin tables of shape (seq_len, head_dim); unrotated channels get cos=1, sin=0."""
    t, h, w = token_positions(seq_len, frame_len, rope, device=device, dtype=dtype)
    freqs, axis = channel_frequencies(head_dim, rope, device=device, dtype=dtype)
    pos = torch.stack([t, h, w, torch.zeros_like(t)], dim=1)  # column 3 serves axis -1
    angle = pos[:, axis % 4] * freqs  # axis -1 -> column 3 (zeros)
    return angle.cos(), angle.sin()


def pair_swap(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last dim (pairs must be complete)."""
    y = x.unflatten(-1, (-1, 2))
    return torch.stack((-y[..., 1], y[..., 0]), dim=-1).flatten(-2)


def apply_rope_3d(x: torch.Tensor, frame_len: int, rope: Rope3D) -> torch.Tensor:
    """Rotate q or k of shape (B, heads, L, head_dim) by their 3D positions (reference)."""
    L, D = x.shape[-2], x.shape[-1]
    d3 = 3 * rope_chunk_dim(rotary_width(D, rope))
    # Compute angles in at least fp32 (fp64 when the input is fp64) for the oracle.
    tdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = rope_tables(L, frame_len, D, rope, device=x.device, dtype=tdtype)
    xr = x[..., :d3].to(tdtype)
    rotated = xr * cos[:, :d3] + pair_swap(xr) * sin[:, :d3]
    return torch.cat([rotated.to(x.dtype), x[..., d3:]], dim=-1)


@dataclass(frozen=True)
class Rope1D:
    """1-D rotary embedding over one axis of the flattened (frames x frame_len) layout.

    Args:
        axis: ``"time"`` (position = frame index, token // frame_len), ``"space"`` (position
            inside the frame, token % frame_len) or ``"sequence"`` (the token index itself:
            the factorised (B*S, T, E) or (B*T, S, E) layouts of Genie-style blocks).
        theta: frequency base; channel pair i has frequency ``theta ** (-2i / head_dim)``.
        interleaved: rotate adjacent channel pairs (2i, 2i+1) (True) or the two halves of
            the rotated channels, GPT-NeoX / ``rotate_half`` style (False).
        rotary_dim: rotate only the first ``rotary_dim`` channels (frequencies
            ``theta ** (-2i / rotary_dim)``) and pass the rest unchanged, as UniVLA's LAM
            (rotary-embedding-torch with ``dim = head_dim // 2``); None = the whole head.
    """

    axis: str = "sequence"
    theta: float = 10000.0
    interleaved: bool = True
    rotary_dim: int | None = None

    def __post_init__(self):
        if self.axis not in ("time", "space", "sequence"):
            raise ValueError(f"axis: expected 'time', 'space' or 'sequence', got {self.axis!r}")
        _check_rotary_dim(self.rotary_dim)


def rope_1d_frequencies(width: int, rope: Rope1D, device=None, dtype=torch.float32) -> torch.Tensor:
    """Per-channel frequencies (width,) of a Rope1D rotating ``width`` channels (fp64 maths)."""
    base = rope.theta ** (-torch.arange(0, width, 2, device=device, dtype=torch.float64) / width)
    return (base.repeat_interleave(2) if rope.interleaved else base.repeat(2)).to(dtype)


def index_rope_gap(rope) -> str | None:
    """Why the fused kernels' per-axis tables cannot express ``rope`` (None: they can). They
    derive a (t, h, w) position from the token index and rotate channel pairs (2i, 2i+1)."""
    if rope is None or isinstance(rope, Rope3D):
        return None
    if not isinstance(rope, Rope1D):
        return f"rope of type {type(rope).__name__}"
    if rope.axis == "sequence":
        return "Rope1D('sequence') (the position is the flat token index, not a (t, h, w) axis)"
    if not rope.interleaved:
        return "Rope1D(interleaved=False) (the kernels rotate adjacent channel pairs)"
    return None


def _token_ids(x: torch.Tensor, positions) -> torch.Tensor:
    """Token indices in the full layout: (L,) arange, or the explicit ids (L,) / (B, L)."""
    L = x.shape[-2]
    if positions is None:
        return torch.arange(L, device=x.device)
    if positions.dtype not in (torch.int32, torch.int64) or positions.shape[-1] != L or positions.dim() not in (1, 2):
        raise ValueError(f"rope_positions: expected an integer (L,) or (B, L) tensor with L={L}, got "
                         f"{positions.dtype} {tuple(positions.shape)}")
    if positions.dim() == 2 and positions.shape[0] != x.shape[0]:
        raise ValueError(f"rope_positions: expected batch {x.shape[0]}, got {positions.shape[0]}")
    return positions.to(x.device).long()


def apply_rope(x: torch.Tensor, frame_len: int, rope, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate q or k (B, heads, L, head_dim) by a :class:`Rope3D` or :class:`Rope1D`.

    ``positions``: optional explicit token ids (L,) or (B, L) into the full (unmasked)
    layout, e.g. the kept tokens of a masked predictor; by default token i has id i.
    """
    if isinstance(rope, Rope3D) and positions is None:
        return apply_rope_3d(x, frame_len, rope)
    ids = _token_ids(x, positions)
    D = x.shape[-1]
    tdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(rope, Rope3D):
        t, h, w = _id_positions(ids, frame_len, rope, tdtype)
        freqs, axis = channel_frequencies(D, rope, device=x.device, dtype=tdtype)
        pos = torch.stack([t, h, w, torch.zeros_like(h)], dim=-1)  # (..., L, 4)
        angle = pos[..., axis % 4] * freqs
        d3 = 3 * rope_chunk_dim(rotary_width(D, rope))
        if ids.dim() == 2:
            angle = angle[:, None]  # (B, 1, L, D): per-sample ids, shared by the heads
        cos, sin = angle.cos()[..., :d3], angle.sin()[..., :d3]
        xr = x[..., :d3].to(tdtype)
        rotated = xr * cos + pair_swap(xr) * sin
        return torch.cat([rotated.to(x.dtype), x[..., d3:]], dim=-1)
    if not isinstance(rope, Rope1D):
        raise TypeError(f"rope: expected Rope3D or Rope1D, got {type(rope).__name__}")
    if D % 2:
        raise ValueError(f"q: head_dim must be even for rope, got {D}")
    r = rotary_width(D, rope)
    pos = {"time": ids // frame_len, "space": ids % frame_len, "sequence": ids}[rope.axis].to(tdtype)
    angle = pos[..., None] * rope_1d_frequencies(r, rope, x.device, tdtype)
    if ids.dim() == 2:
        angle = angle[:, None]
    xr = x[..., :r].to(tdtype)
    if rope.interleaved:
        swapped = pair_swap(xr)
    else:
        half = r // 2
        swapped = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    rotated = (xr * angle.cos() + swapped * angle.sin()).to(x.dtype)
    return torch.cat([rotated, x[..., r:]], dim=-1) if r < D else rotated
