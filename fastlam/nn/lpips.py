"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), the paper's pixel metric for future leakage and cycle transfer.

The distance between images x and y (values in [0, 1]):

    d(x, y) = sum_l mean_hw( w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2 )

where f_l are feature maps of a pretrained backbone (channel-normalised per position) and w_l
non-negative per-channel weights (a 1x1 convolution without bias). Inputs are mapped to
[-1, 1] and shifted/scaled per channel as in the reference implementation (the ``lpips``
package, version 0.1).

fastlam downloads nothing: the backbone's weights and the per-layer weights come from local
files the user passes (:meth:`LPIPS.from_files`):

- ``backbone``: a torchvision AlexNet (or VGG16) state dict (keys ``features.N.weight``), e.g.
  the ``alexnet-owt-7be5be79.pth`` file torchvision caches;
- ``linear``: the ``lpips`` package's ``weights/v0.1/alex.pth`` (keys ``linN.model.1.weight``);
  without it every channel weighs 1 (LPIPS's "baseline" variant: a different number, labelled).

Both are read with ``torch.load(weights_only=True)``. There is deliberately no constructor
with random backbone weights for metrics: a number from an untrained network is not LPIPS.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..inputs import InputError, require_file

# Per-channel shift/scale of the lpips package's ScalingLayer (applied after x -> 2x - 1).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# torchvision's ``features`` Sequential, as (kind, args) per index; taps = indices after which
# LPIPS reads a feature map (the ReLU outputs it uses).
_ALEX = [("conv", (3, 64, 11, 4, 2)), ("relu",), ("pool",), ("conv", (64, 192, 5, 1, 2)), ("relu",), ("pool",),
         ("conv", (192, 384, 3, 1, 1)), ("relu",), ("conv", (384, 256, 3, 1, 1)), ("relu",),
         ("conv", (256, 256, 3, 1, 1)), ("relu",)]
_ALEX_TAPS = (1, 4, 7, 9, 11)


def _vgg16_layers():
    layers, c_in = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(("pool2",))
        else:
            layers += [("conv", (c_in, v, 3, 1, 1)), ("relu",)]
            c_in = v
    return layers


_VGG_TAPS = (3, 8, 15, 22, 29)


def _build(spec) -> nn.Sequential:
    mods = []
    for item in spec:
        if item[0] == "conv":
            cin, cout, k, s, p = item[1]
            mods.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
        elif item[0] == "relu":
            mods.append(nn.ReLU(inplace=False))
        elif item[0] == "pool":
            mods.append(nn.MaxPool2d(3, 2))
        else:
            mods.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*mods)


class TappedFeatures(nn.Module):
    """A ``features`` Sequential (torchvision key layout) returning the maps after ``taps``."""

    def __init__(self, features: nn.Sequential, taps: tuple[int, ...]):
        super().__init__()
        self.features = features
        self.taps = tuple(taps)

    def channels(self) -> list[int]:
        out, last = [], None
        for i, m in enumerate(self.features):
            if isinstance(m, nn.Conv2d):
                last = m.out_channels
            if i in self.taps:
                out.append(last)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.taps:
                maps.append(x)
            if i >= self.taps[-1]:
                break
        return maps


def backbone(net: str) -> TappedFeatures:
    if net == "alex":
        return TappedFeatures(_build(_ALEX), _ALEX_TAPS)
    if net == "vgg":
        return TappedFeatures(_build(_vgg16_layers()), _VGG_TAPS)
    raise ValueError(f"net: expected 'alex' or 'vgg', got {net!r}")


class LPIPS(nn.Module):
    """Perceptual distance (B,) between image batches (B, 3, H, W) in [0, 1].

    ``features`` is any module returning a list of feature maps; ``weights`` one
    non-negative (C_l,) vector per map, or None for unit weights.
    """

    def __init__(self, features: nn.Module, weights: list[torch.Tensor] | None = None, eps: float = 1e-10):
        super().__init__()
        self.net = features
        self.eps = eps
        self.linear = None if weights is None else nn.ParameterList(
            [nn.Parameter(w.detach().float().flatten().clone(), requires_grad=False) for w in weights])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def variant(self) -> str:
        return "lpips" if self.linear is not None else "lpips-baseline (unit channel weights)"

    def _normalise(self, f: torch.Tensor) -> torch.Tensor:
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + self.eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x, y: expected two (B, 3, H, W) image batches of one shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        dt = self.shift.dtype
        fx = self.net((x.to(dt) * 2 - 1 - self.shift) / self.scale)
        fy = self.net((y.to(dt) * 2 - 1 - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0], dtype=dt)
        for i, (a, b) in enumerate(zip(fx, fy)):
            d = (self._normalise(a) - self._normalise(b)).pow(2)
            d = d.sum(1) if self.linear is None else (d * self.linear[i].to(dt).view(1, -1, 1, 1)).sum(1)
            total = total + d.mean(dim=(-2, -1))
        return total

    def video(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS per clip (B,) over the frames of (B, 3, F, H, W) videos."""
        if x.shape != y.shape or x.dim() != 5:
            raise ValueError(f"x, y: expected two (B, 3, frames, H, W) videos of one shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        B, C, F, H, W = x.shape
        flat = lambda v: v.permute(0, 2, 1, 3, 4).reshape(B * F, C, H, W)
        return self(flat(x), flat(y)).view(B, F).mean(1)

    @classmethod
    def from_files(cls, backbone_path: str | Path, linear_path: str | Path | None = None,
                   net: str = "alex") -> "LPIPS":
        """LPIPS with a torchvision backbone state dict and (optionally) the lpips package's
        per-layer weights, both from local files (``weights_only=True``)."""
        feats = backbone(net)
        path = require_file(backbone_path, "lpips backbone",
                            f"a torchvision {net} state dict (.pth); fastlam downloads nothing")
        state = _load_tensors(path, "lpips backbone")
        state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
        own = feats.features.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"lpips backbone: {path} lacks {missing[:4]}... for net={net!r} "
                             "(expected torchvision keys features.N.weight / .bias)")
        for k in own:
            if state[k].shape != own[k].shape:
                raise ValueError(f"lpips backbone: {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        feats.features.load_state_dict({k: state[k] for k in own})
        weights = None
        if linear_path is not None:
            lpath = require_file(linear_path, "lpips linear", f"the lpips package's weights/v0.1/{net}.pth")
            lin = _load_tensors(lpath, "lpips linear")
            channels = feats.channels()
            weights = []
            for i, c in enumerate(channels):
                key = f"lin{i}.model.1.weight"
                if key not in lin or lin[key].numel() != c:
                    raise ValueError(f"lpips linear: {lpath} needs {key} with {c} values for net={net!r}")
                weights.append(lin[key].flatten())
        return cls(feats, weights)


def _load_tensors(path: Path, what: str) -> dict:
    state = load_checkpoint(path, expected="a state dict of tensors (read with torch.load(weights_only=True))", name=what)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{what}: {path} must hold a flat dict of tensors")
    return state
