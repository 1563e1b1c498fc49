"""LatentActionWorldModel: frozen encoder + IDM + regularizer + frame-causal predictor."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..config import from_dict, to_dict
from ..nn import REGULARIZERS, PredictionLoss, build_regularizer
from .encoder import EncoderConfig, build_encoder
from .idm import InverseDynamicsModel
from .predictor import Predictor


@dataclass
class TransformerConfig:
    width: int = 96
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class RegularizerConfig:
    kind: str = "noisy"  # none | deterministic | sparse | noisy | discrete
    # sparse (lam-spec.md 3.1): l_l1 is the swept strength, the rest are the paper's fixed values
    l_l1: float = 0.01
    l_l2: float = 1.0
    l_v: float = 0.1
    l_c: float = 0.001
    l_m: float = 0.1
    mean_term: str = "signed"
    # noisy (3.2)
    beta: float = 5e-5
    # discrete (3.3)
    num_codes: int = 1024
    commitment: float = 0.25
    reset_every_videos: int = 300_000

    def build(self, action_dim: int, transitions_per_video: int):
        if self.kind not in REGULARIZERS:
            raise ValueError(f"model.regularizer.kind: expected one of {REGULARIZERS}, got {self.kind!r}")
        kw: dict = {}
        if self.kind == "sparse":
            kw = dict(l_l1=self.l_l1, l_l2=self.l_l2, l_v=self.l_v, l_c=self.l_c, l_m=self.l_m, mean_term=self.mean_term)
        elif self.kind == "noisy":
            kw = dict(beta=self.beta)
        elif self.kind == "discrete":
            kw = dict(num_codes=self.num_codes, commitment=self.commitment,
                      reset_every=self.reset_every_videos * transitions_per_video)
        return build_regularizer(self.kind, action_dim=action_dim, **kw)


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    idm: TransformerConfig = field(default_factory=lambda: TransformerConfig(width=64, depth=2, heads=4))
    predictor: TransformerConfig = field(default_factory=TransformerConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    action_dim: int = 128
    image_size: int = 256
    frames: int = 16  # raw frames per clip (T = frames / tubelet time steps)
    loss: str = "l1"
    normalize_target: bool = False


class LAMOutput(NamedTuple):
    loss: torch.Tensor
    pred_loss: torch.Tensor
    reg_loss: torch.Tensor
    actions: torch.Tensor | None  # (B, T-1, action_dim)
    metrics: dict


class LatentActionWorldModel(nn.Module):
    """The latent action world model of Garrido et al. (2026).

    Video tensors are float (B, C, frames, H, W) with values in [0, 1] (the encoder normalises).

    Example:
        >>> model = LatentActionWorldModel(ModelConfig(image_size=32, frames=8,
        ...     encoder=EncoderConfig(patch_size=8)))
        >>> video = torch.rand(2, 3, 8, 32, 32)
        >>> model.infer_actions(video).shape
        torch.Size([2, 3, 128])
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        if cfg.image_size % enc.patch_size:
            raise ValueError(f"model.image_size={cfg.image_size} must be divisible by model.encoder.patch_size={enc.patch_size}")
        if cfg.frames % enc.tubelet or cfg.frames < 2 * enc.tubelet:
            raise ValueError(f"model.frames={cfg.frames} must be a multiple of the tubelet {enc.tubelet} and >= {2 * enc.tubelet}")
        self.encoder = build_encoder(enc)
        self.encoder.requires_grad_(False)
        grid_w = cfg.image_size // enc.patch_size
        steps = cfg.frames // enc.tubelet
        self.regularizer = cfg.regularizer.build(cfg.action_dim, steps - 1)
        head = self.regularizer.head_features(cfg.action_dim) if self.regularizer is not None else cfg.action_dim
        self.idm = (
            InverseDynamicsModel(self.encoder.width, cfg.idm.width, cfg.idm.depth, cfg.idm.heads, head, grid_w,
                                 grid_w * (cfg.image_size // enc.patch_size), cfg.idm.mlp_ratio)
            if self.regularizer is not None
            else None
        )
        p = cfg.predictor
        self.predictor = Predictor(self.encoder.width, p.width, p.depth, p.heads, cfg.action_dim, grid_w, p.mlp_ratio)
        self.loss_fn = PredictionLoss(cfg.loss, cfg.normalize_target)

    # The encoder is frozen: it stays in eval mode whatever mode the model is put in.
    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, C, frames, H, W) in [0, 1] -> states (B, T, N, D) from the frozen encoder."""
        return self.encoder(video)

    def _actions(self, states: torch.Tensor):
        if self.idm is None:
            return None, states.new_zeros((), dtype=torch.float32), {}
        out = self.regularizer(self.idm(states))
        return out.z, out.loss, out.metrics

    @torch.no_grad()
    def infer_actions(self, video: torch.Tensor | None = None, *, states: torch.Tensor | None = None) -> torch.Tensor:
        """Latent actions (B, T-1, action_dim) between consecutive states, in eval mode
        (the noisy regularizer returns its mean)."""
        if self.idm is None:
            raise RuntimeError("infer_actions: a 'deterministic' model has no latent actions")
        if (video is None) == (states is None):
            raise ValueError("infer_actions: pass exactly one of video or states")
        if states is None:
            states = self.encode(video)
        was_training = self.training
        self.eval()
        try:
            return self._actions(states)[0]
        finally:
            self.train(was_training)

    def predict(self, states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """Next-state predictions (B, T, N, D): output t predicts s_{t+1} from s_0..t and z_t."""
        return self.predictor(states, actions)

    def forward(self, video: torch.Tensor | None = None, *, states: torch.Tensor | None = None) -> LAMOutput:
        """Teacher-forced training loss on a clip (or on cached encoder states)."""
        if (video is None) == (states is None):
            raise ValueError("forward: pass exactly one of video or states")
        if states is None:
            states = self.encode(video)
        z, reg_loss, metrics = self._actions(states)
        pred = self.predict(states[:, :-1], z)
        pred_loss = self.loss_fn(pred.flatten(1, 2), states[:, 1:].flatten(1, 2))
        loss = pred_loss + reg_loss
        return LAMOutput(loss, pred_loss.detach(), reg_loss.detach(), z, metrics)

    # ---- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        from safetensors.torch import save_file

        from ..checkpoint import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p)))
        atomic_write(directory / "config.json", lambda p: Path(p).write_text(json.dumps(to_dict(self.cfg), indent=2)))
        return directory

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location="cpu") -> "LatentActionWorldModel":
        """Load from a directory written by :meth:`save_pretrained` (or by training's
        ``final/``), or from a training checkpoint ``.pt``. Weights are read with safetensors or
        ``torch.load(weights_only=True)``: no arbitrary objects are unpickled."""
        from safetensors.torch import load_file

        path = Path(path)
        if path.is_dir():
            cfg_file, weights = path / "config.json", path / "model.safetensors"
            if not cfg_file.is_file() or not weights.is_file():
                raise FileNotFoundError(f"path: {path} must contain config.json and model.safetensors")
            cfg = from_dict(ModelConfig, json.loads(cfg_file.read_text()))
            cfg.encoder.checkpoint = None  # the encoder weights are in model.safetensors already
            state = load_file(str(weights), device=str(map_location))
        elif path.is_file():
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
            if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
                raise ValueError(f"path: {path} is not a fastlam training checkpoint")
            cfg = from_dict(ModelConfig, json.loads(ckpt["model_config"]))
            cfg.encoder.checkpoint = None
            state = ckpt["model"]
        else:
            raise FileNotFoundError(f"path: no checkpoint at {path}")
        model = cls(cfg)
        model.load_state_dict(state)
        return model
