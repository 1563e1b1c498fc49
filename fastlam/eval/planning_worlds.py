"""World models to plan in, each vectorised over the CEM samples: ``rollout(start, actions,
proprio)`` maps a start state (N, D) and candidates (S, H, A) to predicted states (S, H, N, D),
``cost_space`` maps states to where the goal distance is measured.

:class:`LatentRollout` (LAM predictor + controller), :class:`ACRollout` (the V-JEPA 2-AC-style
predictor trained on the true actions, :mod:`fastlam.eval.ac_baseline`) and
:class:`SimulatorRollout` (an oracle that renders the true simulator: the bound a perfect world
model would reach).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..models import ACPredictor
from .ac_baseline import StandardizedACPredictor
from .action_data import compose_pose


class LatentRollout:
    """LAM predictor driven by a controller: ``z_i = c(a_i, s_hat_i)``, then
    ``s_hat_{i+1} = p(s_hat_0..i, z_0..i)`` (frame-causal context)."""

    def __init__(self, lam, controller):
        self.lam, self.controller = lam, controller

    @torch.no_grad()
    def rollout(self, start: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        """start (N, D), actions (S, H, A) -> predicted states (S, H, N, D)."""
        S, H, _ = actions.shape
        ctx = start.expand(S, 1, *start.shape)
        zs = []
        for i in range(H):
            zs.append(self.controller(actions[:, i], ctx[:, -1]))
            nxt = self.lam.predict(ctx, torch.stack(zs, 1))[:, -1:]
            ctx = torch.cat([ctx, nxt.to(ctx.dtype)], 1)
        return ctx[:, 1:]

    def cost_space(self, states: torch.Tensor) -> torch.Tensor:
        return states


class ACRollout:
    """The action-conditioned baseline: an :class:`ACPredictor` rolled out on the true action
    space. Proprioception is advanced with the actions themselves (``update_proprio``): the
    arm's state adds the deltas, the navigation pose composes the robot-frame move."""

    def __init__(self, predictor: ACPredictor | StandardizedACPredictor, kind: str = "droid"):
        if kind not in ("droid", "recon"):
            raise ValueError(f"kind: expected 'droid' or 'recon', got {kind!r}")
        self.predictor, self.kind = predictor, kind

    def update_proprio(self, p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return compose_pose(p, a) if self.kind == "recon" else p + a

    @torch.no_grad()
    def rollout(self, start: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        if proprio is None:
            raise ValueError("proprio: the action-conditioned baseline needs the start proprioception (P,)")
        S, H, _ = actions.shape
        ctx = self.cost_space(start).expand(S, 1, *start.shape)
        props = [proprio.float().expand(S, -1)]
        for i in range(H):
            nxt = self.predictor(ctx, actions[:, : i + 1], torch.stack(props, 1))[:, -1:]
            ctx = torch.cat([ctx, self.cost_space(nxt)], 1)
            props.append(self.update_proprio(props[-1], actions[:, i]))
        return ctx[:, 1:]

    def cost_space(self, states: torch.Tensor) -> torch.Tensor:
        # V-JEPA 2-AC works on layer-normalised states (normalize_reps).
        return F.layer_norm(states.float(), (states.shape[-1],))


class SimulatorRollout:
    """An oracle world model for a simulated episode: it advances the true proprioceptive state
    by the candidate actions, renders each state with the episode's own renderer, and encodes
    the clip (first recorded frame + rendered frames) with the same frozen encoder that made
    the start and goal states. The recorded actions therefore reach the goal at cost 0, so CEM
    with this world must plan Delta_xyz near 0: it checks the planner, the latent cost, the
    clamping and the metric apart from any learned model.

    Args:
        render: state (P,) -> uint8 frame (H, W, 3), e.g. :meth:`ArmRenderer.render`.
        encode: float video (B, 3, frames, H, W) in [0, 1] -> states (B, T, N, D).
        first_frame: the episode's recorded start frame, uint8 (H, W, 3) or float (3, H, W).
        update: how an action moves the state (the arm: ``p + a``).
        tubelet: frames per encoder time step (each frame is repeated, as the data loader does).
    """

    def __init__(self, render: Callable[[torch.Tensor], torch.Tensor],
                 encode: Callable[[torch.Tensor], torch.Tensor], first_frame: torch.Tensor, *,
                 update: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 tubelet: int = 1, batch_size: int = 256):
        if first_frame.dim() != 3:
            raise ValueError(f"first_frame: expected uint8 (H, W, 3) or float (3, H, W), got {tuple(first_frame.shape)}")
        self.render, self.encode, self.tubelet, self.batch_size = render, encode, tubelet, batch_size
        self.first = self._to_float(first_frame) if first_frame.dtype == torch.uint8 else first_frame.float()
        self.update = update or (lambda p, a: p + a)

    @staticmethod
    def _to_float(frame: torch.Tensor) -> torch.Tensor:
        return frame.permute(2, 0, 1).float().div(255)

    @torch.no_grad()
    def rollout(self, start: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        if proprio is None:
            raise ValueError("proprio: the simulator oracle needs the start state (P,) to render from")
        S, H, _ = actions.shape
        p = proprio.float().expand(S, -1)
        frames = [self.first.expand(S, *self.first.shape)]
        for i in range(H):
            p = self.update(p, actions[:, i])
            frames.append(torch.stack([self._to_float(self.render(q)) for q in p]))
        video = torch.stack(frames, 2).repeat_interleave(self.tubelet, dim=2)
        states = torch.cat([self.encode(video[j:j + self.batch_size]).float()
                            for j in range(0, S, self.batch_size)])
        return states[:, 1:]

    def cost_space(self, states: torch.Tensor) -> torch.Tensor:
        return states
