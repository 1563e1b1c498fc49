"""A V-JEPA 2-style video ViT encoder: tubelet patch embedding, 3D RoPE, optional
frame-causal attention. In fastlam it is frozen and only produces states.

Input video: float (B, C, frames, H, W) with values in [0, 1]; the encoder applies the
ImageNet mean/std normalisation V-JEPA 2 was trained with. Output: (B, T, N, width) with
T = frames / tubelet time steps of N = (H / patch) * (W / patch) tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops import Rope3D
from .blocks import Block

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (width, depth, heads, mlp_ratio); L/H/g are V-JEPA 2's ViT-L/16, ViT-H/16, ViT-g/16.
ENCODER_SIZES = {
    "tiny": (64, 2, 4, 4.0),
    "small": (384, 12, 6, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 22, 48 / 11),
}


@dataclass
class EncoderConfig:
    size: str = "tiny"
    patch_size: int = 16
    tubelet: int = 2
    in_chans: int = 3
    frame_causal: bool = True  # the paper uses the encoder frame-causally
    rope_duplicated_freqs: bool = True  # V-JEPA 2's RoPE quirk, needed for its checkpoints
    width: int | None = None  # overrides of the size preset
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    checkpoint: str | None = None  # local V-JEPA 2 weights to load (never downloaded)

    def dims(self) -> tuple[int, int, int, float]:
        if self.size not in ENCODER_SIZES:
            raise ValueError(f"model.encoder.size: expected one of {tuple(ENCODER_SIZES)}, got {self.size!r}")
        w, d, h, r = ENCODER_SIZES[self.size]
        pick = lambda override, preset: preset if override is None else override
        return (pick(self.width, w), pick(self.depth, d), pick(self.heads, h), pick(self.mlp_ratio, r))


class PatchEmbed3D(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int, tubelet: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T*H'*W', dim), index = (t, h, w)


class VideoEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        width, depth, heads, mlp_ratio = cfg.dims()
        self.width = width
        self.patch_embed = PatchEmbed3D(cfg.in_chans, width, cfg.patch_size, cfg.tubelet)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1), persistent=False)

    def check_video(self, video: torch.Tensor, check_range: bool = True) -> None:
        """Shape, dtype and (``check_range``) value range of ``video``; errors name ``video``."""
        p, tub = self.cfg.patch_size, self.cfg.tubelet
        if not isinstance(video, torch.Tensor) or video.dim() != 5:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video: expected a (B, C, frames, H, W) tensor, got {shape}")
        B, C, F, H, W = video.shape
        if C != self.cfg.in_chans:
            raise ValueError(f"video: expected {self.cfg.in_chans} channels at dim 1 of (B, C, frames, H, W), got {C}")
        if not video.is_floating_point():
            raise TypeError(f"video: expected a float tensor with values in [0, 1], got {video.dtype}")
        # One tubelet is a valid clip (V-JEPA 2-AC encodes every frame alone); the LAM itself
        # checks that it gets at least two time steps.
        if F % tub or F < tub:
            raise ValueError(f"video: frames={F} must be a positive multiple of the tubelet ({tub})")
        if H % p or W % p:
            raise ValueError(f"video: image size {H}x{W} must be divisible by the patch size {p}")
        weight_dtype = self.patch_embed.proj.weight.dtype
        if video.dtype != weight_dtype and not torch.is_autocast_enabled(video.device.type):
            raise TypeError(f"video: expected dtype {weight_dtype} (the encoder's weights), got {video.dtype}; "
                            f"cast it with video.to({weight_dtype}) or run under torch.autocast")
        if check_range and video.numel():
            # One pass over the input (far cheaper than the encoder), but a host sync on CUDA:
            # callers whose data is in range by construction (the training loaders) opt out.
            lo, hi = (float(v) for v in torch.aminmax(video.detach()))
            if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
                raise ValueError(f"video: expected values in [0, 1], got min {lo:.4g}, max {hi:.4g} (divide 0..255 "
                                 "frames by 255; check_range=False skips this check)")

    def forward(self, video: torch.Tensor, check_range: bool = True) -> torch.Tensor:
        """(B, C, frames, H, W) in [0, 1] -> states (B, T, N, width). ``check_range=False``
        skips the check that the values are in [0, 1] (one pass over ``video``, a sync on CUDA)."""
        self.check_video(video, check_range)
        B, _, F, H, W = video.shape
        grid_h, grid_w = H // self.cfg.patch_size, W // self.cfg.patch_size
        x = (video - self.mean.to(video.dtype)) / self.std.to(video.dtype)
        x = self.patch_embed(x)
        frame_len = grid_h * grid_w
        rope = Rope3D(grid_w=grid_w, duplicated_freqs=self.cfg.rope_duplicated_freqs)
        mask = "frame_causal" if self.cfg.frame_causal else "full"
        for blk in self.blocks:
            x = blk(x, frame_len=frame_len, mask=mask, rope=rope)
        x = self.norm(x)
        return x.view(B, F // self.cfg.tubelet, frame_len, self.width)
