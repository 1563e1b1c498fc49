"""The action-conditioned baseline: a V-JEPA 2-AC-style predictor trained on the true actions
(:func:`train_ac_baseline`), wrapped to see standardised inputs (:class:`StandardizedACPredictor`)
and saved / loaded with those statistics. Planning rolls it out through
:class:`fastlam.eval.planning_worlds.ACRollout`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..inputs import read_json
from ..models import ACPredictor, ACPredictorConfig
from .fitting import RandomBatchRecipe, fit_on_random_batches


class StandardizedACPredictor(nn.Module):
    """An :class:`ACPredictor` that sees standardised actions and proprioception.

    Arm deltas of a few centimetres and a +-1 gripper command share one linear embedding;
    raw, the position deltas barely reach the network and the baseline learns mostly from the
    states (simulated arm, 500 iterations: planning Delta_xyz 0.28 m raw, 0.17 m standardised).
    The per-dimension statistics of the training data are kept here and written next to the
    predictor's weights (``input_standardization.json``); callers pass raw physical units."""

    STATS_FILE = "input_standardization.json"

    def __init__(self, predictor: ACPredictor, action_mean: torch.Tensor | None = None,
                 action_scale: torch.Tensor | None = None, proprio_mean: torch.Tensor | None = None,
                 proprio_scale: torch.Tensor | None = None):
        super().__init__()
        self.predictor = predictor
        A = predictor.cfg.action_dim
        for name, value, default in (("action_mean", action_mean, 0.0), ("action_scale", action_scale, 1.0),
                                     ("proprio_mean", proprio_mean, 0.0), ("proprio_scale", proprio_scale, 1.0)):
            value = torch.full((A,), default) if value is None else torch.as_tensor(value, dtype=torch.float32)
            if value.shape != (A,):
                raise ValueError(f"{name}: expected shape ({A},) (the predictor's action_dim), got {tuple(value.shape)}")
            self.register_buffer(name, value.clone())

    @classmethod
    def fit(cls, predictor: ACPredictor, actions: torch.Tensor, proprio: torch.Tensor) -> StandardizedACPredictor:
        """Statistics from training actions (..., A) and proprio (..., A); a dimension that
        never moves keeps scale 1."""
        def stats(x):
            x = x.float().flatten(0, -2)
            std = x.std(0, unbiased=False)
            return x.mean(0), torch.where(std > 1e-8, std, torch.ones_like(std))

        return cls(predictor, *stats(actions), *stats(proprio))

    @property
    def cfg(self) -> ACPredictorConfig:
        return self.predictor.cfg

    def _inputs(self, actions: torch.Tensor, proprio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ((actions - self.action_mean) / self.action_scale, (proprio - self.proprio_mean) / self.proprio_scale)

    def forward(self, states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        return self.predictor(states, *self._inputs(actions, proprio))

    def loss(self, states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor, **kwargs):
        return self.predictor.loss(states, *self._inputs(actions, proprio), **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = self.predictor.save_pretrained(directory)
        stats = {k: getattr(self, k).tolist() for k in ("action_mean", "action_scale", "proprio_mean", "proprio_scale")}
        (Path(directory) / self.STATS_FILE).write_text(json.dumps(stats, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> StandardizedACPredictor:
        """Load a saved baseline; one saved without statistics (raw inputs) loads with the
        identity standardisation, i.e. exactly as it was trained."""
        predictor = ACPredictor.from_pretrained(directory)
        f = Path(directory) / cls.STATS_FILE
        if not f.is_file():
            return cls(predictor)
        keys = ("action_mean", "action_scale", "proprio_mean", "proprio_scale")
        stats = read_json(f, "--ac-baseline", "the ac_baseline folder written by 'python -m fastlam.eval ac-baseline'",
                          keys=keys)
        return cls(predictor, **{k: stats[k] for k in keys})


@dataclass
class ACBaselineConfig(RandomBatchRecipe):
    """The baseline's predictor and its fitting schedule (the recipe's defaults)."""
    width: int = 96
    depth: int = 2
    heads: int = 4
    rollout_steps: int = 2  # autoregressive steps of the rollout loss


def train_ac_baseline(states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor,
                      cfg: ACBaselineConfig | None = None, kind: str = "droid",
                      log_every: int = 0) -> tuple[StandardizedACPredictor, list[float]]:
    """Train a V-JEPA 2-AC-style predictor (action and state tokens before each frame,
    block-causal, teacher forcing + rollout L1) on the true actions of clips: states
    (B, T, N, D), actions (B, T-1, A), proprio (B, T, A). Navigation proprio is made relative
    to each clip's first pose, so the model never sees absolute arena coordinates. Actions and
    proprio are standardised with these clips' statistics (:class:`StandardizedACPredictor`)."""
    cfg = cfg or ACBaselineConfig()
    if proprio is None:
        raise ValueError("proprio: the action-conditioned baseline needs proprio.npy in the dataset")
    B, T, N, D = states.shape
    A = actions.shape[-1]
    if actions.shape != (B, T - 1, A) or proprio.shape != (B, T, A):
        raise ValueError(f"actions/proprio: expected (B, T-1, A) and (B, T, A) with A = {A}, got "
                         f"{tuple(actions.shape)} and {tuple(proprio.shape)}")
    if kind == "recon":
        proprio = relative_poses(proprio)
    side = math.isqrt(N)
    torch.manual_seed(cfg.seed)
    model = StandardizedACPredictor.fit(
        ACPredictor(ACPredictorConfig(embed_dim=D, width=cfg.width, depth=cfg.depth, heads=cfg.heads,
                                      action_dim=A, grid_size=side, rope_duplicated_freqs=False)), actions, proprio)

    def batch_loss(idx):
        return model.loss(states[idx], actions[idx], proprio[idx], rollout_steps=min(cfg.rollout_steps, T - 1)).loss

    losses = fit_on_random_batches(model, batch_loss, B, cfg, log_every=log_every,
                                   log=lambda it, loss: print(f"AC baseline iter {it}/{cfg.iterations}: L1 {loss:.4f}"))
    return model, losses


def relative_poses(poses: torch.Tensor) -> torch.Tensor:
    """World poses (..., T, 3) -> poses relative to the first one, in its frame."""
    p0 = poses[..., :1, :]
    d = poses[..., :2] - p0[..., :2]
    c, s = torch.cos(p0[..., 2]), torch.sin(p0[..., 2])
    x = c * d[..., 0] + s * d[..., 1]
    y = -s * d[..., 0] + c * d[..., 1]
    return torch.stack([x, y, poses[..., 2] - p0[..., 2]], -1)
