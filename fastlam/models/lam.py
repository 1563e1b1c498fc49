"""LatentActionWorldModel: frozen encoder + IDM + regularizer + frame-causal predictor."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file
from torch import nn

from ..checkpoint import load_checkpoint, save_weights_folder
from ..config import from_dict, to_dict
# The model's configuration lives with every run configuration; imported here under its old
# names (fastlam.models.lam.ModelConfig, RegularizerConfig, TransformerConfig).
from ..configs import EncoderConfig, ModelConfig, RegularizerConfig, TransformerConfig
from ..inputs import one_line
from ..nn import PredictionLoss, VectorQuantizer, regularizer_from_config
from .encoder import build_encoder
from .encoder_record import load_without_encoder, rebuild_encoder
from .idm import InverseDynamicsModel
from .predictor import Predictor

__all__ = ["EncoderConfig", "LAMOutput", "LatentActionWorldModel", "ModelConfig", "RegularizerConfig",
           "TransformerConfig"]


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
        cfg.check()
        self.encoder = build_encoder(enc)
        self.encoder.requires_grad_(False)
        grid_w = cfg.image_size // enc.patch_size
        steps = cfg.frames // enc.tubelet
        self.regularizer = regularizer_from_config(cfg.regularizer, cfg.action_dim, steps - 1)
        head = self.regularizer.head_features(cfg.action_dim) if self.regularizer is not None else cfg.action_dim
        self.idm = (
            InverseDynamicsModel(self.encoder.width, cfg.idm.width, cfg.idm.depth, cfg.idm.heads, head, grid_w,
                                 grid_w * (cfg.image_size // enc.patch_size), cfg.idm.mlp_ratio)
            if self.regularizer is not None
            else None
        )
        p = cfg.predictor
        self.predictor = Predictor(self.encoder.width, p.width, p.depth, p.heads, cfg.action_dim, grid_w, p.mlp_ratio,
                                   residual=cfg.predictor_target == "delta")
        self.loss_fn = PredictionLoss(cfg.loss, cfg.normalize_target, change_weight=cfg.change_weight)
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

    def defer_codebook_edits(self, defer: bool = True) -> None:
        """For a compiled forward: the VQ's codebook edits (EMA updates, expiries, dead-code
        resets) leave the forward, whose graph then has no data-dependent branch, and wait for
        :meth:`apply_codebook_edits`. Its first-batch initialisation stays in the forward, run
        eagerly (``torch.compiler.disable``) on the first training step only."""
        for m in self.modules():
            if isinstance(m, VectorQuantizer):
                m.defer_codebook_edits = defer

    def apply_codebook_edits(self) -> dict:
        """The deferred codebook edits of the last training forward (see
        :meth:`defer_codebook_edits`) and their metrics; ``{}`` when none are pending. Call it
        after the forward and before the backward, where the eager forward makes them."""
        metrics = {}
        for m in self.modules():
            if isinstance(m, VectorQuantizer):
                metrics.update(m.apply_codebook_edits())
        return metrics

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
        # previous: s_t, which model.change_weight compares the target with (unused at 0)
        pred_loss = self.loss_fn(pred.flatten(1, 2), states[:, 1:].flatten(1, 2), previous=states[:, :-1].flatten(1, 2))
        loss = pred_loss + reg_loss
        return LAMOutput(loss, pred_loss.detach(), reg_loss.detach(), z, metrics)

    # ---- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        return save_weights_folder(directory, self, to_dict(self.cfg))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location="cpu") -> "LatentActionWorldModel":
        """Load from a directory written by :meth:`save_pretrained` (or by training's
        ``final/``; its ``model.safetensors`` file is taken to mean the directory), or from a
        training checkpoint ``.pt``. Weights are read with safetensors or
        ``torch.load(weights_only=True)``: no arbitrary objects are unpickled. Errors say what
        to pass instead."""
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
