"""Learning test: a tiny LatentActionWorldModel trained on CPU learns latent actions from which a
linear probe recovers the true 2-D actions of generated sprite clips.

Set-up: 32x32 clips, 6 time steps (tubelet 2). Eight 4 px sprites on a torus all move by the
same known random action a_t = (dy, dx), |dy|, |dx| <= 3 px, like a camera panning over a
scene. Distractors: the background brightness flickers independently in every raw frame and
a ninth, dimmer sprite wanders with its own random moves. The frozen encoder is the weight-free
`pixels` encoder (patch 8, pool 2, token_norm: each raw frame of a token standardised on its
own), so a state is a 4x4 grid of 96-d tokens; the IDM and predictor are 2-block transformers
of width 64 with a 16-d latent action and no regulariser, trained on cached encoder states with
the package's optimisers (Muon + AdamW, warmup + cosine).

Why token_norm (measured while moving this test to the pixels encoder, 1 thread): with plain
normalised pixels the flicker moves every feature of the next state, z encodes it first, and
after 600 steps the probe read R^2 0.025 while the predictor leaned on z (L1 0.36 vs 0.69 with
other clips' z); with a per-token (not per-frame) standardisation the flicker between the two
frames of a tubelet survived and 300 steps gave -0.03. Standardising every frame of a token
removes it: 300 steps 0.23 / 0.30 (seeds 0 / 1), 400 steps see below, 600 steps 0.61 (seed 0).

Why a pan and not one sprite (diagnosed while writing this test): with one sprite and moves
smaller than a patch, the IDM learns the sprite's *next sub-patch position*, which fixes the
next frame just as well and is easier for the predictor to use; the displacement is then not
linearly readable (R^2 ~0). When many sprites at different sub-patch positions share one move,
the displacement is the only compact description of the transition, and that is what the
latents learn (a first-order picture: s_{t+1} ~ s_t + a . grad s_t, linear in a).

Figures asserted (ridge probe fitted on half of the held-out transitions, R^2 on the other
half): trained R^2 >= 0.35 and >= 0.3 above both the shuffled-label baseline (same z, labels
permuted) and the untrained baseline (the same probe on an untrained IDM's z, i.e. random
features of (s_t, s_{t+1})). A `deterministic` model has no latent action at all (the probe's
R^2 from a constant feature is 0 by definition), so the untrained IDM is the stricter of the
two "no learning" baselines. The predictor must also use z: its L1 with z is at least 10% lower
than with z taken from other clips. Measured at 400 steps (1 thread each, three jobs sharing the
2 cores): trained R^2 0.466 / 0.523 / 0.573 / 0.439 / 0.462 on seeds 0-4 (0.49 +- 0.05);
shuffled -0.049 to -0.015; untrained -0.036 to -0.010; predictor L1 with z 0.397-0.417 vs
0.560-0.576 with other clips' z. With 2 threads (as in CI) seed 0 took another path and read
0.379 at 400 steps, too close to 0.35, so the test trains 500 steps: seed 0 then reads 0.600
(seed 1: 0.746), 177 s on 2 mostly idle cores.
``FASTLAM_LEARNING_SEED`` picks the seed (default 0).
"""
from __future__ import annotations

import os

import pytest
import torch

from fastlam.data import make_sprite_clips
from fastlam.eval.probes import ridge_r2
from fastlam.eval.study import train_on_states
from fastlam.models import EncoderConfig, LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig

PATCH = 8
STEPS_T = 6
NUM_CLIPS = 768
NUM_TRAIN = 512
TRAIN_STEPS = 500
BATCH = 32


def half_split_r2(features: torch.Tensor, targets: torch.Tensor) -> float:
    """The package's ridge probe fitted on the first half of the transitions, R^2 on the second
    half. lam 1e-3 is next to nothing (a near-least-squares fit, as the figures above were
    measured with)."""
    x = features.reshape(-1, features.shape[-1])
    y = targets.reshape(x.shape[0], -1)
    n = x.shape[0] // 2
    return ridge_r2(x[:n], y[:n], x[n:], y[n:], lam=1e-3)


@pytest.mark.slow
def test_linear_probe_recovers_true_actions():
    seed = int(os.environ.get("FASTLAM_LEARNING_SEED", "0"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(seed)
    video, actions = make_sprite_clips(
        NUM_CLIPS, steps=STEPS_T, tubelet=2, size=32, sprite=4, num_sprites=8, wrap=True, max_step=3,
        flicker=0.1, distractor=True, seed=seed)
    cfg = ModelConfig(
        image_size=32, frames=2 * STEPS_T, action_dim=16,
        encoder=EncoderConfig(kind="pixels", patch_size=PATCH, tubelet=2, pool=2, token_norm=True),
        idm=TransformerConfig(width=64, depth=2, heads=4),
        predictor=TransformerConfig(width=64, depth=2, heads=4),
        regularizer=RegularizerConfig(kind="none"))
    untrained = LatentActionWorldModel(cfg)
    model = LatentActionWorldModel(cfg)
    model.load_state_dict(untrained.state_dict())
    with torch.no_grad():
        states = torch.cat([model.encode(video[i:i + 256]) for i in range(0, NUM_CLIPS, 256)])

    # The study's trainer (fastlam's optimisers and schedule, the shared loop) on the training clips.
    train_s = train_on_states(model, states[:NUM_TRAIN], TRAIN_STEPS, BATCH, seed)
    gen = torch.Generator().manual_seed(seed + 1)

    test_states = states[NUM_TRAIN:]
    test_actions = actions[NUM_TRAIN:]
    z = model.infer_actions(states=test_states)
    z0 = untrained.infer_actions(states=test_states)
    perm = torch.randperm(test_actions.shape[0] * test_actions.shape[1], generator=gen)
    shuffled = test_actions.reshape(-1, 2)[perm]

    r2 = half_split_r2(z, test_actions)
    r2_shuffled = half_split_r2(z, shuffled)
    r2_untrained = half_split_r2(z0, test_actions)
    with torch.no_grad():
        model.eval()
        target = test_states[:, 1:]
        l1_z = (model.predict(test_states[:, :-1], z) - target).abs().mean().item()
        other = torch.roll(z, 1, dims=0)  # every clip gets another clip's latents
        l1_other = (model.predict(test_states[:, :-1], other) - target).abs().mean().item()
    print(f"\nseed {seed}: trained {TRAIN_STEPS} steps in {train_s:.1f}s; linear probe R^2 for the true "
          f"action a_t: trained {r2:.3f}, shuffled labels {r2_shuffled:.3f}, untrained model {r2_untrained:.3f}; "
          f"predictor L1 with z {l1_z:.4f}, with other clips' z {l1_other:.4f}")

    assert l1_z <= 0.9 * l1_other, (l1_z, l1_other)
    assert r2 >= 0.35, r2
    assert r2 >= r2_shuffled + 0.3, (r2, r2_shuffled)
    assert r2 >= r2_untrained + 0.3, (r2, r2_untrained)
