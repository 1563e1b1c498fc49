"""LatentActionWorldModel: frozen encoder + IDM + regularizer + frame-causal predictor."""
from __future__ import annotations

import dataclasses

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..config import from_dict, to_dict
from ..inputs import one_line
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
    # discrete (3.3). The paper resets dead codes every 300k videos (configs/paper_vitl.yaml);
    # a small run never sees that many, so by default the reset runs every reset_every_steps.
    num_codes: int = 1024
    commitment: float = 0.25
    reset_every_videos: int = 0  # 0: off
    reset_every_steps: int = 100  # 0: off
    dead_code_threshold: float = 1.0  # a code chosen fewer times since the last reset is dead
    codebook_init: str = "kmeans"  # kmeans (k-means++ on the first batch) | data | uniform | randn
    ema: bool = False  # EMA codebook updates instead of the codebook loss
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    cosine: bool = False

    def build(self, action_dim: int, transitions_per_video: int):
        if self.kind not in REGULARIZERS:
            raise ValueError(f"model.regularizer.kind: expected one of {REGULARIZERS}, got {self.kind!r}")
        kw: dict = {}
        if self.kind == "sparse":
            kw = dict(l_l1=self.l_l1, l_l2=self.l_l2, l_v=self.l_v, l_c=self.l_c, l_m=self.l_m, mean_term=self.mean_term)
        elif self.kind == "noisy":
            kw = dict(beta=self.beta)
        elif self.kind == "discrete":
            from ..nn.quantizers import VQ_INITS

            if self.codebook_init not in VQ_INITS:
                raise ValueError(f"model.regularizer.codebook_init: expected one of {VQ_INITS}, got {self.codebook_init!r}")
            for name in ("num_codes", "reset_every_videos", "reset_every_steps"):
                if getattr(self, name) < (1 if name == "num_codes" else 0):
                    raise ValueError(f"model.regularizer.{name}: expected >= {1 if name == 'num_codes' else 0}, "
                                     f"got {getattr(self, name)}")
            if not 0.0 <= self.ema_decay < 1.0:
                raise ValueError(f"model.regularizer.ema_decay: expected a value in [0, 1), got {self.ema_decay}")
            kw = dict(num_codes=self.num_codes, commitment=self.commitment,
                      reset_every=self.reset_every_videos * transitions_per_video or None,
                      reset_every_steps=self.reset_every_steps or None, dead_code_threshold=self.dead_code_threshold,
                      init=self.codebook_init, ema=self.ema, decay=self.ema_decay, eps=self.ema_eps, cosine=self.cosine)
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

    Video tensors are float (B, C, frames, H, W), H = W = ``cfg.image_size``, in ``model.dtype``
    (or under autocast), with values in [0, 1] (the encoder normalises). The value range is
    checked on every call (one pass over the input; a host sync on CUDA): pass
    ``check_range=False``, or set ``model.check_video_range = False``, to skip it where the data
    is in range by construction (training does).

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
        self.check_video_range = True

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the trained weights, which video and states must have outside autocast."""
        return next(self.predictor.parameters()).dtype

    # The encoder is frozen: it stays in eval mode whatever mode the model is put in.
    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, check_range: bool | None = None) -> torch.Tensor:
        """video (B, C, frames, H, W) in [0, 1] -> states (B, T, N, D) from the frozen encoder."""
        s, tub = self.cfg.image_size, self.cfg.encoder.tubelet
        if isinstance(video, torch.Tensor) and video.dim() == 5:
            if tuple(video.shape[-2:]) != (s, s):
                raise ValueError(f"video: expected shape (B, C, frames, {s}, {s}) (model.image_size={s}), "
                                 f"got {tuple(video.shape)}")
            if video.shape[2] < 2 * tub:
                raise ValueError(f"video: expected at least {2 * tub} frames (two time steps of the tubelet {tub}), "
                                 f"got shape {tuple(video.shape)}")
            want = [self.dtype]
            dev = video.device.type
            if torch.is_autocast_enabled(dev):
                want.append(torch.get_autocast_dtype(dev))
            if video.is_floating_point() and video.dtype not in want:
                # Checked here, not only in the ViT: the weight-free pixels encoder would pass any
                # float through and the IDM would fail deep inside a matmul (autocast does not
                # make float64 or a second 16-bit type usable either).
                names = " or ".join(str(d) for d in dict.fromkeys(want))
                raise TypeError(f"video: expected dtype {names} (the model's weights"
                                f"{' or the autocast dtype' if len(want) > 1 else ''}), got {video.dtype}; pass "
                                f"video.to({want[-1]}), cast the model with model.to(dtype), or run under torch.autocast")
        return self.encoder(video, check_range=self.check_video_range if check_range is None else check_range)

    def _actions(self, states: torch.Tensor):
        if self.idm is None:
            return None, states.new_zeros((), dtype=torch.float32), {}
        out = self.regularizer(self.idm(states))
        return out.z, out.loss, out.metrics

    @torch.no_grad()
    def infer_actions(self, video: torch.Tensor | None = None, *, states: torch.Tensor | None = None,
                      check_range: bool | None = None) -> torch.Tensor:
        """Latent actions (B, T-1, action_dim) between consecutive states, in eval mode
        (the noisy regularizer returns its mean). ``check_range``: see the class docstring."""
        if self.idm is None:
            raise RuntimeError("infer_actions: a 'deterministic' model has no latent actions")
        if (video is None) == (states is None):
            raise ValueError("infer_actions: pass exactly one of video or states")
        if states is None:
            states = self.encode(video, check_range=check_range)
        was_training = self.training
        self.eval()
        try:
            return self._actions(states)[0]
        finally:
            self.train(was_training)

    def predict(self, states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """Next-state predictions (B, T, N, D): output t predicts s_{t+1} from s_0..t and z_t."""
        return self.predictor(states, actions)

    def forward(self, video: torch.Tensor | None = None, *, states: torch.Tensor | None = None,
                check_range: bool | None = None) -> LAMOutput:
        """Teacher-forced training loss on a clip (or on cached encoder states)."""
        if (video is None) == (states is None):
            raise ValueError("forward: pass exactly one of video or states")
        if states is None:
            states = self.encode(video, check_range=check_range)
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
        ``final/``; its ``model.safetensors`` file is taken to mean the directory), or from a
        training checkpoint ``.pt``. Weights are read with safetensors or
        ``torch.load(weights_only=True)``: no arbitrary objects are unpickled. Errors say what
        to pass instead."""
        from safetensors.torch import load_file

        from ..checkpoint import load_checkpoint

        path = Path(path)
        if path.is_file() and path.name in ("model.safetensors", "config.json"):
            if not ((path.parent / "config.json").is_file() and (path.parent / "model.safetensors").is_file()):
                raise FileNotFoundError(f"path: {path} has no config.json + model.safetensors pair beside it; "
                                        f"pass {_WHAT_TO_PASS}")
            path = path.parent
        if path.is_dir():
            cfg_file, weights = path / "config.json", path / "model.safetensors"
            if not cfg_file.is_file() or not weights.is_file():
                hint = ""
                if (path / "final" / "model.safetensors").is_file():
                    hint = f" (a training run folder: pass {path / 'final'})"
                elif (path / "checkpoints" / "latest.pt").is_file():
                    hint = f" (a training run folder without a final model: pass {path / 'checkpoints' / 'latest.pt'})"
                raise FileNotFoundError(f"path: {path} has no config.json + model.safetensors{hint}; "
                                        f"pass {_WHAT_TO_PASS}")
            try:
                cfg = from_dict(ModelConfig, json.loads(cfg_file.read_text()))
                state = load_file(str(weights), device=str(map_location))
            except Exception as e:  # corrupt JSON / safetensors, or a config of another version
                raise ValueError(f"path: {path} cannot be loaded ({type(e).__name__}: {e}); "
                                 f"pass {_WHAT_TO_PASS}") from None
        elif path.is_file():
            ckpt = load_checkpoint(path, map_location, expected=_WHAT_TO_PASS)
            if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
                raise ValueError(f"path: {path} is not a fastlam training checkpoint (no 'model' and "
                                 f"'model_config' entries); pass {_WHAT_TO_PASS}")
            cfg = from_dict(ModelConfig, json.loads(ckpt["model_config"]))
            state = ckpt["model"]
            if "encoder" in ckpt:  # written without the frozen encoder's weights: rebuild and verify it
                from .encoder_record import load_without_encoder, rebuild_encoder

                model = cls(cfg if cfg.encoder.checkpoint is None else dataclasses.replace(
                    cfg, encoder=dataclasses.replace(cfg.encoder, checkpoint=None)))
                rebuild_encoder(model, ckpt["encoder"])
                load_without_encoder(model, state, f"path: {path}")
                return model
            cfg.encoder.checkpoint = None
        else:
            raise FileNotFoundError(f"path: no file or folder at {path}; pass {_WHAT_TO_PASS}")
        cfg.encoder.checkpoint = None  # the encoder weights are in the file already
        model = cls(cfg)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"path: the weights in {path} do not match its config ({one_line(e)})") from None
        return model


_WHAT_TO_PASS = ("a folder holding model.safetensors + config.json (a training run's final/), or a training "
                 "checkpoint .pt (a run's checkpoints/latest.pt)")
