"""Planning in a latent world model (lam-spec.md section 5): the goal cost, the protocols and
their metrics.

Arm (DROID protocol): plan ``horizon`` = 3 actions from the start state to the goal state
(the state ``horizon`` steps later in a recorded episode) by minimising
``||s_goal - s_hat_{t+H}||_2`` over the rollout ``s_hat_{i+1} = p(s_hat_0..i, c(a_i, s_hat_i))``;
CEM with 300 samples, top 10, 15 iterations; metric
``Delta_xyz = || sum_i a_plan[i, :3] - sum_i a_gt[i, :3] ||_1`` (metres).

Navigation (RECON protocol): one iteration of 120 samples of a single straight-line action
``(dx, dy, dyaw)`` split evenly over 8 steps; metrics ATE and RPE of the planned trajectory
against the recorded one (:func:`ate_rpe`).

The planner lives in :mod:`fastlam.eval.cem`, the world models in
:mod:`fastlam.eval.planning_worlds`, the action-conditioned baseline's training in
:mod:`fastlam.eval.ac_baseline`; their public names are importable from here too.
"""
from __future__ import annotations

import torch

from .ac_baseline import ACBaselineConfig, StandardizedACPredictor, relative_poses, train_ac_baseline
from .action_data import integrate_actions
from .cem import ARM_CEM, NAV_CEM, CEMConfig, cem
from .planning_worlds import ACRollout, LatentRollout, SimulatorRollout

__all__ = [
    "ARM_CEM", "NAV_CEM", "RECORDED_SCALES", "ACBaselineConfig", "ACRollout", "CEMConfig", "LatentRollout",
    "SimulatorRollout", "StandardizedACPredictor", "ate_rpe", "cem", "cost_landscape", "delta_xyz", "goal_cost",
    "goal_cost_with_prior", "plan_alignment", "plan_arm", "plan_nav", "relative_poses", "train_ac_baseline",
]


# ---- the goal cost ------------------------------------------------------------------------
RECORDED_SCALES = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # cost_landscape: k x the recorded actions

def goal_cost(world, start: torch.Tensor, goal: torch.Tensor, proprio: torch.Tensor | None = None):
    """The L2 latent cost ``||s_goal - s_hat_{t+H}||_2`` as a function of candidates (S, H, A)."""
    target = world.cost_space(goal).flatten()

    def cost(actions: torch.Tensor) -> torch.Tensor:
        final = world.rollout(start, actions, proprio)[:, -1]
        return (final.flatten(1).float() - target).norm(dim=1)

    return cost


def goal_cost_with_prior(world, start: torch.Tensor, goal: torch.Tensor, proprio: torch.Tensor | None,
                         action_std: torch.Tensor, weight: float):
    """MAP planning: the goal cost relative to the zero plan's, plus ``weight`` times the mean of
    ``(a / action_std)^2`` over the steps and the action dimensions that move (a Gaussian prior
    N(0, action_std^2) on each action). Candidates (S, H, A) -> costs (S,); ``action_std`` (H, A).

    Why: a learned world model is blind to some directions of the action space (the cost is flat
    there) and has spurious minima elsewhere; CEM then drifts in those directions and plans moves
    far longer than any recorded one (README, arm planning: scale 0.30-0.42). The prior pulls
    what the cost cannot tell apart back to small actions. Dividing by the zero plan's cost makes
    ``weight`` mean the same for every window and world model: at 0.03, moving every action from
    0 to one standard deviation must bring the goal 3% closer than doing nothing to pay off. ``weight`` 0 is
    :func:`goal_cost` rescaled (the same minimiser: the paper's protocol)."""
    if weight < 0:
        raise ValueError(f"weight: expected >= 0, got {weight}")
    base = goal_cost(world, start, goal, proprio)
    live = action_std > 0
    if not bool(live.any()):
        raise ValueError("action_std: every action dimension has std 0; the prior has nothing to scale by")
    zero = max(float(base(action_std.new_zeros(1, *action_std.shape))), 1e-12)  # goal == zero plan's end
    safe_std = torch.where(live, action_std, torch.ones_like(action_std)).float()

    def cost(actions: torch.Tensor) -> torch.Tensor:
        z2 = (actions.float() / safe_std) ** 2
        return base(actions) / zero + weight * z2[:, live].mean(1)

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
    on both, a perfect one 1 and 0. Along the recorded direction: ``recorded_scale_profile``,
    the cost of ``k x`` the recorded actions over the zero plan's for each k of
    :data:`RECORDED_SCALES` (mean over windows), and ``recorded_scale_best``, the median over
    windows of the k that costs least (1 for a world model that responds to the actions by the
    right amount; above 1 for one that under-responds)."""
    E, A = states.shape[0], actions.shape[-1]
    pool = actions[:, :horizon].flatten(0, 1)
    owner = torch.arange(E).repeat_interleave(horizon)
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor(RECORDED_SCALES)
    below_zero, below_true, profile, best = [], [], torch.zeros(len(scales), dtype=torch.float64), []
    for e in range(E):
        w = world[e] if isinstance(world, (list, tuple)) else world
        cost = goal_cost(w, states[e, 0], states[e, horizon], None if proprio is None else proprio[e, 0])
        others = pool[owner != e] if E > 1 else pool  # a permutation of its own actions would tie
        drawn = others[torch.randint(0, others.shape[0], (samples, horizon), generator=g)]
        scaled = scales[:, None, None] * actions[e, :horizon][None].float()
        # one batch: recorded, zero, the drawn sequences, then k x recorded
        c = cost(torch.cat([actions[e, :horizon][None], actions.new_zeros(1, horizon, A), drawn,
                            scaled.to(actions.dtype)]))
        c, along = c[: samples + 2], c[samples + 2:].double()
        # ties count half: a cost blind to the actions scores 0.5 on both
        below = lambda other: (other < c[0]).float() + 0.5 * (other == c[0]).float()
        below_zero.append(1.0 - float(below(c[1:2])))
        below_true.append(float(below(c[2:]).mean()))
        profile += along / along[0].clamp_min(1e-12)
        best.append(float(scales[along.argmin()]))
    return {"true_below_zero": sum(below_zero) / E, "random_below_true": sum(below_true) / E,
            "samples": samples, "windows": E,
            "recorded_scale_profile": dict(zip(RECORDED_SCALES, (profile / E).tolist())),
            "recorded_scale_best": float(torch.tensor(best).median())}


# ---- metrics ------------------------------------------------------------------------------
def delta_xyz(plan: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``|| sum_i plan[..., i, :3] - sum_i truth[..., i, :3] ||_1`` over (..., H, A) actions."""
    return (plan[..., :3].sum(-2) - truth[..., :3].sum(-2)).abs().sum(-1)


def plan_alignment(plan: torch.Tensor, truth: torch.Tensor) -> dict:
    """How the planned displacements ``sum_i plan[e, i, :3]`` line up with the recorded ones over
    windows e (plan, truth: (E, H, A)): per-axis Pearson correlation (``None`` where either side
    does not vary) and the least-squares scale ``k`` minimising ``||k * planned - recorded||^2``.
    A world model that knows the direction but under-responds to actions plans moves that are
    too large: correlation high, scale well below 1 (README, arm planning)."""
    p, t = plan[..., :3].sum(-2).double(), truth[..., :3].sum(-2).double()
    corr = []
    for i in range(3):
        a, b = p[:, i] - p[:, i].mean(), t[:, i] - t[:, i].mean()
        den = float(a.norm() * b.norm())
        corr.append(float((a * b).sum()) / den if den > 0 else None)
    pp = float((p * p).sum())
    return {"corr_xyz": corr, "scale": float((p * t).sum()) / pp if pp > 0 else None}


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
             low: torch.Tensor | None = None, high: torch.Tensor | None = None, seed: int = 0,
             action_prior: float = 0.0) -> dict:
    """The DROID protocol on episodes: states (E, T >= horizon + 1, N, D), actions (E, T-1, A).
    Start = state 0, goal = state ``horizon``; returns Delta_xyz per episode and its mean.
    ``world`` is one world model, or a list of one per episode (:class:`SimulatorRollout`).
    CEM starts at mean 0 with, per action dimension, the std of the recorded actions unless
    ``action_std`` is given (a dimension that never moves, like the arm's roll, stays 0);
    samples are clamped to ``low`` / ``high``, by default the range of the recorded actions
    (the robot's action limits: a world model is not to be trusted far outside them).
    ``action_prior`` > 0 plans with :func:`goal_cost_with_prior` (not the paper's protocol, which
    is the default 0)."""
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
        cost = (goal_cost_with_prior(w, states[e, 0], states[e, horizon], p0, std, action_prior) if action_prior
                else goal_cost(w, states[e, 0], states[e, horizon], p0))
        out = cem(cost, torch.zeros(horizon, A), std.clone(), cfg, low=low, high=high, generator=g)
        plans.append(out["plan"])
        errs.append(delta_xyz(out["plan"], actions[e, :horizon]))
    errs, plans = torch.stack(errs), torch.stack(plans)
    return {"delta_xyz": float(errs.mean()), "delta_xyz_std": float(errs.std()) if E > 1 else 0.0,
            "per_episode": errs.tolist(), "episodes": E, "horizon": horizon,
            "alignment": plan_alignment(plans, actions[:, :horizon]),
            "cem": {"samples": cfg.samples, "top_k": cfg.top_k, "iterations": cfg.iterations},
            "action_prior": float(action_prior), "plans": plans.tolist()}


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
