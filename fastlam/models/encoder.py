"""The frozen video encoders that produce a LAM's states.

``kind: vit`` (the default) is a V-JEPA 2-style video ViT: tubelet patch embedding, 3D RoPE,
optional frame-causal attention; V-JEPA 2 checkpoints load into it. ``kind: pixels`` is a
weight-free encoder for small-scale runs (:class:`PixelEncoder`): without pretrained weights a
randomly initialised ViT is the only alternative, and it scrambles the pixels the IDM needs.

Input video: float (B, C, frames, H, W) with values in [0, 1]; the encoder applies the
ImageNet mean/std normalisation V-JEPA 2 was trained with. Output: (B, T, N, width) with
T = frames / tubelet time steps of N = (H / patch) * (W / patch) tokens.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# The encoder's configuration and size presets live with every run configuration; imported
# here under their old names (fastlam.models.encoder.EncoderConfig, ENCODER_SIZES, ...).
from ..configs import ENCODER_KINDS, ENCODER_SIZES, PIXEL_PROJECTIONS, EncoderConfig
from ..ops import Rope3D
from .blocks import Block

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
__all__ = ["ENCODER_KINDS", "ENCODER_SIZES", "IMAGENET_MEAN", "IMAGENET_STD", "PIXEL_PROJECTIONS", "EncoderConfig",
           "PatchEmbed3D", "PixelEncoder", "VideoEncoder", "build_encoder", "check_video"]


class PatchEmbed3D(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int, tubelet: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T*H'*W', dim), index = (t, h, w)


def check_video(cfg: EncoderConfig, video: torch.Tensor, check_range: bool = True,
                weight_dtype: torch.dtype | None = None) -> None:
    """Shape, dtype and (``check_range``) value range of ``video``; errors name ``video``.
    ``weight_dtype``: the encoder's weights, which ``video`` must match outside autocast."""
    p, tub = cfg.patch_size, cfg.tubelet
    if not isinstance(video, torch.Tensor) or video.dim() != 5:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"video: expected a (B, C, frames, H, W) tensor, got {shape}")
    B, C, F, H, W = video.shape
    if C != cfg.in_chans:
        raise ValueError(f"video: expected {cfg.in_chans} channels at dim 1 of (B, C, frames, H, W), got {C}")
    if not video.is_floating_point():
        raise TypeError(f"video: expected a float tensor with values in [0, 1], got {video.dtype}")
    # One tubelet is a valid clip (V-JEPA 2-AC encodes every frame alone); the LAM itself
    # checks that it gets at least two time steps.
    if F % tub or F < tub:
        raise ValueError(f"video: frames={F} must be a positive multiple of the tubelet ({tub})")
    if H % p or W % p:
        raise ValueError(f"video: image size {H}x{W} must be divisible by the patch size {p}")
    if (weight_dtype is not None and video.dtype != weight_dtype
            and not torch.is_autocast_enabled(video.device.type)):
        raise TypeError(f"video: expected dtype {weight_dtype} (the encoder's weights), got {video.dtype}; "
                        f"cast it with video.to({weight_dtype}) or run under torch.autocast")
    if check_range and video.numel():
        # One pass over the input (far cheaper than the encoder), but a host sync on CUDA:
        # callers whose data is in range by construction (the training loaders) opt out.
        lo, hi = (float(v) for v in torch.aminmax(video.detach()))
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(f"video: expected values in [0, 1], got min {lo:.4g}, max {hi:.4g} (divide 0..255 "
                             "frames by 255; check_range=False skips this check)")


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """The encoder ``cfg.kind`` names (checked first)."""
    cfg.check()
    return PixelEncoder(cfg) if cfg.kind == "pixels" else VideoEncoder(cfg)


class PixelEncoder(nn.Module):
    """Frozen, weight-free states: the normalised pixels of each tubelet patch.

    A token is one (tubelet x patch x patch) block of the ImageNet-normalised video, average-pooled
    by ``pool`` in space and flattened channel-major (c, t, y, x), so states keep the ViT's
    (B, T, N, D) layout with N = (H / patch) * (W / patch). Why: the paper's premise is an
    informative frozen encoder; at small scale with no V-JEPA 2 weights the pixels themselves
    are the most informative frozen state there is (a move of the agent is a linear change of
    them), while a random ViT mixes them nonlinearly. Optional fixed projections to ``width``:

    * ``orthogonal``: a random matrix with orthonormal columns from ``projection_seed``
      (distances between patches are kept up to the dropped directions);
    * ``pca``: the first ``width`` principal directions of the first batch's patch features,
      whitened (each direction scaled to unit variance) and centred; fitted once, in the
      first forward, then frozen (under torch.distributed rank 0's fit is broadcast).

    The projection and its ``fitted`` flag are buffers, so ``save_pretrained`` /
    ``from_checkpoint`` round-trip them.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        raw = cfg.pixel_features()
        self.width = raw if cfg.projection == "none" else cfg.width
        self.blocks = nn.ModuleList()  # no transformer blocks (FLOP counters read this)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1), persistent=False)
        if cfg.projection != "none":
            proj = torch.zeros(raw, self.width)
            if cfg.projection == "orthogonal":
                g = torch.Generator().manual_seed(cfg.projection_seed)
                q, r = torch.linalg.qr(torch.randn(raw, self.width, generator=g, dtype=torch.float64))
                proj = (q * torch.sign(torch.diagonal(r))).float()
            self.register_buffer("proj", proj)
            self.register_buffer("center", torch.zeros(raw))
            self.register_buffer("fitted", torch.tensor(cfg.projection == "orthogonal"))

    def check_video(self, video: torch.Tensor, check_range: bool = True) -> None:
        check_video(self.cfg, video, check_range)

    def patches(self, video: torch.Tensor, check_range: bool = True) -> torch.Tensor:
        """(B, C, frames, H, W) in [0, 1] -> pooled, normalised patch features (B, T, N, raw)."""
        self.check_video(video, check_range)
        c, p, tub, pool = self.cfg.in_chans, self.cfg.patch_size, self.cfg.tubelet, self.cfg.pool
        B, _, F, H, W = video.shape
        # token_norm standardises each token anyway; skipping the per-channel ImageNet affine
        # makes the states exactly invariant to a brightness/contrast change a * video + b.
        x = video if self.cfg.token_norm else (video - self.mean.to(video.dtype)) / self.std.to(video.dtype)
        if pool > 1:
            if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
                # avg_pool3d has no 16-bit CPU kernel: the same block mean by a reshape (H and W
                # divide by the patch, so by the pool). Elsewhere avg_pool3d, whose rounding the
                # trained models and the committed results were made with.
                x = x.reshape(B, c, F, H // pool, pool, W // pool, pool).mean(dim=(4, 6))
            else:
                x = torch.nn.functional.avg_pool3d(x, (1, pool, pool))
        q = p // pool
        gh, gw, T = H // p, W // p, F // tub
        x = x.reshape(B, c, T, tub, gh, q, gw, q).permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T, gh, gw, c, tub, q, q)
        if self.cfg.token_norm:
            # Each frame of the tubelet on its own: a flicker between the two frames of a
            # tubelet is removed too. eps 1e-6 as in MAE: a flat patch maps to zeros.
            var, mean = torch.var_mean(x, dim=(4, 6, 7), unbiased=False, keepdim=True)
            x = (x - mean) * torch.rsqrt(var + 1e-6)
        return x.reshape(B, T, gh * gw, c * tub * q * q)

    @torch.no_grad()
    def fit_pca(self, feats: torch.Tensor) -> None:
        """Fit the whitened PCA projection on patch features (..., raw)."""
        x = feats.reshape(-1, feats.shape[-1]).double()
        if x.shape[0] < 2:
            raise ValueError(f"pca: needs at least 2 patch vectors to fit, got {x.shape[0]}")
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(self.width, vh.shape[0])
        scale = (s[:k] / math.sqrt(max(x.shape[0] - 1, 1))).clamp_min(1e-6)
        proj = torch.zeros_like(self.proj, dtype=torch.float64)
        proj[:, :k] = vh[:k].T / scale
        self.proj.copy_(proj.float())
        self.center.copy_(mean.float())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.proj, 0)
            torch.distributed.broadcast(self.center, 0)
        self.fitted.fill_(True)

    def forward(self, video: torch.Tensor, check_range: bool = True) -> torch.Tensor:
        """(B, C, frames, H, W) in [0, 1] -> states (B, T, N, width); ``check_range=False``
        skips the [0, 1] check (a sync on CUDA)."""
        x = self.patches(video, check_range)
        if self.cfg.projection == "none":
            return x
        if not bool(self.fitted):
            self.fit_pca(x)
        return (x - self.center.to(x.dtype)) @ self.proj.to(x.dtype)


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
        check_video(self.cfg, video, check_range, weight_dtype=self.patch_embed.proj.weight.dtype)

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
