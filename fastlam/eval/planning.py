"""Planning with the cross-entropy method (CEM) in a latent world model (lam-spec.md section 5).

Arm (DROID protocol): plan ``horizon`` = 3 actions from the start state to the goal state
(the state ``horizon`` steps later in a recorded episode) by minimising
``||s_goal - s_hat_{t+H}||_2`` over the rollout ``s_hat_{i+1} = p(s_hat_0..i, c(a_i, s_hat_i))``;
CEM with 300 samples, top 10, 15 iterations; metric
``Delta_xyz = || sum_i a_plan[i, :3] - sum_i a_gt[i, :3] ||_1`` (metres).

Navigation (RECON protocol): one iteration of 120 samples of a single straight-line action
``(dx, dy, dyaw)`` split evenly over 8 steps; metrics ATE and RPE of the planned trajectory
against the recorded one (:func:`ate_rpe`).

World models (all vectorised over the CEM samples): :class:`LatentRollout` (LAM predictor +
controller), :class:`ACRollout` (the V-JEPA 2-AC-style predictor trained on the true
actions, :func:`train_ac_baseline`) and :class:`SimulatorRollout` (an oracle that renders the
true simulator: the bound a perfect world model would reach).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..inputs import read_json
from ..models import ACPredictor, ACPredictorConfig
from ..loop import train_steps
from ..optim import warmup_cosine
from .action_data import compose_pose, integrate_actions


# ---- CEM ----------------------------------------------------------------------------------
@dataclass
class CEMConfig:
    samples: int = 300
    top_k: int = 10
    iterations: int = 15
    min_std: float = 1e-4  # keeps a dimension from collapsing to a point before the last iteration


ARM_CEM = CEMConfig(samples=300, top_k=10, iterations=15)
NAV_CEM = CEMConfig(samples=120, top_k=10, iterations=1)


def cem(cost_fn: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
        cfg: CEMConfig = ARM_CEM, *, low: torch.Tensor | None = None, high: torch.Tensor | None = None,
        generator: torch.Generator | None = None) -> dict:
    """Minimise ``cost_fn`` over action sequences with the cross-entropy method.

    Args:
        cost_fn: maps candidates (S, *shape) to costs (S,), all samples in one call.
        mean, std: the initial Gaussian over candidates, shape ``shape`` (e.g. (H, A)).
            A dimension with std 0 stays at its mean.
        low, high: optional bounds (broadcast to ``shape``); samples are clamped into them.

    Returns ``{"plan": the final mean, "best": the lowest-cost sample seen, "best_cost",
    "costs": mean elite cost per iteration}``.
    """
    if mean.shape != std.shape:
        raise ValueError(f"std: expected the shape of mean {tuple(mean.shape)}, got {tuple(std.shape)}")
    if not 1 <= cfg.top_k <= cfg.samples:
        raise ValueError(f"top_k: expected 1..samples={cfg.samples}, got {cfg.top_k}")
    mean, std = mean.clone().float(), std.clone().float()
    fixed = std <= 0
    best, best_cost, history = mean.clone(), math.inf, []
    for _ in range(cfg.iterations):
        eps = torch.randn((cfg.samples, *mean.shape), generator=generator)
        cand = mean + std * eps
        if low is not None:
            cand = torch.maximum(cand, torch.as_tensor(low, dtype=cand.dtype))
        if high is not None:
            cand = torch.minimum(cand, torch.as_tensor(high, dtype=cand.dtype))
        costs = cost_fn(cand).float()
        if costs.shape != (cfg.samples,):
            raise ValueError(f"cost_fn: expected costs of shape ({cfg.samples},), got {tuple(costs.shape)}")
        elite_cost, idx = costs.topk(cfg.top_k, largest=False)
        elites = cand[idx]
        if float(elite_cost[0]) < best_cost:
            best_cost, best = float(elite_cost[0]), elites[0].clone()
        mean = elites.mean(0)
        std = torch.where(fixed, torch.zeros_like(std),
                          elites.std(0, unbiased=False).clamp_min(cfg.min_std) if cfg.top_k > 1 else std)
        history.append(float(elite_cost.mean()))
    return {"plan": mean, "best": best, "best_cost": best_cost, "costs": history}


# ---- world models for planning ------------------------------------------------------------
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


def goal_cost(world, start: torch.Tensor, goal: torch.Tensor, proprio: torch.Tensor | None = None):
    """The L2 latent cost ``||s_goal - s_hat_{t+H}||_2`` as a function of candidates (S, H, A)."""
    target = world.cost_space(goal).flatten()

    def cost(actions: torch.Tensor) -> torch.Tensor:
        final = world.rollout(start, actions, proprio)[:, -1]
        return (final.flatten(1).float() - target).norm(dim=1)

    return cost


@torch.no_grad()
def cost_landscape(world, states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor | None = None, *,
                   horizon: int = 3, samples: int = 64, seed: int = 0) -> dict:
    """Does the world model's goal cost point at the recorded actions? Per window: the cost of
    the recorded actions against the zero plan's and against ``samples`` sequences of recorded
    actions drawn from other windows. CEM can only beat the zero plan where the first wins;
    a perfect world model (the oracle) scores the recorded actions 0, below everything.

    Returns ``true_below_zero`` (fraction of windows where the recorded actions cost less than
    doing nothing) and ``random_below_true`` (mean fraction of the drawn sequences that cost
    less than the recorded ones); ties count half, so a cost blind to the actions scores 0.5
    on both, a perfect one 1 and 0."""
    E, A = states.shape[0], actions.shape[-1]
    pool = actions[:, :horizon].flatten(0, 1)
    owner = torch.arange(E).repeat_interleave(horizon)
    g = torch.Generator().manual_seed(seed)
    below_zero, below_true = [], []
    for e in range(E):
        w = world[e] if isinstance(world, (list, tuple)) else world
        cost = goal_cost(w, states[e, 0], states[e, horizon], None if proprio is None else proprio[e, 0])
        others = pool[owner != e] if E > 1 else pool  # a permutation of its own actions would tie
        drawn = others[torch.randint(0, others.shape[0], (samples, horizon), generator=g)]
        c = cost(torch.cat([actions[e, :horizon][None], actions.new_zeros(1, horizon, A), drawn]))
        # ties count half: a cost blind to the actions scores 0.5 on both
        below = lambda other: (other < c[0]).float() + 0.5 * (other == c[0]).float()
        below_zero.append(1.0 - float(below(c[1:2])))
        below_true.append(float(below(c[2:]).mean()))
    return {"true_below_zero": sum(below_zero) / E, "random_below_true": sum(below_true) / E,
            "samples": samples, "windows": E}


# ---- metrics ------------------------------------------------------------------------------
def delta_xyz(plan: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``|| sum_i plan[..., i, :3] - sum_i truth[..., i, :3] ||_1`` over (..., H, A) actions."""
    return (plan[..., :3].sum(-2) - truth[..., :3].sum(-2)).abs().sum(-1)


def ate_rpe(plan_poses: torch.Tensor, true_poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute and relative trajectory errors of pose sequences (..., K + 1, 3) of (x, y, yaw)
    that start at the same pose (translation only, metres):

    ATE = mean over k >= 1 of ``||xy_plan_k - xy_true_k||_2``;
    RPE = mean over k of ``||rel_plan_k - rel_true_k||_2``, where ``rel_k`` is the move from
    pose k to pose k + 1 expressed in the frame of pose k.
    """
    if plan_poses.shape != true_poses.shape or plan_poses.shape[-1] != 3 or plan_poses.shape[-2] < 2:
        raise ValueError(f"plan_poses/true_poses: expected equal shapes (..., K + 1 >= 2, 3), got "
                         f"{tuple(plan_poses.shape)} and {tuple(true_poses.shape)}")
    ate = (plan_poses[..., 1:, :2] - true_poses[..., 1:, :2]).norm(dim=-1).mean(-1)

    def rel(p):
        d = p[..., 1:, :2] - p[..., :-1, :2]
        c, s = torch.cos(p[..., :-1, 2]), torch.sin(p[..., :-1, 2])
        return torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)

    rpe = (rel(plan_poses) - rel(true_poses)).norm(dim=-1).mean(-1)
    return ate, rpe


# ---- the protocols ------------------------------------------------------------------------
def plan_arm(world, states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor | None = None, *,
             horizon: int = 3, cfg: CEMConfig = ARM_CEM, action_std: torch.Tensor | None = None,
             low: torch.Tensor | None = None, high: torch.Tensor | None = None, seed: int = 0) -> dict:
    """The DROID protocol on episodes: states (E, T >= horizon + 1, N, D), actions (E, T-1, A).
    Start = state 0, goal = state ``horizon``; returns Delta_xyz per episode and its mean.
    ``world`` is one world model, or a list of one per episode (:class:`SimulatorRollout`).
    CEM starts at mean 0 with, per action dimension, the std of the recorded actions unless
    ``action_std`` is given (a dimension that never moves, like the arm's roll, stays 0);
    samples are clamped to ``low`` / ``high``, by default the range of the recorded actions
    (the robot's action limits: a world model is not to be trusted far outside them)."""
    E = states.shape[0]
    if states.shape[1] < horizon + 1 or actions.shape[:2] != (E, states.shape[1] - 1):
        raise ValueError(f"states/actions: expected (E, T >= {horizon + 1}, N, D) and (E, T - 1, A), got "
                         f"{tuple(states.shape)} and {tuple(actions.shape)}")
    if isinstance(world, (list, tuple)) and len(world) != E:
        raise ValueError(f"world: expected one world model or a list of one per episode ({E}), got {len(world)}")
    A = actions.shape[-1]
    flat = actions.flatten(0, 1)
    std = (flat.std(0) if action_std is None else action_std).expand(horizon, A)
    low = flat.min(0).values if low is None else low
    high = flat.max(0).values if high is None else high
    g = torch.Generator().manual_seed(seed)
    errs, plans = [], []
    for e in range(E):
        p0 = None if proprio is None else proprio[e, 0]
        w = world[e] if isinstance(world, (list, tuple)) else world
        cost = goal_cost(w, states[e, 0], states[e, horizon], p0)
        out = cem(cost, torch.zeros(horizon, A), std.clone(), cfg, low=low, high=high, generator=g)
        plans.append(out["plan"])
        errs.append(delta_xyz(out["plan"], actions[e, :horizon]))
    errs = torch.stack(errs)
    return {"delta_xyz": float(errs.mean()), "delta_xyz_std": float(errs.std()) if E > 1 else 0.0,
            "per_episode": errs.tolist(), "episodes": E, "horizon": horizon,
            "cem": {"samples": cfg.samples, "top_k": cfg.top_k, "iterations": cfg.iterations},
            "plans": torch.stack(plans).tolist()}


def plan_nav(world, states: torch.Tensor, actions: torch.Tensor, proprio: torch.Tensor | None = None, *,
             steps: int = 8, cfg: CEMConfig = NAV_CEM, seed: int = 0) -> dict:
    """The RECON protocol: a straight-line action (dx, dy, dyaw) in total, split evenly over
    ``steps`` steps, sampled ``cfg.samples`` times; states (E, T >= steps + 1, N, D), actions
    (E, T-1, 3). Proprio, when given, is made relative to each episode's start pose."""
    E = states.shape[0]
    if actions.shape[-1] != 3:
        raise ValueError(f"actions: navigation expects (dx, dy, dyaw) actions, got {actions.shape[-1]}-d")
    if states.shape[1] < steps + 1 or actions.shape[:2] != (E, states.shape[1] - 1):
        raise ValueError(f"states/actions: expected (E, T >= {steps + 1}, N, D) and (E, T - 1, 3), got "
                         f"{tuple(states.shape)} and {tuple(actions.shape)}")
    gt = actions[:, :steps]
    # The prior over total moves comes from the recorded data: the straight-line totals.
    totals = integrate_actions(torch.zeros(E, 3), gt)[:, -1]
    mean0, std0 = totals.mean(0), totals.std(0) if E > 1 else totals.abs().mean(0) + 1e-3
    g = torch.Generator().manual_seed(seed)
    ates, rpes = [], []
    for e in range(E):
        start_p = None if proprio is None else torch.zeros(3)
        base = goal_cost(world, states[e, 0], states[e, steps], start_p)
        def cost(total, base=base):
            return base((total / steps).unsqueeze(1).expand(-1, steps, -1).contiguous())

        out = cem(cost, mean0.clone(), std0.clone(), cfg, generator=g)
        plan = (out["plan"] / steps).expand(steps, 3)
        ate, rpe = ate_rpe(integrate_actions(torch.zeros(3), plan), integrate_actions(torch.zeros(3), gt[e]))
        ates.append(ate)
        rpes.append(rpe)
    ates, rpes = torch.stack(ates), torch.stack(rpes)
    return {"ate": float(ates.mean()), "rpe": float(rpes.mean()), "per_episode_ate": ates.tolist(),
            "per_episode_rpe": rpes.tolist(), "episodes": E, "steps": steps,
            "cem": {"samples": cfg.samples, "top_k": cfg.top_k, "iterations": cfg.iterations}}


# ---- the action-conditioned baseline ------------------------------------------------------
@dataclass
class ACBaselineConfig:
    width: int = 96
    depth: int = 2
    heads: int = 4
    iterations: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup: int = 100
    rollout_steps: int = 2
    seed: int = 0


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
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.iterations, warmup_steps=cfg.warmup))
    g = torch.Generator().manual_seed(cfg.seed)

    def loss_of(_):
        idx = torch.randint(0, B, (min(cfg.batch_size, B),), generator=g)
        return model.loss(states[idx], actions[idx], proprio[idx], rollout_steps=min(cfg.rollout_steps, T - 1)).loss

    losses = train_steps(model, loss_of, cfg.iterations, [opt], [sched], log_every=log_every,
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
