"""A V-JEPA 2-AC-compatible action-conditioned predictor: the baseline trained on real actions.

V-JEPA 2-AC (Assran et al., 2025) predicts the next frozen-encoder state from the past states,
the robot's actions and its proprioceptive state. Per time step t it embeds the action a_t and
the proprioceptive state p_t (7-d each: end-effector position, orientation, gripper) with
linear layers and places those two tokens *before* the frame's patch tokens, so a frame is
``2 + N`` tokens (``3 + N`` with the optional camera-extrinsics token). Attention is
block-causal over frames. 3D RoPE rotates the patch tokens by (t, h, w); the action / state
tokens are rotated by time only (their h and w chunks are left as they are), with V-JEPA 2's
duplicated-frequency quirk. Spatial positions are multiplied by ``grid_size / H`` so a
different resolution lands on the training grid (1 at the trained 16 x 16 grid).

fastlam runs all of this in one call per block to ``fastlam.ops.st_attention`` with
``frame_len = N + 2``: the prefix tokens' time-only rotation is ``Rope3D(num_prefix=2)`` and
the block-causal mask is ``mask="frame_causal"``, computed from token indices, so the fused
kernel never needs V-JEPA 2-AC's dense (L x L) boolean mask.

Parameter names are V-JEPA 2-AC's (``predictor_embed``, ``action_encoder``, ``state_encoder``,
``extrinsics_encoder``, ``predictor_blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}``, ``predictor_norm``, ``predictor_proj``), so the ``predictor`` entry of the released
``vjepa2-ac-vitg.pt`` loads key for key (:func:`fastlam.models.vjepa2.load_vjepa2_ac_predictor`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import save_weights_folder
from ..inputs import InputError, MissingInputError, read_json, require_folder
from ..ops import Rope3D
from .blocks import Block
from .vjepa2 import load_vjepa2_ac_predictor, vjepa2_predictor_state

__all__ = ["ACPredictor", "ACPredictorConfig", "ACLoss", "encode_frames", "infer_ac_config"]


@dataclass
class ACPredictorConfig:
    """Defaults are the released V-JEPA 2-AC (ViT-g encoder, 256 px, patch 16)."""

    embed_dim: int = 1408  # encoder width (the states' D)
    width: int = 1024  # V-JEPA 2-AC's predictor_embed_dim
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    action_dim: int = 7  # action and proprioceptive state size (extrinsics: action_dim - 1)
    grid_size: int = 16  # patch rows (= columns) of the training resolution: img_size // patch
    use_extrinsics: bool = False
    rope_duplicated_freqs: bool = True  # V-JEPA 2's RoPE quirk; True to use its weights
    frame_causal: bool = True

    @property
    def cond_tokens(self) -> int:
        return 3 if self.use_extrinsics else 2


class ACLoss(NamedTuple):
    loss: torch.Tensor
    teacher_forcing: torch.Tensor
    rollout: torch.Tensor


class ACPredictor(nn.Module):
    """V-JEPA 2-AC's predictor.

    Example:
        >>> cfg = ACPredictorConfig(embed_dim=32, width=48, depth=2, heads=4, grid_size=4)
        >>> pred = ACPredictor(cfg)
        >>> states = torch.randn(2, 3, 16, 32)  # (B, T, N = 4 x 4, D)
        >>> actions, proprio = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
        >>> pred(states, actions, proprio).shape
        torch.Size([2, 3, 16, 32])
    """

    def __init__(self, cfg: ACPredictorConfig):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width: expected a multiple of heads={cfg.heads}, got {cfg.width}")
        self.cfg = cfg
        self.predictor_embed = nn.Linear(cfg.embed_dim, cfg.width)
        self.action_encoder = nn.Linear(cfg.action_dim, cfg.width)
        self.state_encoder = nn.Linear(cfg.action_dim, cfg.width)
        # V-JEPA 2-AC always builds this layer (its checkpoints contain it) and only uses it with
        # use_extrinsics; keeping it makes strict loading work either way.
        self.extrinsics_encoder = nn.Linear(cfg.action_dim - 1, cfg.width)
        self.predictor_blocks = nn.ModuleList(
            [Block(cfg.width, cfg.heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.depth)]
        )
        self.predictor_norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.predictor_proj = nn.Linear(cfg.width, cfg.embed_dim)
        self._init_weights()

    def _init_weights(self, std: float = 0.02) -> None:
        # V-JEPA 2-AC's initialisation: truncated normal linears, zero biases, and the residual
        # output projections of block l scaled by 1 / sqrt(2 l).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std, a=-std * 2, b=std * 2)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for layer_id, blk in enumerate(self.predictor_blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))

    # ---- forward -------------------------------------------------------------------------
    def _grid(self, n: int) -> int:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"states: expected N = H * H patch tokens on a square grid, got N={n}")
        return side

    def _check(self, name: str, t: torch.Tensor | None, shape: tuple) -> None:
        if t is None or tuple(t.shape) != shape:
            got = None if t is None else tuple(t.shape)
            raise ValueError(f"{name}: expected shape {shape}, got {got}")

    def forward(self, states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor,
                extrinsics: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the next states.

        Args:
            states: (B, T, N, embed_dim) encoder states s_0..s_{T-1}.
            actions: (B, T, action_dim) action a_t taken after frame t.
            proprio: (B, T, action_dim) proprioceptive (end-effector) state at frame t.
            extrinsics: (B, T, action_dim - 1), only with ``use_extrinsics``.

        Returns:
            (B, T, N, embed_dim): output t predicts s_{t+1} from frames <= t (block-causal).
        """
        cfg = self.cfg
        if states.dim() != 4 or states.shape[-1] != cfg.embed_dim:
            raise ValueError(f"states: expected (B, T, N, {cfg.embed_dim}), got shape {tuple(states.shape)}")
        B, T, N, _ = states.shape
        self._check("actions", actions, (B, T, cfg.action_dim))
        self._check("proprio", proprio, (B, T, cfg.action_dim))
        cond = [self.action_encoder(actions), self.state_encoder(proprio)]
        if cfg.use_extrinsics:
            self._check("extrinsics", extrinsics, (B, T, cfg.action_dim - 1))
            cond.append(self.extrinsics_encoder(extrinsics))
        elif extrinsics is not None:
            raise ValueError("extrinsics: given, but the predictor was built with use_extrinsics=False")
        side = self._grid(N)
        k = len(cond)
        x = torch.cat([c.unsqueeze(2) for c in cond] + [self.predictor_embed(states)], dim=2)  # (B, T, k + N, W)
        frame_len = k + N
        rope = Rope3D(grid_w=side, num_prefix=k, duplicated_freqs=cfg.rope_duplicated_freqs,
                      spatial_scale=cfg.grid_size / side)
        mask = "frame_causal" if cfg.frame_causal else "full"
        x = x.flatten(1, 2)
        for blk in self.predictor_blocks:
            x = blk(x, frame_len=frame_len, mask=mask, rope=rope)
        x = x.view(B, T, frame_len, cfg.width)[:, :, k:]
        return self.predictor_proj(self.predictor_norm(x))

    # ---- V-JEPA 2-AC objective -----------------------------------------------------------
    def loss(self, states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor,
             extrinsics: torch.Tensor | None = None, *, rollout_steps: int = 2,
             normalize_states: bool = True) -> ACLoss:
        """Teacher-forcing L1 plus the auto-regressive rollout L1, as V-JEPA 2-AC trains.

        Args:
            states: (B, T + 1, N, D) encoder states of T + 1 frames (the targets included).
            actions: (B, T, action_dim) actions between consecutive frames.
            proprio: (B, T + 1, action_dim) proprioceptive states (the last is unused).
            extrinsics: (B, T + 1, action_dim - 1) with ``use_extrinsics``.
            rollout_steps: frames predicted from the first frame alone, feeding predictions
                back (V-JEPA 2-AC: 2); 0 disables the rollout term.
            normalize_states: layer-normalise states and predictions over D (V-JEPA 2-AC's
                ``normalize_reps``).
        """
        if states.dim() != 4 or states.shape[1] < 2:
            raise ValueError(f"states: expected (B, T + 1, N, D) with T >= 1, got shape {tuple(states.shape)}")
        T = states.shape[1] - 1
        if not 0 <= rollout_steps <= T:
            raise ValueError(f"rollout_steps: expected 0..T={T}, got {rollout_steps}")

        def norm(z):
            return F.layer_norm(z, (z.shape[-1],)) if normalize_states else z

        def step(z, n):
            ext = None if extrinsics is None else extrinsics[:, :n]
            return norm(self(z, actions[:, :n], proprio[:, :n], ext))

        states = norm(states)
        z_tf = step(states[:, :-1], T)
        tf = (z_tf - states[:, 1:]).abs().mean()
        ar = tf.new_zeros(())
        if rollout_steps:
            z = torch.cat([states[:, :1], z_tf[:, :1]], dim=1)
            for n in range(1, rollout_steps):
                z = torch.cat([z, step(z, n + 1)[:, -1:]], dim=1)
            ar = (z[:, 1:] - states[:, 1 : rollout_steps + 1]).abs().mean()
        return ACLoss(tf + ar, tf.detach(), ar.detach())

    # ---- persistence ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        return save_weights_folder(directory, self, asdict(self.cfg))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ACPredictor":
        """Inverse of :meth:`save_pretrained`."""
        what = "a folder written by ACPredictor.save_pretrained (config.json + model.safetensors)"
        directory = require_folder(directory, "directory", what)
        cfg_file = directory / "config.json"
        if not cfg_file.is_file():
            raise MissingInputError(f"directory: {directory} has no config.json; pass {what}")
        data = read_json(cfg_file, "directory", what)
        known = set(ACPredictorConfig.__dataclass_fields__)
        if unknown := sorted(set(data) - known):
            raise InputError(f"{cfg_file}: unknown ACPredictorConfig fields {unknown}; pass {what}")
        try:
            model = cls(ACPredictorConfig(**data))
        except (TypeError, ValueError) as e:  # a config.json of the right keys with values no model has
            raise InputError(f"{cfg_file}: not a usable ACPredictorConfig ({e}); pass {what}") from None
        load_vjepa2_ac_predictor(model, directory / "model.safetensors")
        return model

    @classmethod
    def from_vjepa2(cls, path: str | Path, *, heads: int = 16, grid_size: int = 16, use_extrinsics: bool = False,
                    key: str = "auto", **overrides) -> "ACPredictor":
        """Build and load a predictor from a V-JEPA 2-AC checkpoint, reading the sizes from its
        weights. The head count and the training grid cannot be read from weights: the released
        model uses 16 heads and 256 px / patch 16 = 16."""
        state, _ = vjepa2_predictor_state(path, key)
        cfg = ACPredictorConfig(heads=heads, grid_size=grid_size, use_extrinsics=use_extrinsics,
                                **{**infer_ac_config(state), **overrides})
        model = cls(cfg)
        load_vjepa2_ac_predictor(model, path, key=key)
        return model


def infer_ac_config(state: dict[str, torch.Tensor]) -> dict:
    """Sizes (embed_dim, width, depth, mlp_ratio, action_dim) implied by AC predictor weights."""
    try:
        w = state["predictor_embed.weight"]
        a = state["action_encoder.weight"]
        fc1 = state["predictor_blocks.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise ValueError(f"checkpoint: not a V-JEPA 2-AC predictor state dict (no {exc.args[0]!r})") from None
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"predictor_blocks\.(\d+)\.", k)))
    width, hidden = w.shape[0], fc1.shape[0]
    ratio = hidden / width
    if int(width * ratio) != hidden:  # e.g. 48/11 can round just below the integer
        ratio = (hidden + 0.5) / width
    return dict(embed_dim=w.shape[1], width=width, depth=depth, mlp_ratio=ratio, action_dim=a.shape[1])


@torch.no_grad()
def encode_frames(encoder: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Encode every frame on its own, as V-JEPA 2-AC builds its states.

    Each raw frame is repeated ``tubelet`` times to fill one tubelet and encoded independently,
    so there is one state per frame (not per tubelet) and no information crosses frames.

    Args:
        encoder: a :class:`~fastlam.models.VideoEncoder` (e.g. loaded with V-JEPA 2 weights).
        video: (B, C, T, H, W) in [0, 1].

    Returns:
        (B, T, N, D) states.
    """
    if video.dim() != 5:
        raise ValueError(f"video: expected (B, C, T, H, W), got shape {tuple(video.shape)}")
    B, C, T, H, W = video.shape
    tubelet = encoder.cfg.tubelet
    # One tubelet per clip, so frame_causal or not makes no difference here.
    frames = video.permute(0, 2, 1, 3, 4).reshape(B * T, C, 1, H, W).expand(-1, -1, tubelet, -1, -1)
    states = encoder(frames.contiguous())  # (B * T, 1, N, D)
    return states.view(B, T, -1, states.shape[-1])

