"""STAttention: multi-head self- or cross-attention over video tokens, drop-in for V-JEPA 2
blocks and (with the options below) Genie / UniVLA-style spatial and temporal attention."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import Rope3D, st_attention
from .attention_checkpoints import ATTENTION_LAYOUT, peer_attention_keys_to_fastlam_

QK_NORMS = (False, True, "shared")


class STAttention(nn.Module):
    """qkv projection -> (qk-norm) -> (RoPE) -> spatio-temporal attention -> output projection.

    Parameter names (``qkv``, ``proj``) match V-JEPA 2's attention blocks, so their state dicts
    load directly; separate ``to_q / to_k / to_v / to_out`` weights (UniVLA / lucidrains-style
    blocks) and V-JEPA 2 ``CrossAttention``'s ``q / kv`` are fused on load
    (:meth:`from_separate_qkv`, or just ``load_state_dict``); back to a peer's names:
    :func:`fastlam.nn.attention_checkpoints.to_peer_attention_state_dict`. The mask and RoPE
    layout (frame length, grid, prefix tokens) are per call, because the same block serves
    clips of different lengths and grids.

    Args:
        dim: model width; ``num_heads`` must divide it.
        qkv_bias / proj_bias: biases of the two projections.
        qk_norm: normalise q and k per head before RoPE and the dot product, by
            ``norm_layer(head_dim)``: True = one norm each (``q_norm`` / ``k_norm``, timm's
            names); ``"shared"`` = one norm for both, named ``norm`` (1xgpt's ST blocks).
        scale: softmax scale (default ``head_dim ** -0.5``; muP configs use ``8 / head_dim``).
        attn_drop: dropout on the attention probabilities, in training mode only. Runs on the
            reference attention (the Triton kernels have no dropout; ``auto`` says so once).
        out_proj: False = no output projection (``proj`` is the identity), as V-JEPA 2's
            ``CrossAttention``.

    Example:
        >>> attn = STAttention(dim=64, num_heads=4)
        >>> x = torch.randn(2, 3 * 16, 64)  # 3 frames of 4x4 patches
        >>> attn(x, frame_len=16, mask="frame_causal", rope=Rope3D(grid_w=4)).shape
        torch.Size([2, 48, 64])
    """

    peer_checkpoint_layout = ATTENTION_LAYOUT  # converted by fastlam.nn.attention_checkpoints

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto", *,
                 qk_norm: bool = False, norm_layer=nn.LayerNorm, scale: float | None = None,
                 attn_drop: float = 0.0, proj_bias: bool = True, out_proj: bool = True):
        # nn.Module's own constructor, not super()'s: a swap class that also derives from a
        # peer's attention class (so the peer's isinstance dispatch passes it the frame layout,
        # as V-JEPA 2-AC's ACBlock does) must not run the peer's constructor.
        nn.Module.__init__(self)
        if qk_norm not in QK_NORMS or isinstance(qk_norm, int) and not isinstance(qk_norm, bool):
            raise ValueError(f"qk_norm: expected one of {QK_NORMS}, got {qk_norm!r}")
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
        # A shared norm is registered once, as ``norm``: two names for one module would store
        # its weights twice and break strict loading of the peer's checkpoint.
        self.shared_qk_norm = qk_norm == "shared"
        if self.shared_qk_norm:
            self.norm = norm_layer(self.head_dim)
        separate = qk_norm is True
        self.q_norm = norm_layer(self.head_dim) if separate else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if separate else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias) if out_proj else nn.Identity()

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
        frame_key_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, L, dim). ``kv``: optional (B, Lk, dim) context for cross-attention (q from
        x, k and v from kv with the same ``qkv`` weights; ``mask="full"``). ``key_lengths``:
        (B,) valid keys per sample (key padding); ``frame_key_lengths``: (B, frames) valid keys
        per frame of the flattened video (padding inside every frame). ``rope``: Rope3D / Rope1D;
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
        if self.shared_qk_norm:
            q, k = self.norm(q), self.norm(k)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
        out = st_attention(
            q, k, v,
            frame_len=frame_len, mask=mask, rope=rope, window_frames=window_frames, backend=self.backend,
            scale=self.scale, key_lengths=key_lengths, frame_key_lengths=frame_key_lengths,
            rope_positions=rope_positions,
            dropout_p=self.attn_drop if self.training else 0.0, dropout_seed=dropout_seed,
        )
        return self.proj(out.transpose(1, 2).reshape(B, L, C))

    # ------------------------------------------------------------------ peer weights

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Also accept the peers' names (converted by
        :func:`fastlam.nn.attention_checkpoints.peer_attention_keys_to_fastlam_`): separate
        ``to_q / to_k / to_v`` linears and ``to_out.0`` / ``to_out`` (UniVLA / Genie-style), or
        V-JEPA 2 ``CrossAttention``'s ``q`` and ``kv``. A peer without q/k/v or output biases
        loads into biased linears as zero biases (the same function)."""
        error_msgs += peer_attention_keys_to_fastlam_(
            state_dict, prefix, qkv_bias=self.qkv.bias is not None,
            proj_bias=None if isinstance(self.proj, nn.Identity) else self.proj.bias is not None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @classmethod
    def from_peer(cls, peer: nn.Module, **kwargs) -> "STAttention":
        """This class, built to hold ``peer``'s weights and loaded from them (strict), on the
        peer's device and dtype: ``peer`` is an attention module with ``qkv``, ``to_q/to_k/to_v``
        or ``q/kv`` projections and ``proj``, ``to_out(.0)`` or no output projection, and a
        ``num_heads`` or ``heads`` attribute. Biases, the output projection and the qk-norm
        (``norm``: shared; ``q_norm`` / ``k_norm``: separate) follow the peer's state dict;
        ``kwargs`` go to the constructor and win (``scale=``, ``rope_dim=``, ``num_heads=``...).
        Anything of the peer's this module has no place for is a load error, not dropped."""
        state = peer.state_dict()
        qkv = next((n for n in ("qkv", "to_q", "q") if f"{n}.weight" in state), None)
        if qkv is None:
            raise ValueError(f"peer: no qkv, to_q or q projection in {type(peer).__name__}'s state dict "
                             f"({sorted(state)})")
        heads = kwargs.pop("num_heads", None) or getattr(peer, "num_heads", None) or getattr(peer, "heads", None)
        if not isinstance(heads, int):
            raise ValueError(f"num_heads: {type(peer).__name__} has no num_heads / heads attribute; pass num_heads=")
        kwargs.setdefault("qkv_bias", f"{qkv}.bias" in state)
        out = next((n for n in ("proj", "to_out.0", "to_out") if f"{n}.weight" in state), None)
        kwargs.setdefault("out_proj", out is not None)
        kwargs.setdefault("proj_bias", out is not None and f"{out}.bias" in state)
        if "norm.weight" in state:
            kwargs.setdefault("qk_norm", "shared")
        elif "q_norm.weight" in state:
            kwargs.setdefault("qk_norm", True)
        peer_norm = getattr(peer, "norm" if "norm.weight" in state else "q_norm", None)
        if isinstance(peer_norm, nn.LayerNorm):  # the peer's eps, not LayerNorm's default
            kwargs.setdefault("norm_layer", functools.partial(nn.LayerNorm, eps=peer_norm.eps))
        weight = state[f"{qkv}.weight"]
        module = cls(weight.shape[1], heads, **kwargs).to(device=weight.device, dtype=weight.dtype)
        module.load_state_dict(state)
        return module

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
        sd = {f"{n}.{p}": t for n, lin in zip(("to_q", "to_k", "to_v", "to_out"), (to_q, to_k, to_v, to_out))
              for p, t in lin.state_dict().items()}
        extra = {k: v for k, v in module.state_dict().items() if k.startswith(("q_norm", "k_norm", "norm."))}
        module.load_state_dict({**sd, **extra})
        return module
