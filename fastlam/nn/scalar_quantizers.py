"""Scalar quantizers of the VQ family: FSQ and LFQ, with the call and return shapes of
``vector-quantize-pytorch``'s and its state-dict layout (LFQ's ``mask`` buffer included), so
its checkpoints load unchanged. They are elementwise roundings and one small softmax, for
which PyTorch's own kernels are already memory-bound, so they are plain torch (no Triton).
Both run in float64 (``.double()``), forward, backward and ``indices_to_codes``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class FSQOutput(NamedTuple):
    z: torch.Tensor
    indices: torch.Tensor


class LFQOutput(NamedTuple):
    z: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


# ----------------------------------------------------------------------------- FSQ

def _projection_dtype(project: nn.Module) -> torch.dtype:
    return project.weight.dtype if isinstance(project, nn.Linear) else torch.get_default_dtype()


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): each of ``len(levels)`` channels is
    bounded by tanh and rounded to ``levels[i]`` values; the implicit codebook has
    ``prod(levels)`` codes and no parameters (so nothing to collapse or reset). With ``dim`` !=
    ``len(levels)`` a linear projection goes in and out (as ``vector_quantize_pytorch.FSQ``).

    Returns :class:`FSQOutput` ``(z, indices)`` like the peer's ``(out, indices)``; inputs are
    (..., dim) channel-last of any rank (the peer wants (B, N, D), or channel-first images);
    indices are int64 (the peer: int32). Quantisation runs in fp32 for half inputs.
    torch only: it is elementwise.

    Example:
        >>> fsq = FSQ([8, 5, 5, 5])
        >>> z, idx = fsq(torch.randn(2, 7, 4))
        >>> torch.equal(fsq.indices_to_codes(idx), z), int(idx.max()) < 1000
        (True, True)
    """

    def __init__(self, levels, dim: int | None = None, projection_has_bias: bool = True):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or any(v < 3 for v in levels):
            raise ValueError(f"levels: expected a non-empty list of ints >= 3, got {levels}")
        self.levels = levels
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32), persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0).to(torch.int64),
                             persistent=False)
        self.codebook_dim = len(levels)
        self.codebook_size = math.prod(levels)
        self.dim = dim if dim is not None else self.codebook_dim
        proj = self.dim != self.codebook_dim
        self.project_in = nn.Linear(self.dim, self.codebook_dim, bias=projection_has_bias) if proj else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, self.dim, bias=projection_has_bias) if proj else nn.Identity()

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Bounded, rounded codes in [-1, 1] (straight-through), same shape as z (..., len(levels))."""
        lv = self._levels.to(z.dtype)
        half_l = (lv - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        bounded = torch.tanh(z + shift) * half_l - offset
        return _round_ste(bounded) / (self._levels // 2).to(z.dtype)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        half = (self._levels // 2).to(codes.dtype)
        return (codes * half + half).mul(self._basis.to(codes.dtype)).sum(-1).round().long()

    def indices_to_codes(self, indices: torch.Tensor, project_out: bool = True) -> torch.Tensor:
        """Codes in the projection's dtype (fp64 for a float64 module), else the default dtype."""
        level_idx = (indices.long()[..., None] // self._basis) % self._levels
        half = self._levels // 2
        dtype = _projection_dtype(self.project_out)
        codes = (level_idx - half).to(dtype) / half.to(dtype)
        return self.project_out(codes) if project_out else codes

    def forward(self, z: torch.Tensor) -> FSQOutput:
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z: expected shape (..., {self.dim}), got {tuple(z.shape)}")
        zin = self.project_in(z)
        dtype = zin.dtype
        q = self.quantize(zin if dtype in (torch.float32, torch.float64) else zin.float())
        idx = self.codes_to_indices(q)
        return FSQOutput(self.project_out(q.to(dtype)), idx)


# ----------------------------------------------------------------------------- LFQ

class LFQ(nn.Module):
    """Lookup-free quantization (Yu et al. 2023, MAGVIT-v2): each of log2(codebook_size)
    channels becomes +-``codebook_scale`` by its sign (straight-through); the index is the bit
    pattern (first channel = most significant bit). In training the loss is
    ``entropy_loss_weight * (mean per-sample entropy - diversity_gamma * codebook entropy)``
    of the softmax over all codes at ``inv_temperature``, plus an optional commitment term;
    in eval it is 0 (as the peer).

    Returns :class:`LFQOutput` ``(z, indices, loss)`` like ``vector_quantize_pytorch.LFQ``;
    inputs (..., dim) channel-last of any rank; indices int64. The entropy terms build an
    (N, codebook_size) matrix: meant for the small codebooks of latent actions (dim <= 16).
    torch only: it is a sign and one softmax.

    Example:
        >>> lfq = LFQ(dim=8)
        >>> z, idx, loss = lfq(torch.randn(2, 5, 8))
        >>> torch.equal(lfq.indices_to_codes(idx), z.detach()), loss.dim()
        (True, 0)
    """

    def __init__(self, *, dim: int | None = None, codebook_size: int | None = None, entropy_loss_weight: float = 0.1,
                 commitment_loss_weight: float = 0.0, diversity_gamma: float = 1.0, codebook_scale: float = 1.0,
                 projection_has_bias: bool = True):
        super().__init__()
        if dim is None and codebook_size is None:
            raise ValueError("LFQ: pass dim or codebook_size")
        if codebook_size is not None and (codebook_size < 2 or not math.log2(codebook_size).is_integer()):
            raise ValueError(f"codebook_size: expected a power of 2, got {codebook_size}")
        codebook_size = codebook_size if codebook_size is not None else 2 ** dim
        self.codebook_size = codebook_size
        self.codebook_dim = int(math.log2(codebook_size))
        self.dim = dim if dim is not None else self.codebook_dim
        proj = self.dim != self.codebook_dim
        self.project_in = nn.Linear(self.dim, self.codebook_dim, bias=projection_has_bias) if proj else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, self.dim, bias=projection_has_bias) if proj else nn.Identity()
        self.entropy_loss_weight, self.commitment_loss_weight = entropy_loss_weight, commitment_loss_weight
        self.diversity_gamma, self.codebook_scale = diversity_gamma, codebook_scale
        # persistent, as vector-quantize-pytorch's: state dicts cross unchanged both ways
        self.register_buffer("mask", 2 ** torch.arange(self.codebook_dim - 1, -1, -1))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "mask"
        if key not in state_dict:  # fastlam < 0.3 did not store it: it follows from codebook_size
            state_dict[key] = self.mask.clone()
        elif not torch.equal(state_dict[key].cpu().long(), self.mask.cpu()):
            error_msgs.append(f"{key}: the checkpoint's bit mask {state_dict[key].tolist()} is not this LFQ's "
                              f"{self.mask.tolist()} (codebook_size={self.codebook_size}, most significant bit first)")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def indices_to_codes(self, indices: torch.Tensor, project_out: bool = True) -> torch.Tensor:
        """Codes in the projection's dtype (fp64 for a float64 module), else the default dtype."""
        bits = ((indices.long()[..., None] & self.mask) != 0).to(_projection_dtype(self.project_out))
        codes = bits * (2 * self.codebook_scale) - self.codebook_scale
        return self.project_out(codes) if project_out else codes

    def all_codes(self) -> torch.Tensor:
        return self.indices_to_codes(torch.arange(self.codebook_size, device=self.mask.device), project_out=False)

    def forward(self, x: torch.Tensor, inv_temperature: float = 100.0) -> LFQOutput:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x: expected shape (..., {self.dim}), got {tuple(x.shape)}")
        x = self.project_in(x)
        dtype = x.dtype
        xf = x.float() if dtype not in (torch.float32, torch.float64) else x
        q = torch.where(xf > 0, self.codebook_scale, -self.codebook_scale).to(xf.dtype)
        idx = ((q > 0).long() * self.mask).sum(-1)
        loss = xf.new_zeros(())
        if self.training:
            out = xf + (q - xf).detach()
            flat = xf.reshape(-1, self.codebook_dim)
            logits = (2 * inv_temperature) * flat @ self.all_codes().to(flat.dtype).T
            prob = logits.softmax(-1)
            per_sample = -(prob * prob.clamp_min(1e-5).log()).sum(-1).mean()
            avg = prob.mean(0)
            codebook_entropy = -(avg * avg.clamp_min(1e-5).log()).sum()
            loss = self.entropy_loss_weight * (per_sample - self.diversity_gamma * codebook_entropy)
            if self.commitment_loss_weight > 0:
                loss = loss + self.commitment_loss_weight * F.mse_loss(xf, q.detach())
        else:
            out = q
        return LFQOutput(self.project_out(out.to(dtype)), idx, loss)
