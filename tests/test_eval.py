"""fastlam.eval: every metric on constructed cases with a known answer, the generators, bad
input, and an end-to-end smoke run of the command line on a tiny checkpoint."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fastlam.eval import action_data as ad
from fastlam.eval import cli
from fastlam.eval.capacity import capacity, capacity_sweep
from fastlam.eval.common import load_lam, one_step_errors
from fastlam.eval.controller import (
    ControllerConfig,
    ControllerTrainConfig,
    build_controller,
    controller_error,
    load_controller,
    save_controller,
    train_controller,
)
from fastlam.eval.leakage import future_leakage, splice
from fastlam.eval.planning import (
    ARM_CEM,
    ACBaselineConfig,
    CEMConfig,
    SimulatorRollout,
    StandardizedACPredictor,
    ate_rpe,
    cem,
    cost_landscape,
    delta_xyz,
    goal_cost,
    goal_cost_with_prior,
    plan_arm,
    train_ac_baseline,
)
from fastlam.eval.sampling import langevin_sparse, sample_latents, sparse_energy
from fastlam.eval.transfer import cycle_errors
from fastlam.models import (
    EncoderConfig,
    LatentActionWorldModel,
    ModelConfig,
    RegularizerConfig,
    TransformerConfig,
)


def tiny_lam(kind="noisy", frames=8, tubelet=2, size=32, **reg) -> LatentActionWorldModel:
    cfg = ModelConfig(
        encoder=EncoderConfig(size="tiny", patch_size=8, tubelet=tubelet, width=32, depth=1, heads=2),
        idm=TransformerConfig(width=32, depth=1, heads=2), predictor=TransformerConfig(width=32, depth=1, heads=2),
        regularizer=RegularizerConfig(kind=kind, **reg), action_dim=16, image_size=size, frames=frames)
    return LatentActionWorldModel(cfg).eval()


class PatchStates(nn.Module):
    """States = 8x8 average-pooled patches of the frame (one tubelet = one frame)."""

    cfg = type("cfg", (), {"encoder": type("enc", (), {"tubelet": 1})()})()

    def encode(self, video):
        B, C, F = video.shape[:3]
        x = nn.functional.avg_pool2d(video.permute(0, 2, 1, 3, 4).flatten(0, 1), 8)  # (BF, C, h, w)
        return x.flatten(2).transpose(1, 2).reshape(B, F, -1, C)


class CopyFuture(PatchStates):
    """z is the next state itself, kept to 0.05 precision: its error cannot see a scene cut."""

    def infer_actions(self, video=None, *, states):
        return states[:, 1:].flatten(2)

    def predict(self, states, actions):
        return (actions.view(*states.shape) / 0.05).round() * 0.05


class ActionOnly(PatchStates):
    """z is the mean change of the frame: a global action, no picture of the future."""

    def infer_actions(self, video=None, *, states):
        return (states[:, 1:] - states[:, :-1]).mean(dim=(2, 3), keepdim=False).unsqueeze(-1)

    def predict(self, states, actions):
        return states + actions[..., None]


# ---- leakage / capacity / transfer --------------------------------------------------------
def _scenes(n=6, frames=8):
    from fastlam.data import make_sprite_clips

    video, _ = make_sprite_clips(n, steps=frames, tubelet=1, size=32, seed=3)
    return video


def test_splice_takes_a_before_and_b_after_the_cut():
    a, b = torch.zeros(2, 3, 8, 16, 16), torch.ones(2, 3, 8, 16, 16)
    s = splice(a, b, cut_step=2, tubelet=2)
    assert (s[:, :, :4] == 0).all() and (s[:, :, 4:] == 1).all()
    with pytest.raises(ValueError, match="cut_step"):
        splice(a, b, cut_step=4, tubelet=2)
    with pytest.raises(ValueError, match="video_b"):
        splice(a, b[:, :, :6], cut_step=1, tubelet=2)


def test_leakage_ratio_near_one_for_a_copying_model_and_large_for_an_action_model():
    video = _scenes()
    b = video.roll(1, dims=0)
    copy = future_leakage(CopyFuture(), video, b, cut_step=4)["latent_l1"]
    act = future_leakage(ActionOnly(), video, b, cut_step=4)["latent_l1"]
    assert 0.8 < copy["ratio"] < 1.25, copy
    assert act["ratio"] > 2.0, act
    assert act["cut"]["mean"] > act["no_cut"]["mean"]


def test_capacity_of_the_references_brackets_the_error():
    video = _scenes()
    states = PatchStates().encode(video)
    exact = one_step_errors(ActionOnly(), states)
    copy = one_step_errors(CopyFuture(), states)
    assert copy.max() <= 0.025 + 1e-6  # rounding to 0.05 is at most half a step off
    assert exact.mean() > copy.mean()
    lam = tiny_lam("deterministic")
    row = capacity(lam, torch.rand(2, 3, 8, 32, 32))
    assert row["regularizer"] == "deterministic" and not row["has_latents"] and row["one_step_error"]["n"] == 6


def test_cycle_is_exact_for_additive_actions():
    class Additive:
        idm = True

        def infer_actions(self, video=None, *, states):
            return (states[:, 1:] - states[:, :-1]).mean(dim=2)

        def predict(self, states, actions):
            return states + actions[:, :, None, :]

    g = torch.Generator().manual_seed(0)
    a0 = torch.randn(4, 1, 5, 3, generator=g)
    acts = torch.randn(4, 3, 1, 3, generator=g)
    noise = 0.1 * torch.randn(4, 3, 5, 3, generator=g)
    steps = [a0]
    for t in range(3):
        steps.append(steps[-1] + acts[:, t:t + 1] + noise[:, t:t + 1])
    states_a = torch.cat(steps, 1)
    states_b = torch.randn(4, 4, 5, 3, generator=g)
    own, cyc = cycle_errors(Additive(), states_a, states_b)
    assert own.mean() > 0.01
    torch.testing.assert_close(cyc, own, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="states_b"):
        cycle_errors(Additive(), states_a, states_b[:, :3])


# ---- planning -----------------------------------------------------------------------------
def test_cem_finds_the_minimum_of_a_quadratic():
    target = torch.tensor([[0.3, -0.2], [0.1, 0.5], [-0.4, 0.0]])
    calls = []

    def cost(x):
        calls.append(x.shape)
        return (x - target).pow(2).sum(dim=(1, 2))

    out = cem(cost, torch.zeros(3, 2), torch.ones(3, 2), ARM_CEM, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 15 and calls[0] == (300, 3, 2)  # the paper's settings, all samples per call
    torch.testing.assert_close(out["plan"], target, atol=2e-2, rtol=0)
    assert out["costs"][-1] < out["costs"][0]
    # Fixed dimensions (std 0) never move, bounds are respected.
    std = torch.ones(3, 2)
    std[:, 1] = 0
    out = cem(cost, torch.zeros(3, 2), std, CEMConfig(64, 8, 6), high=torch.tensor(0.2))
    assert (out["plan"][:, 1] == 0).all() and (out["plan"] <= 0.2).all()


def test_delta_xyz_and_ate_rpe_on_known_trajectories():
    plan = torch.tensor([[0.1, 0.0, 0.0, 9, 9, 9, 1], [0.1, 0.2, 0.0, 0, 0, 0, 0], [0.0, 0.0, -0.1, 0, 0, 0, 0]])
    gt = torch.zeros(3, 7)
    gt[:, 0] = 0.1
    assert math.isclose(float(delta_xyz(plan, gt)), 0.1 + 0.2 + 0.1, abs_tol=1e-6)
    true = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]])
    planned = torch.tensor([[0.0, 0, 0], [1, 1, 0], [2, 2, 0]])
    ate, rpe = ate_rpe(planned, true)
    assert math.isclose(float(ate), 1.5, abs_tol=1e-6) and math.isclose(float(rpe), 1.0, abs_tol=1e-6)
    ate, rpe = ate_rpe(true, true)
    assert float(ate) == 0 and float(rpe) == 0
    # Relative errors are measured in the robot's frame: the same moves after a turn agree.
    turned = ad.integrate_actions(torch.tensor([0.0, 0, math.pi / 2]), torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    straight = ad.integrate_actions(torch.tensor([0.0, 0, math.pi / 2]), torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    assert float(ate_rpe(turned, straight)[1]) < 1e-6
    torch.testing.assert_close(turned[-1, :2], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)


def test_plan_arm_recovers_actions_in_a_known_linear_world():
    """World: state = position (3) broadcast into tokens; the 'controller' is exact. CEM with
    the paper's settings must bring Delta_xyz to ~0."""

    class Linear:
        def rollout(self, start, actions, proprio=None):
            pos = start[0, :3] + actions[..., :3].cumsum(1)  # (S, H, 3)
            return pos[:, :, None, :].expand(-1, -1, 2, -1)

        def cost_space(self, s):
            return s

    g = torch.Generator().manual_seed(0)
    acts = torch.zeros(2, 3, 7)
    acts[..., :3] = 0.05 * torch.randn(2, 3, 3, generator=g)
    pos = torch.cat([torch.zeros(2, 1, 3), acts[..., :3].cumsum(1)], 1)
    states = pos[:, :, None, :].expand(-1, -1, 2, -1)
    cost = goal_cost(Linear(), states[0, 0], states[0, 3])
    assert float(cost(acts[:1])) < 1e-6
    res = plan_arm(Linear(), states, acts, horizon=3, cfg=CEMConfig(100, 10, 8))
    assert res["delta_xyz"] < 0.01, res["per_episode"]
    zero = float(delta_xyz(torch.zeros(2, 3, 7), acts).mean())
    assert zero > 5 * res["delta_xyz"]
    # The exact world's cost points at the recorded actions; a world blind to them cannot tell.
    land = cost_landscape(Linear(), states, acts, horizon=3, samples=16)
    assert land["true_below_zero"] == 1.0 and land["random_below_true"] == 0.0 and land["windows"] == 2
    # along the recorded direction: exact at 1x (cost 0), |1 - k| of the zero plan's elsewhere
    assert land["recorded_scale_best"] == 1.0
    assert land["recorded_scale_profile"][1.0] == pytest.approx(0.0, abs=1e-6)
    assert land["recorded_scale_profile"][3.0] == pytest.approx(2.0, rel=1e-5)

    class HalfAsFar(Linear):  # under-responds: the plan must ask for twice the move
        def rollout(self, start, actions, proprio=None):
            return super().rollout(start, 0.5 * actions)

    assert cost_landscape(HalfAsFar(), states, acts, horizon=3, samples=4)["recorded_scale_best"] == 2.0

    class Blind(Linear):
        def rollout(self, start, actions, proprio=None):
            return super().rollout(start, torch.zeros_like(actions))

    land = cost_landscape(Blind(), states, acts, horizon=3, samples=16)
    assert land["true_below_zero"] == 0.5 and land["random_below_true"] == 0.5


class _SeesOnlyX:
    """A world model blind to every action dimension but x: state = x position in every token."""

    def rollout(self, start, actions, proprio=None):
        x = start[0, 0] + actions[..., 0].cumsum(1)  # (S, H)
        return x[:, :, None, None].expand(-1, -1, 2, 3)

    def cost_space(self, s):
        return s


def test_goal_cost_with_prior_by_hand():
    world = _SeesOnlyX()
    start, goal = torch.zeros(2, 3), torch.full((2, 3), 0.3)
    std = torch.tensor([0.1, 0.2, 0.0, 0.5]).expand(3, 4)  # dim 2 never moves: not in the prior
    a = torch.zeros(2, 3, 4)
    a[0, :, 0] = 0.1                           # reaches the goal exactly
    a[1, 0] = torch.tensor([0.05, 0.4, 7.0, -0.5])
    cost = goal_cost_with_prior(world, start, goal, None, std, 0.03)(a)
    zero = math.sqrt(6 * 0.3 ** 2)             # ||goal - start|| over 2 tokens x 3 channels
    z2_0 = 3 * (0.1 / 0.1) ** 2 / 9            # three steps of x at 1 sd, over 3 steps x 3 live dims
    z2_1 = ((0.05 / 0.1) ** 2 + (0.4 / 0.2) ** 2 + (0.5 / 0.5) ** 2) / 9
    assert float(cost[0]) == pytest.approx(0.0 + 0.03 * z2_0, rel=1e-5)
    assert float(cost[1]) == pytest.approx(math.sqrt(6 * 0.25 ** 2) / zero + 0.03 * z2_1, rel=1e-5)
    # weight 0 is the paper's cost divided by the zero plan's: the same minimiser
    plain = goal_cost(world, start, goal)(a)
    assert torch.allclose(goal_cost_with_prior(world, start, goal, None, std, 0.0)(a), plain / zero)
    with pytest.raises(ValueError, match="weight"):
        goal_cost_with_prior(world, start, goal, None, std, -1.0)


def test_action_prior_keeps_plans_short_where_the_world_model_is_blind():
    """CEM in a world that sees only x: without a prior the plan wanders along y and z, whose
    cost is flat; with the prior y and z stay near 0, and x is still reached."""
    g = torch.Generator().manual_seed(1)
    E = 6
    acts = torch.zeros(E, 3, 7)
    acts[..., :3] = 0.04 * torch.randn(E, 3, 3, generator=g)
    acts[..., 6] = torch.randn(E, 3, generator=g).sign()  # a gripper that moves, like the arm's
    x = torch.cat([torch.zeros(E, 1), acts[..., 0].cumsum(1)], 1)
    states = x[:, :, None, None].expand(-1, -1, 2, 3)
    cfg = CEMConfig(150, 10, 10)
    paper = plan_arm(_SeesOnlyX(), states, acts, horizon=3, cfg=cfg, seed=0)
    # a weight this large because the toy's cost is sharp along x (it reaches 0 there), unlike a
    # learned world model's (README: 0.03 chosen on held-out windows of the simulated arm)
    prior = plan_arm(_SeesOnlyX(), states, acts, horizon=3, cfg=cfg, seed=0, action_prior=1.0)
    assert paper["action_prior"] == 0.0 and prior["action_prior"] == 1.0
    wander = lambda r: torch.tensor(r["plans"])[..., 1:3].sum(1).abs().mean()
    assert float(wander(prior)) < 0.25 * float(wander(paper)), (wander(prior), wander(paper))
    x_err = lambda r: (torch.tensor(r["plans"])[..., 0].sum(1) - acts[..., 0].sum(1)).abs().mean()
    assert float(x_err(prior)) < 0.02, x_err(prior)
    assert prior["delta_xyz"] < paper["delta_xyz"]


@pytest.mark.slow
def test_simulator_oracle_plans_the_arm_near_perfectly(tmp_path):
    """The true simulator re-rendered from the start state and encoded by a frozen random
    encoder: the recorded actions cost exactly 0, and CEM with the paper's protocol must bring
    Delta_xyz close to 0 (checks the planner, cost, clamping and metric without a learned model)."""
    root = ad.generate_arm(tmp_path / "arm", episodes=2, steps=4, size=32, seed=3, mp4_fps=None)
    torch.manual_seed(0)
    enc = tiny_lam("noisy", frames=4, tubelet=1).encoder
    eps = [ad.load_episode(p) for p in ad.list_episodes(root)]
    video = torch.stack([e["frames"] for e in eps]).permute(0, 4, 1, 2, 3).float().div(255)
    with torch.no_grad():
        states = enc(video)
    acts, prop = torch.stack([e["actions"] for e in eps]), torch.stack([e["proprio"] for e in eps])
    worlds = [SimulatorRollout(ad.arm_renderer(root, e["path"]).render, enc, e["frames"][0]) for e in eps]
    # The rebuilt scene is the recorded one, frame for frame.
    assert torch.equal(worlds[1].render(prop[1, 2]), eps[1]["frames"][2])
    # The recorded actions reach the goal: cost 0 up to the encoder's last bits (the episode batch
    # and the candidate batch are encoded in different batch sizes, so float sums may differ).
    assert float(goal_cost(worlds[0], states[0, 0], states[0, 3], prop[0, 0])(acts[:1])) < 1e-4
    res = plan_arm(worlds, states, acts, prop, horizon=3, cfg=CEMConfig(150, 10, 8))
    zero = delta_xyz(torch.zeros_like(acts), acts)
    assert res["delta_xyz"] < 0.25 * float(zero.mean()) and res["delta_xyz"] < 0.03, (res["per_episode"], zero)
    with pytest.raises(ValueError, match="one per episode"):
        plan_arm(worlds[:1], states, acts, prop, horizon=3, cfg=CEMConfig(4, 2, 1))
    with pytest.raises(ValueError, match="generate arm"):
        ad.arm_renderer(tmp_path, eps[0]["path"])


def test_ac_baseline_does_not_depend_on_the_units_of_actions_and_proprio(tmp_path):
    """Regression: the baseline embedded raw actions, so centimetre arm deltas next to a +-1
    gripper barely reached it (simulated arm, 500 iterations: Delta_xyz 0.28 m raw vs 0.17 m
    standardised). With standardised inputs, training on the same data in other units
    (millimetres, with an offset) gives the same model; the statistics survive saving, and a
    baseline saved without them loads with the identity (as it was trained)."""
    g = torch.Generator().manual_seed(0)
    B, T, N, D = 8, 3, 4, 8
    states = torch.randn(B, T, N, D, generator=g)
    a = torch.zeros(B, T - 1, 7)
    a[..., :3] = (torch.rand(B, T - 1, 3, generator=g) * 2 - 1) * 0.05
    a[..., 6] = (torch.rand(B, T - 1, generator=g) < 0.3).float()
    p = torch.rand(B, T, 7, generator=g)
    cfg = ACBaselineConfig(width=16, depth=1, heads=2, iterations=4, batch_size=4, warmup=1)
    m, _ = train_ac_baseline(states, a, p, cfg)
    mm, _ = train_ac_baseline(states, a * 1000, p * 1000 + 3, cfg)
    out = m(states, torch.cat([a, a[:, :1]], 1), p)
    torch.testing.assert_close(mm(states, torch.cat([a, a[:, :1]], 1) * 1000, p * 1000 + 3), out, atol=1e-4, rtol=1e-4)
    assert m.action_scale[3] == 1 and torch.isfinite(m.action_scale).all()
    loaded = StandardizedACPredictor.from_pretrained(m.save_pretrained(tmp_path / "ac"))
    torch.testing.assert_close(loaded(states, torch.cat([a, a[:, :1]], 1), p), out)
    (tmp_path / "ac" / StandardizedACPredictor.STATS_FILE).unlink()
    legacy = StandardizedACPredictor.from_pretrained(tmp_path / "ac")
    torch.testing.assert_close(legacy(states, torch.cat([a, a[:, :1]], 1), p),
                               m.predictor(states, torch.cat([a, a[:, :1]], 1), p))
    with pytest.raises(ValueError, match="action_scale"):
        StandardizedACPredictor(m.predictor, action_scale=torch.ones(3))


# ---- controller ---------------------------------------------------------------------------
@pytest.mark.slow
def test_controller_beats_actions_only_on_camera_relative_latents():
    """Camera-relative latents: z = sign * a, where the sign (the camera facing forward or
    backward) is only in the state's tokens. The best an actions-only model can do is
    predict 0 (error E|a|^2 = 2/3); the state-aware controller learns the product."""
    g = torch.Generator().manual_seed(0)
    M, N, D = 768, 2, 4
    sign = (torch.rand(M, generator=g) < 0.5).float() * 2 - 1
    states = 0.1 * torch.randn(M, N, D, generator=g)
    states[:, :, 0] += sign[:, None]
    a = torch.rand(M, 2, generator=g) * 2 - 1
    z = torch.cat([a * sign[:, None], torch.zeros(M, 2)], 1)
    tr, va = slice(0, 640), slice(640, M)
    tcfg = ControllerTrainConfig(iterations=200, warmup=20, batch_size=256, lr=3e-3, weight_decay=0.0)
    errs = {}
    for kind in ("state", "mlp"):
        torch.manual_seed(0)
        ctrl = build_controller(ControllerConfig(kind=kind, state_dim=D, action_dim=2, latent_dim=4, width=32,
                                                 heads=2, mlp_hidden=32))
        train_controller(ctrl, states[tr], a[tr], z[tr], tcfg)
        errs[kind] = controller_error(ctrl, states[va], a[va], z[va])
    assert errs["mlp"] > 0.5, errs  # no better than predicting 0
    assert errs["state"] < 0.4 * errs["mlp"], errs
    with pytest.raises(ValueError, match="actions"):
        ctrl(torch.zeros(3, 5), states[:3])


@pytest.mark.slow
def test_controller_standardises_centimetre_scale_actions(tmp_path):
    """Regression: with raw arm actions (deltas of a few centimetres next to a +-1 gripper) the
    controller learned the latent from the state alone (held-out FVU ~1.0 here); standardising
    the actions with training statistics lets it follow them (FVU ~0.02). The statistics are
    saved with the weights; a controller saved without them loads as the raw-action one."""
    g = torch.Generator().manual_seed(0)
    M = 768
    a = torch.zeros(M, 7)  # roll and pitch never move: their scale must stay finite
    a[:, :3] = (torch.rand(M, 3, generator=g) * 2 - 1) * 0.05
    a[:, 5] = (torch.rand(M, generator=g) * 2 - 1) * 0.25
    a[:, 6] = (torch.rand(M, generator=g) < 0.1).float() * torch.sign(torch.randn(M, generator=g))
    states = torch.randn(M, 4, 8, generator=g)
    z = (a[:, :3] / 0.05) @ torch.randn(3, 8, generator=g) + 0.3 * states.mean(1)
    torch.manual_seed(0)
    ctrl = build_controller(ControllerConfig(state_dim=8, action_dim=7, latent_dim=8, width=32, heads=2,
                                             self_blocks=1, mlp_hidden=32))
    train_controller(ctrl, states[:512], a[:512], z[:512],
                     ControllerTrainConfig(iterations=150, warmup=10, batch_size=64, lr=3e-3))
    fvu = controller_error(ctrl, states[512:], a[512:], z[512:]) / float(z[512:].var(0, unbiased=False).sum())
    assert fvu < 0.2, fvu
    assert torch.isfinite(ctrl.action_scale).all() and ctrl.action_scale[3] == 1
    loaded = load_controller(save_controller(ctrl, tmp_path / "c"))
    torch.testing.assert_close(loaded(a[:5], states[:5]), ctrl(a[:5], states[:5]))
    from safetensors.torch import load_file, save_file

    raw = {k: v for k, v in load_file(str(tmp_path / "c" / "model.safetensors")).items() if k not in ("action_mean", "action_scale")}
    save_file(raw, str(tmp_path / "c" / "model.safetensors"))
    legacy = load_controller(tmp_path / "c")
    assert torch.equal(legacy.action_mean, torch.zeros(7)) and torch.equal(legacy.action_scale, torch.ones(7))
    raw["extra"] = torch.zeros(1)
    save_file(raw, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        load_controller(tmp_path / "c")


def test_controller_architecture_matches_the_paper():
    ctrl = build_controller(ControllerConfig(state_dim=16, action_dim=7))
    assert len(ctrl.self_blocks) == 2 and ctrl.head.out_features == 128
    assert sum(isinstance(m, nn.Linear) for m in ctrl.action_mlp) == 3
    assert ctrl(torch.randn(5, 7), torch.randn(5, 9, 16)).shape == (5, 128)


# ---- sampling -----------------------------------------------------------------------------
def test_langevin_samples_follow_the_sparse_energy():
    g = torch.Generator().manual_seed(0)
    init = 3 * torch.randn(256, 16, generator=g)
    strong = langevin_sparse(256, 16, l_l1=2.0, step=1e-2, iterations=300, init=init, generator=g)
    weak = langevin_sparse(256, 16, l_l1=0.05, step=1e-2, iterations=300, init=init, generator=g)
    assert sparse_energy(strong, 2.0).mean() < sparse_energy(init, 2.0).mean()
    assert strong.abs().mean() < weak.abs().mean()
    # The hinge keeps ||z||^2 from collapsing below sqrt(D) when l1 is weak.
    assert weak.pow(2).sum(1).mean() > 0.8 * 16 ** 0.5


def test_sample_latents_per_regularizer():
    g = torch.Generator().manual_seed(0)
    assert sample_latents(tiny_lam("noisy"), 7, generator=g).shape == (7, 16)
    vq = tiny_lam("discrete", num_codes=8)
    z = sample_latents(vq, 9, generator=g)
    assert bool((z[:, None] == vq.regularizer.codebook[None]).all(-1).any(-1).all())
    assert sample_latents(tiny_lam("sparse"), 5, generator=g, langevin_iterations=10).shape == (5, 16)
    with pytest.raises(ValueError, match="deterministic"):
        sample_latents(tiny_lam("deterministic"), 3)


# ---- action-labelled data -----------------------------------------------------------------
def _centroid(img, mask_fn):
    m = mask_fn(img.float())
    assert m.any(), "object not visible"
    ys, xs = m.nonzero(as_tuple=True)
    return xs.float().mean(), ys.float().mean()


def test_arm_generator_moves_the_end_effector_in_the_commanded_direction():
    r = ad.ArmRenderer(64, seed=0)
    yellow = lambda im: (im[..., 0] > 200) & (im[..., 1] > 180) & (im[..., 2] < 80)
    s = torch.tensor([0.0, 0.0, 0.2, 0, 0, 0, 0.0])
    x0, y0 = _centroid(r.render(s), yellow)
    x1, _ = _centroid(r.render(s + torch.tensor([0.1, 0, 0, 0, 0, 0, 0])), yellow)
    _, y2 = _centroid(r.render(s + torch.tensor([0, 0, 0.1, 0, 0, 0, 0])), yellow)
    assert x1 > x0 + 2 and y2 < y0 - 2  # +x goes right, +z goes up in the image
    closed = r.render(s + torch.tensor([0, 0, 0, 0, 0, 0, 1.0]))
    assert not yellow(closed.float()).any()


def test_nav_generator_turning_and_moving_change_the_view_as_commanded():
    r = ad.NavRenderer(64, seed=0, pillars=0)
    pose = torch.tensor([0.0, 0.0, 0.3])
    base = r.render(pose).float()
    left = r.render(ad.compose_pose(pose, torch.tensor([0.0, 0.0, 0.1]))).float()
    row = base.shape[0] // 2 - 4  # above the horizon: walls only

    def best_shift(a, b):
        errs = {k: (a[row, max(0, -k):64 - max(0, k)] - b[row, max(0, k):64 - max(0, -k)]).abs().mean()
                for k in range(-8, 9)}
        return min(errs, key=errs.get)

    assert best_shift(base, left) > 0  # turning left moves the scene to the right
    wall = lambda im: (im[:, 32] != im[0, 32]).all(-1).sum()  # rows not sky in the centre column
    fwd = r.render(ad.compose_pose(pose, torch.tensor([1.5, 0.0, 0.0]))).float()
    assert wall(fwd) > wall(base)  # moving forward brings the wall closer: it grows


def test_generated_episodes_round_trip_with_consistent_actions(tmp_path):
    ad.generate_arm(tmp_path / "arm", episodes=2, steps=6, size=32, mp4_fps=None)
    ad.generate_nav(tmp_path / "nav", episodes=2, steps=6, size=32, mp4_fps=None)
    arm = ad.TrajectoryDataset(tmp_path / "arm", steps=4, tubelet=2, stride=2)
    item = arm[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["actions"].shape == (3, 7) and arm.kind == "droid"
    assert torch.equal(item["video"][:, 0], item["video"][:, 1])  # each step's frame fills one tubelet
    ep = ad.load_episode(tmp_path / "arm" / "episode_00000")
    torch.testing.assert_close(ep["proprio"][1:] - ep["proprio"][:-1], ep["actions"], atol=1e-5, rtol=0)
    ep = ad.load_episode(tmp_path / "nav" / "episode_00001")
    torch.testing.assert_close(ad.integrate_actions(ep["proprio"][0], ep["actions"]), ep["proprio"], atol=1e-4, rtol=0)
    assert ad.TrajectoryDataset(tmp_path / "nav", steps=6).action_dim == 3


def test_pybullet_arm_generator_when_installed(tmp_path):
    pytest.importorskip("pybullet")
    from fastlam.eval.pybullet_arm import generate_pybullet_arm

    generate_pybullet_arm(tmp_path, episodes=1, steps=4, size=32, mp4_fps=None)
    ep = ad.load_episode(tmp_path / "episode_00000")
    assert ep["frames"].shape == (4, 32, 32, 3) and ep["actions"].shape == (3, 7)
    torch.testing.assert_close(ep["proprio"][1:] - ep["proprio"][:-1], ep["actions"], atol=1e-5, rtol=0)
    assert ep["actions"][:, :3].abs().max() <= 0.05 + 1e-4 and ep["actions"][:, 5].abs().max() < 0.5
    assert (ep["frames"][1:].float() - ep["frames"][:-1].float()).abs().mean(dim=(1, 2, 3)).min() > 0


def test_trajectory_loader_bad_input(tmp_path):
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    ad.write_episode(tmp_path / "noact" / "e0", frames, None)
    with pytest.raises(ValueError, match="action-labelled"):
        ad.TrajectoryDataset(tmp_path / "noact", steps=3)
    ad.write_episode(tmp_path / "wrong" / "e0", frames, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="7-d actions"):
        ad.TrajectoryDataset(tmp_path / "wrong", steps=3, kind="droid")
    ad.write_episode(tmp_path / "short" / "e0", frames, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="T - 1 = 4"):
        ad.TrajectoryDataset(tmp_path / "short", steps=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no episodes"):
        ad.TrajectoryDataset(tmp_path / "empty", steps=3)


def test_load_lam_refuses_another_regularizer(tmp_path):
    tiny_lam("sparse").save_pretrained(tmp_path / "m")
    assert load_lam(tmp_path / "m", "sparse").cfg.regularizer.kind == "sparse"
    with pytest.raises(ValueError, match="trained with regularizer 'sparse'.*asks for 'noisy'"):
        load_lam(tmp_path / "m", "noisy")


# ---- the sweep and the command line -------------------------------------------------------
@pytest.mark.slow
def test_capacity_sweep_trains_each_strength_and_draws_the_curve(tmp_path):
    from fastlam.train import TrainConfig

    cfg = TrainConfig(model=tiny_lam().cfg, steps=2, batch_size=2, log_every=1, ckpt_every=10, progress=False)
    cfg.data.source, cfg.data.synthetic_clips = "synthetic", 4
    from fastlam.data import make_sprite_clips

    video, _ = make_sprite_clips(2, steps=4, tubelet=2, size=32, seed=5)
    res = capacity_sweep(cfg, "sparse", [0.1], tmp_path, video, references=("deterministic",))
    assert [p["l_l1"] for p in res["points"]] == [0.1] and set(res["references"]) == {"deterministic"}
    assert res["points"][0]["regularizer"] == "sparse" and res["references"]["deterministic"]["regularizer"] == "deterministic"
    # One seed for every run: the same frozen encoder, so the errors are comparable.
    assert res["points"][0]["state_space"] == res["references"]["deterministic"]["state_space"]
    assert (tmp_path / "capacity_curve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "capacity_sweep.json").read_text())["kind"] == "sparse"


@pytest.mark.slow
def test_cli_end_to_end_planning_and_report(tmp_path, capsys):
    lam = tiny_lam("noisy", frames=4, tubelet=1)
    lam.save_pretrained(tmp_path / "lam")
    ck, data, out = str(tmp_path / "lam"), str(tmp_path / "arm"), tmp_path / "res"
    run = lambda *a: cli.main([str(x) for x in a])
    run("generate", "arm", "--out", data, "--episodes", 3, "--steps", 8, "--size", 32, "--no-mp4")
    run("controller", "--checkpoint", ck, "--data", data, "--out", out / "ctrl", "--iterations", 10,
        "--warmup", 2, "--batch-size", 16, "--width", 16, "--heads", 2)
    run("ac-baseline", "--checkpoint", ck, "--data", data, "--out", out / "ac", "--iterations", 3,
        "--width", 16, "--depth", 1, "--heads", 2, "--batch-size", 4)
    run("plan", "arm", "--checkpoint", ck, "--data", data, "--out", out / "plan", "--controller",
        out / "ctrl" / "controller", "--ac-baseline", out / "ac" / "ac_baseline", "--episodes", 2,
        "--samples", 12, "--top-k", 3, "--iterations", 2, "--oracle")
    for task in ("capacity", "leakage", "transfer", "sample"):
        extra = ("--langevin-iterations", 5, "--samples", 20) if task == "sample" else ()
        run(task, "--checkpoint", ck, "--data", "synthetic", "--clips", 3, "--out", out / task, *extra)
    run("report", "--results", out)
    plan = json.loads((out / "plan" / "plan_arm.json").read_text())
    for key in ("lam_controller", "ac_baseline", "oracle"):
        assert plan[key]["episodes"] == 2 and math.isfinite(plan[key]["delta_xyz"])
        assert plan[key]["cem"] == {"samples": 12, "top_k": 3, "iterations": 2}
        land = plan[key]["cost_landscape"]
        assert land["windows"] == 2 and 0 <= land["true_below_zero"] <= 1 and 0 <= land["random_below_true"] <= 1
    # the oracle re-renders the recorded actions exactly: they beat doing nothing in every window
    assert plan["oracle"]["cost_landscape"]["true_below_zero"] == 1.0
    report = (out / "report.md").read_text()
    assert "LAM + controller" in report and "action-conditioned baseline" in report and "Delta_xyz" in report
    assert "oracle: the simulator re-rendered" in report and "cost < zero plan's" in report
    for heading in ("Capacity", "Future leakage", "Cycle consistency", "Controller", "Sampled latent actions"):
        assert heading in report
    assert (out / "ctrl" / "controller_loss.png").is_file() and (out / "sample" / "latent_embedding.png").is_file()
    # Bad input: wrong regularizer, a deterministic model for the controller, mismatched actions.
    with pytest.raises(SystemExit):
        run("leakage", "--checkpoint", ck, "--data", "synthetic", "--out", out / "x", "--expect-regularizer", "sparse")
    assert "trained with regularizer 'noisy'" in capsys.readouterr().err
    ad.generate_nav(tmp_path / "nav", episodes=2, steps=9, size=32, mp4_fps=None)
    with pytest.raises(SystemExit):
        run("plan", "arm", "--checkpoint", ck, "--data", tmp_path / "nav", "--out", out / "x", "--controller",
            out / "ctrl" / "controller")
    assert "trained for 7-d actions, the data has 3-d" in capsys.readouterr().err
    # The action prior (not the paper's protocol) is recorded with the plan, and is for the arm only.
    run("plan", "arm", "--checkpoint", ck, "--data", data, "--out", out / "plan_prior", "--controller",
        out / "ctrl" / "controller", "--episodes", 1, "--samples", 12, "--top-k", 3, "--iterations", 2,
        "--action-prior", 0.03)
    assert json.loads((out / "plan_prior" / "plan_arm.json").read_text())["lam_controller"]["action_prior"] == 0.03
    with pytest.raises(SystemExit):
        run("plan", "nav", "--checkpoint", ck, "--data", tmp_path / "nav", "--out", out / "x", "--controller",
            out / "ctrl" / "controller", "--action-prior", 0.1)
    assert "--action-prior: expected a weight >= 0, for 'plan arm' only" in capsys.readouterr().err
    # Navigation: straight-line CEM with ATE / RPE.
    run("controller", "--checkpoint", ck, "--data", tmp_path / "nav", "--out", out / "nav_ctrl", "--iterations", 5,
        "--warmup", 1, "--batch-size", 8, "--width", 16, "--heads", 2)
    run("plan", "nav", "--checkpoint", ck, "--data", tmp_path / "nav", "--out", out / "nav_plan", "--controller",
        out / "nav_ctrl" / "controller", "--episodes", 1, "--samples", 10)
    nav = json.loads((out / "nav_plan" / "plan_nav.json").read_text())
    assert nav["lam_controller"]["cem"] == {"samples": 10, "top_k": 10, "iterations": 1}
    assert nav["lam_controller"]["ate"] >= 0 and nav["lam_controller"]["rpe"] >= 0
