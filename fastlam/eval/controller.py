"""Controllers: real action (plus the previous state) -> latent action (lam-spec.md section 5).

Latent actions inferred from in-the-wild video are camera-relative ("the view moved left"),
so the same robot command maps to different latents from different viewpoints: an
actions-only MLP cannot learn the map, the paper's controller also looks at the state.

:class:`LatentController` (the paper's default): the previous state's tokens go through 2
self-attention blocks; the action through a 3-layer MLP to the width; 1 cross-attention block
in which the action token queries the processed state; a linear layer to the latent size
(128). One token per step. :class:`ActionMLPController` is the actions-only baseline.
Both are trained with L2 against the IDM latents (:func:`train_controller`), with the
paper's optimiser as defaults (AdamW lr 1e-3, wd 0.04, 3,000 iterations, 300 warmup then
cosine, batch 256).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_safetensors, save_weights_folder
from ..inputs import InputError, MissingInputError, read_json, require_folder
from ..models.blocks import MLP, Block
from .fitting import RandomBatchRecipe, fit_on_random_batches


@dataclass
class ControllerConfig:
    kind: str = "state"  # state (the paper's controller) | mlp (actions only)
    state_dim: int = 64  # D of the encoder states
    action_dim: int = 7  # real actions
    latent_dim: int = 128  # the LAM's latent action size
    width: int = 256
    heads: int = 4
    self_blocks: int = 2
    mlp_hidden: int = 256


@dataclass
class ControllerTrainConfig(RandomBatchRecipe):
    """The controller's fitting schedule: longer, with larger batches than the recipe's defaults."""
    iterations: int = 3000
    warmup: int = 300
    batch_size: int = 256


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (queries attend to a context) followed by an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width: expected a multiple of heads={heads}, got {dim}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, Lq, C = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).view(B, Lq, h, C // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).view(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Lq, C)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


class _ActionNormalization(nn.Module):
    """Standardises the real actions before they enter the network. Robot actions come in
    physical units of very different sizes (arm deltas of a few centimetres next to a
    gripper command of +-1): raw, the centimetre-sized dimensions barely move the first layer,
    and the controller learns the latent from the state alone (measured on the simulated arm:
    swapping the actions between samples moved its output by 0.04 against 0.28 standardised).
    The statistics are buffers, so they are saved with the weights."""

    def _init_normalization(self, action_dim: int) -> None:
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_scale", torch.ones(action_dim))

    @torch.no_grad()
    def fit_action_normalization(self, actions: torch.Tensor) -> None:
        """Per-dimension mean and std of training actions (M, A); a dimension that never moves
        keeps scale 1, so it stays 0 instead of dividing by 0."""
        actions = actions.float().flatten(0, -2)
        std = actions.std(0, unbiased=False)
        self.action_mean.copy_(actions.mean(0))
        self.action_scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean.to(actions.dtype)) / self.action_scale.to(actions.dtype)


def _action_mlp(action_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(action_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, out))


class LatentController(_ActionNormalization):
    """(action (B, A), previous state (B, N, D)) -> latent action (B, latent_dim)."""

    def __init__(self, cfg: ControllerConfig):
        super().__init__()
        self.cfg = cfg
        self._init_normalization(cfg.action_dim)
        self.state_embed = nn.Linear(cfg.state_dim, cfg.width)
        self.self_blocks = nn.ModuleList([Block(cfg.width, cfg.heads) for _ in range(cfg.self_blocks)])
        self.action_mlp = _action_mlp(cfg.action_dim, cfg.mlp_hidden, cfg.width)
        self.cross = CrossAttentionBlock(cfg.width, cfg.heads)
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, cfg.latent_dim)

    def forward(self, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        _check_inputs(self.cfg, actions, states)
        x = self.state_embed(states)
        # The state is one frame: plain full attention; the tokens carry no positional code
        # beyond what the encoder put into them.
        for blk in self.self_blocks:
            x = blk(x, frame_len=x.shape[1], mask="full", rope=None)
        q = self.action_mlp(self.normalize_actions(actions)).unsqueeze(1)
        return self.head(self.norm(self.cross(q, x)))[:, 0]


class ActionMLPController(_ActionNormalization):
    """Actions-only baseline: a 3-layer MLP, the state is ignored."""

    def __init__(self, cfg: ControllerConfig):
        super().__init__()
        self.cfg = cfg
        self._init_normalization(cfg.action_dim)
        self.mlp = _action_mlp(cfg.action_dim, cfg.mlp_hidden, cfg.latent_dim)

    def forward(self, actions: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(self.cfg, actions, states)
        return self.mlp(self.normalize_actions(actions))


def _check_inputs(cfg: ControllerConfig, actions: torch.Tensor, states: torch.Tensor | None) -> None:
    if actions.dim() != 2 or actions.shape[1] != cfg.action_dim:
        raise ValueError(f"actions: expected (B, {cfg.action_dim}) (the controller's action_dim), "
                         f"got {tuple(actions.shape)}")
    if states is not None and (states.dim() != 3 or states.shape[0] != actions.shape[0]
                               or states.shape[2] != cfg.state_dim):
        raise ValueError(f"states: expected (B={actions.shape[0]}, N, {cfg.state_dim}), got {tuple(states.shape)}")


def build_controller(cfg: ControllerConfig) -> nn.Module:
    if cfg.kind == "state":
        return LatentController(cfg)
    if cfg.kind == "mlp":
        return ActionMLPController(cfg)
    raise ValueError(f"kind: expected 'state' or 'mlp', got {cfg.kind!r}")


def controller_pairs(states: torch.Tensor, actions: torch.Tensor, latents: torch.Tensor):
    """Flatten clips into one training pair per transition: (s_t (M, N, D), a_t (M, A),
    z_t (M, latent)) from states (B, T, N, D), actions (B, T-1, A), latents (B, T-1, latent)."""
    if actions is None:
        raise ValueError("actions: the controller needs an action-labelled dataset, got none")
    if states.dim() != 4 or actions.dim() != 3 or latents.dim() != 3:
        raise ValueError(f"states/actions/latents: expected (B, T, N, D), (B, T-1, A), (B, T-1, L); got "
                         f"{tuple(states.shape)}, {tuple(actions.shape)}, {tuple(latents.shape)}")
    B, T = states.shape[:2]
    if actions.shape[:2] != (B, T - 1) or latents.shape[:2] != (B, T - 1):
        raise ValueError(f"actions/latents: expected leading dims {(B, T - 1)}, got "
                         f"{tuple(actions.shape[:2])} and {tuple(latents.shape[:2])}")
    return states[:, :-1].flatten(0, 1), actions.flatten(0, 1).float(), latents.flatten(0, 1).float()


def train_controller(model: nn.Module, states: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
                     cfg: ControllerTrainConfig | None = None, *, log_every: int = 0) -> list[float]:
    """Fit ``model`` to ``targets`` (M, latent) from (``actions`` (M, A), ``states`` (M, N, D))
    with L2, AdamW, linear warmup then cosine; the controller's action standardisation is fitted
    to ``actions`` first. Returns the training loss per iteration."""
    cfg = cfg or ControllerTrainConfig()
    if not (states.shape[0] == actions.shape[0] == targets.shape[0]):
        raise ValueError(f"states/actions/targets: expected the same number of pairs, got "
                         f"{states.shape[0]}, {actions.shape[0]}, {targets.shape[0]}")
    if targets.shape[1] != model.cfg.latent_dim:
        raise ValueError(f"targets: expected (M, {model.cfg.latent_dim}) latents, got {tuple(targets.shape)}")
    device = next(model.parameters()).device
    if isinstance(model, _ActionNormalization):
        model.fit_action_normalization(actions.to(device))

    def batch_loss(idx):
        pred = model(actions[idx].to(device), states[idx].to(device))
        return (pred - targets[idx].to(device)).pow(2).sum(-1).mean()

    return fit_on_random_batches(
        model, batch_loss, states.shape[0], cfg, log_every=log_every,
        log=lambda it, loss: print(f"controller {model.cfg.kind} iter {it}/{cfg.iterations}: L2 {loss:.4f}"))


@torch.no_grad()
def controller_error(model: nn.Module, states: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
                     batch_size: int = 512) -> float:
    """Mean squared L2 distance between predicted and IDM latents (per pair, summed over dims)."""
    model.eval()
    device = next(model.parameters()).device
    tot = 0.0
    for i in range(0, states.shape[0], batch_size):
        p = model(actions[i:i + batch_size].to(device), states[i:i + batch_size].to(device))
        tot += float((p.float().cpu() - targets[i:i + batch_size]).pow(2).sum())
    return tot / states.shape[0]


def save_controller(model: nn.Module, directory: str | Path) -> Path:

    return save_weights_folder(directory, model, asdict(model.cfg))


CONTROLLER_EXPECTED = "a controller folder written by 'python -m fastlam.eval controller' (OUT/controller or OUT/controller_mlp)"


def load_controller(directory: str | Path) -> nn.Module:
    directory = require_folder(directory, "controller", CONTROLLER_EXPECTED)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise MissingInputError(f"controller: {directory} must contain config.json and model.safetensors; "
                                f"pass {CONTROLLER_EXPECTED}")
    raw = read_json(directory / "config.json", "controller", CONTROLLER_EXPECTED)
    try:
        cfg = ControllerConfig(**raw)
    except TypeError as e:  # unknown or missing fields
        raise InputError(f"controller: {directory / 'config.json'} is not a controller config ({e}); "
                         f"pass {CONTROLLER_EXPECTED}") from None
    model = build_controller(cfg)
    state = load_safetensors(directory / "model.safetensors", expected=CONTROLLER_EXPECTED, name="controller")
    # Controllers saved before action standardisation existed were trained on raw actions:
    # the default buffers (mean 0, scale 1) reproduce exactly that.
    legacy = {"action_mean", "action_scale"} - set(state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches; torch's message spans lines
        raise InputError(f"controller: {directory}/model.safetensors does not match its config.json "
                         f"({' '.join(str(e).split())})") from None
    if set(missing) - legacy or unexpected:
        raise InputError(f"controller: {directory}/model.safetensors does not match its config.json "
                         f"(missing {sorted(set(missing) - legacy)}, unexpected {sorted(unexpected)})")
    return model.eval()
