"""A pixel decoder from the frozen encoder's states back to video (lam-spec.md section 2).

The paper decodes states only to look at them and to measure leakage and transfer in LPIPS:
the same ViT as the encoder (frame-causal mask, 3D RoPE) over the (B, T, N, D) states, and a
linear patch-to-pixel head that writes each token's ``tubelet x patch x patch`` pixels back in
place. It is trained on its own (``python -m fastlam.train_decoder``) on the frozen encoder's
states with L1 (+ optional LPIPS); the LAM is untouched.

Because attention is frame-causal, time step t's pixels depend only on states 0..t, so a
predicted or rolled-out state can be decoded as soon as it exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint, load_safetensors, save_weights_folder
from ..config import ConfigError, from_dict, to_dict
from ..inputs import InputError, MissingInputError, read_json
from ..ops import Rope3D
from .blocks import Block
from .encoder import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class DecoderConfig:
    state_dim: int = 64  # the encoder's width (the LAM's states' D)
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet: int = 2
    image_size: int = 64
    out_chans: int = 3
    frame_causal: bool = True

    def validate(self) -> None:
        for key in ("state_dim", "width", "depth", "heads", "patch_size", "tubelet", "image_size", "out_chans"):
            if getattr(self, key) < 1:
                raise ValueError(f"decoder.{key}: expected an int >= 1, got {getattr(self, key)!r}")
        if self.width % self.heads:
            raise ValueError(f"decoder.width={self.width} must be divisible by decoder.heads={self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"decoder.image_size={self.image_size} must be divisible by decoder.patch_size={self.patch_size}")

    @classmethod
    def for_lam(cls, lam, **overrides) -> "DecoderConfig":
        """A decoder shaped for a LAM's frozen encoder (state width, patch, tubelet, image size);
        ``lam`` is a :class:`~fastlam.models.LatentActionWorldModel` (any encoder kind)."""
        enc = lam.cfg.encoder
        base = dict(state_dim=int(lam.encoder.width), patch_size=enc.patch_size, tubelet=enc.tubelet,
                    image_size=lam.cfg.image_size, out_chans=enc.in_chans)
        base.update(overrides)
        return cls(**base)


class StateDecoder(nn.Module):
    """states (B, T, N, state_dim) -> video (B, C, T * tubelet, H, W) on the [0, 1] pixel scale.

    The head predicts ImageNet-normalised pixels (the encoder's input space) and the output is
    mapped back to [0, 1]; it is not clamped, so an L1 loss sees the raw error. Use
    :meth:`frames` for displayable, clamped frames.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.embed = nn.Linear(cfg.state_dim, cfg.width)
        self.blocks = nn.ModuleList([Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, cfg.out_chans * cfg.tubelet * cfg.patch_size ** 2)
        mean = torch.tensor(IMAGENET_MEAN[: cfg.out_chans] if cfg.out_chans == 3 else [0.5] * cfg.out_chans)
        std = torch.tensor(IMAGENET_STD[: cfg.out_chans] if cfg.out_chans == 3 else [0.5] * cfg.out_chans)
        self.register_buffer("mean", mean.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1, 1), persistent=False)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if not isinstance(states, torch.Tensor) or states.dim() != 4:
            got = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
            raise ValueError(f"states: expected a (B, T, N, D) tensor, got {got}")
        B, T, N, D = states.shape
        if N != self.grid ** 2 or D != cfg.state_dim:
            raise ValueError(f"states: expected (B, T, {self.grid ** 2}, {cfg.state_dim}) for a {cfg.image_size} px "
                             f"decoder with patch {cfg.patch_size}, got {tuple(states.shape)}")
        x = self.embed(states.to(self.embed.weight.dtype)).flatten(1, 2)
        rope = Rope3D(grid_w=self.grid)
        mask = "frame_causal" if cfg.frame_causal else "full"
        for blk in self.blocks:
            x = blk(x, frame_len=N, mask=mask, rope=rope)
        x = self.head(self.norm(x))  # (B, T*N, C * tub * p * p), tokens in (t, h, w) order
        p, tub, g, C = cfg.patch_size, cfg.tubelet, self.grid, cfg.out_chans
        x = x.view(B, T, g, g, C, tub, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        video = x.reshape(B, C, T * tub, g * p, g * p)
        return video * self.std.to(video.dtype) + self.mean.to(video.dtype)

    @torch.no_grad()
    def frames(self, states: torch.Tensor) -> torch.Tensor:
        """Displayable frames: :meth:`forward` in eval mode, clamped to [0, 1], float32."""
        was = self.training
        self.eval()
        try:
            return self(states).float().clamp_(0, 1)
        finally:
            self.train(was)

    # ---- persistence (same layout as the LAM's final/) ---------------------------------
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        return save_weights_folder(directory, self, {"decoder": to_dict(self.cfg), **(extra or {})})

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location="cpu") -> "StateDecoder":
        """Load a decoder folder written by :meth:`save_pretrained` (``train_decoder``'s
        ``final/``) or a decoder training checkpoint ``.pt``; safetensors or
        ``torch.load(weights_only=True)`` only. Anything else is an
        :class:`~fastlam.inputs.InputError` naming the path and what is there."""
        path = Path(path)
        if path.is_dir():
            cfg_file, weights = path / "config.json", path / "model.safetensors"
            if not cfg_file.is_file() or not weights.is_file():
                raise MissingInputError(f"decoder: {path} must contain config.json and model.safetensors; "
                                        f"pass {DECODER_EXPECTED}")
            meta = read_json(cfg_file, "decoder", DECODER_EXPECTED)
            if "decoder" not in meta:
                raise InputError(f"decoder: {cfg_file} is not a decoder config (is {path} a LAM folder?); "
                                 f"pass {DECODER_EXPECTED}")
            cfg = _config(meta["decoder"], cfg_file)
            state = load_safetensors(weights, map_location, expected=DECODER_EXPECTED, name="decoder")
        elif path.is_file():
            ckpt = load_checkpoint(path, map_location, expected=DECODER_EXPECTED, name="decoder")
            if not isinstance(ckpt, dict) or "decoder" not in ckpt or "decoder_config" not in ckpt:
                raise InputError(f"decoder: {path} is not a decoder training checkpoint (no 'decoder' and "
                                 f"'decoder_config' entries); pass {DECODER_EXPECTED}")
            try:
                raw = json.loads(ckpt["decoder_config"])
            except (TypeError, ValueError):
                raise InputError(f"decoder: {path}: its 'decoder_config' entry is not JSON text; "
                                 f"pass {DECODER_EXPECTED}") from None
            cfg = _config(raw, path)
            state = ckpt["decoder"]
        else:
            raise MissingInputError(f"decoder: no decoder at {path}; pass {DECODER_EXPECTED}")
        model = cls(cfg)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:  # torch's message spans lines: keep it to one
            raise InputError(f"decoder: the weights in {path} do not match its config ({' '.join(str(e).split())})") from None
        return model.eval()


DECODER_EXPECTED = "the final/ folder of python -m fastlam.train_decoder (or a checkpoint .pt from its checkpoints/)"


def _config(raw, where: Path) -> DecoderConfig:
    if not isinstance(raw, dict):
        raise InputError(f"decoder: {where}: the decoder config is not a mapping; pass {DECODER_EXPECTED}")
    try:
        cfg = from_dict(DecoderConfig, raw)
        cfg.validate()
    except (ConfigError, ValueError, TypeError) as e:
        raise InputError(f"decoder: {where}: {e}") from None
    return cfg
