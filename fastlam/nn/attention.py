"""STAttention: multi-head self- or cross-attention over video tokens, drop-in for V-JEPA 2
blocks and (with the options below) Genie / UniVLA-style spatial and temporal attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import Rope3D, st_attention

# Peer parameter names this module loads (see :meth:`STAttention._load_from_state_dict`).
_SEPARATE_QKV = ("to_q", "to_k", "to_v")
_OUT_NAMES = ("to_out.0", "to_out")


class STAttention(nn.Module):
    """qkv projection -> (qk-norm) -> (RoPE) -> spatio-temporal attention -> output projection.

    Parameter names (``qkv``, ``proj``) match V-JEPA 2's attention blocks, so their state dicts
    load directly; separate ``to_q / to_k / to_v / to_out`` weights (UniVLA / lucidrains-style
    blocks) are fused on load (:meth:`from_separate_qkv`, or just ``load_state_dict``). The
    mask and RoPE layout are per call, because the same block serves clips of different lengths.

    Args:
        dim: model width; ``num_heads`` must divide it.
        qkv_bias / proj_bias: biases of the two projections.
        qk_norm: normalise q and k per head before RoPE and the dot product (parameters
            ``q_norm`` / ``k_norm``, timm's names), built by ``norm_layer(head_dim)``.
        scale: softmax scale (default ``head_dim ** -0.5``; muP configs use ``8 / head_dim``).
        attn_drop: dropout on the attention probabilities, in training mode only. Runs on the
            reference attention (the Triton kernels have no dropout; ``auto`` says so once).

    Example:
        >>> attn = STAttention(dim=64, num_heads=4)
        >>> x = torch.randn(2, 3 * 16, 64)  # 3 frames of 4x4 patches
        >>> attn(x, frame_len=16, mask="frame_causal", rope=Rope3D(grid_w=4)).shape
        torch.Size([2, 48, 64])
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto", *,
                 qk_norm: bool = False, norm_layer=nn.LayerNorm, scale: float | None = None,
                 attn_drop: float = 0.0, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim: expected a multiple of num_heads={num_heads}, got {dim}")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop: expected a float in [0, 1), got {attn_drop!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.scale = scale
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        # (B, L, n*dim) -> n x (B, heads, L, head_dim), views of the projection
        return t.unflatten(-1, (n, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)

    def forward(
        self,
        x: torch.Tensor,
        *,
        frame_len: int,
        mask: str = "frame_causal",
        rope=None,
        window_frames: int | None = None,
        kv: torch.Tensor | None = None,
        key_lengths: torch.Tensor | None = None,
        rope_positions: torch.Tensor | None = None,
        dropout_seed: int | None = None,
    ) -> torch.Tensor:
        """x: (B, L, dim). ``kv``: optional (B, Lk, dim) context for cross-attention (q from
        x, k and v from kv with the same ``qkv`` weights; ``mask="full"``). ``key_lengths``:
        (B,) valid keys per sample (key padding). ``rope``: Rope3D / Rope1D;
        ``rope_positions``: explicit token ids for it. See :func:`fastlam.ops.st_attention`."""
        if x.dim() != 3:
            raise ValueError(f"x: expected (B, L, dim), got shape {tuple(x.shape)}")
        B, L, C = x.shape
        if kv is None:
            q, k, v = self._heads(self.qkv(x), 3)
        else:
            if kv.dim() != 3 or kv.shape[0] != B or kv.shape[2] != C:
                raise ValueError(f"kv: expected (B={B}, Lk, dim={C}), got shape {tuple(kv.shape)}")
            w, b = self.qkv.weight, self.qkv.bias
            q = self._heads(F.linear(x, w[:C], None if b is None else b[:C]), 1)[0]
            k, v = self._heads(F.linear(kv, w[C:], None if b is None else b[C:]), 2)
        q, k = self.q_norm(q), self.k_norm(k)
        out = st_attention(
            q, k, v,
            frame_len=frame_len, mask=mask, rope=rope, window_frames=window_frames, backend=self.backend,
            scale=self.scale, key_lengths=key_lengths, rope_positions=rope_positions,
            dropout_p=self.attn_drop if self.training else 0.0, dropout_seed=dropout_seed,
        )
        return self.proj(out.transpose(1, 2).reshape(B, L, C))

    # ------------------------------------------------------------------ peer weights

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Also accept separate ``to_q / to_k / to_v`` linears (concatenated into ``qkv``)
        and ``to_out.0`` or ``to_out`` (as ``proj``): the names of UniVLA / Genie-style
        attention blocks. A peer without q/k/v biases loads into a biased ``qkv`` as zero
        biases (the same function)."""
        names = [f"{prefix}{n}.weight" for n in _SEPARATE_QKV]
        if all(n in state_dict for n in names):
            state_dict[f"{prefix}qkv.weight"] = torch.cat([state_dict.pop(n) for n in names], 0)
            biases = [f"{prefix}{n}.bias" for n in _SEPARATE_QKV]
            if all(b in state_dict for b in biases):
                state_dict[f"{prefix}qkv.bias"] = torch.cat([state_dict.pop(b) for b in biases], 0)
            elif not any(b in state_dict for b in biases) and self.qkv.bias is not None:
                state_dict[f"{prefix}qkv.bias"] = torch.zeros_like(self.qkv.bias)
        for out in _OUT_NAMES:
            if f"{prefix}{out}.weight" not in state_dict:
                continue
            state_dict[f"{prefix}proj.weight"] = state_dict.pop(f"{prefix}{out}.weight")
            if f"{prefix}{out}.bias" in state_dict:
                state_dict[f"{prefix}proj.bias"] = state_dict.pop(f"{prefix}{out}.bias")
            elif self.proj.bias is not None:  # a bias-free peer projection: the same function
                state_dict[f"{prefix}proj.bias"] = torch.zeros_like(self.proj.bias)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @classmethod
    def from_separate_qkv(cls, to_q: nn.Linear, to_k: nn.Linear, to_v: nn.Linear, to_out: nn.Linear,
                          num_heads: int, **kwargs) -> "STAttention":
        """An STAttention computing what separate q / k / v / out linears compute (biases
        as the peer has them). ``kwargs`` go to the constructor (qk_norm, scale, ...)."""
        dim = to_q.in_features
        for name, lin in (("to_q", to_q), ("to_k", to_k), ("to_v", to_v), ("to_out", to_out)):
            if not isinstance(lin, nn.Linear) or lin.in_features != dim or lin.out_features != dim:
                raise ValueError(f"{name}: expected an nn.Linear({dim}, {dim}), got {lin!r}")
        has_bias = [lin.bias is not None for lin in (to_q, to_k, to_v)]
        if len(set(has_bias)) != 1:
            raise ValueError("to_q / to_k / to_v: expected all or none of them to have a bias")
        ref = to_q.weight
        module = cls(dim, num_heads, qkv_bias=has_bias[0], proj_bias=to_out.bias is not None, **kwargs)
        module.to(device=ref.device, dtype=ref.dtype)
        sd = {f"{n}.{p}": t for n, lin in zip(_SEPARATE_QKV + ("to_out",), (to_q, to_k, to_v, to_out))
              for p, t in lin.state_dict().items()}
        extra = {k: v for k, v in module.state_dict().items() if k.startswith(("q_norm", "k_norm"))}
        module.load_state_dict({**sd, **extra})
        return module
