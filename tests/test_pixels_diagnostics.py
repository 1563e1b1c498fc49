"""The weight-free ``pixels`` encoder, the latent-use diagnostics and the held-out worlds."""
import json

import pytest
import torch

from fastlam.config import load_config
from fastlam.data.worlds import load_backgrounds, make_world, other_scene, procedural_backgrounds
from fastlam.diagnostics import latent_diagnostics, progress_postfix
from fastlam.models import EncoderConfig, LatentActionWorldModel, ModelConfig, PixelEncoder, RegularizerConfig
from fastlam.models.encoder import IMAGENET_MEAN, IMAGENET_STD
from fastlam.train import TrainConfig, train


def _pixels(**kw):
    return EncoderConfig(kind="pixels", patch_size=kw.pop("patch_size", 8), tubelet=2, **kw)


def test_pixel_tokens_are_the_normalised_patches():
    enc = PixelEncoder(_pixels())
    video = torch.rand(2, 3, 4, 16, 24)
    s = enc(video)
    assert s.shape == (2, 2, 2 * 3, 3 * 2 * 8 * 8) and enc.width == 384
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    b, t, row, col = 1, 1, 1, 2  # token index row * grid_w + col, channel-major (c, t, y, x)
    block = video[b, :, 2 * t:2 * t + 2, 8 * row:8 * row + 8, 8 * col:8 * col + 8]
    torch.testing.assert_close(s[b, t, row * 3 + col], ((block - mean) / std).flatten())


def test_pooling_averages_inside_the_patch():
    video = torch.rand(1, 3, 2, 8, 8)
    pooled = PixelEncoder(_pixels(pool=4))(video)
    full = PixelEncoder(_pixels())(video)
    assert pooled.shape == (1, 1, 1, 3 * 2 * 2 * 2)
    want = full.view(3, 2, 2, 4, 2, 4).mean((3, 5)).flatten()
    torch.testing.assert_close(pooled.flatten(), want)


def test_token_norm_ignores_brightness_and_contrast():
    video = torch.rand(2, 3, 4, 16, 16) * 0.5 + 0.25
    enc = PixelEncoder(_pixels(pool=2, token_norm=True))
    s = enc(video)
    assert s.shape == (2, 2, 4, 3 * 2 * 4 * 4)
    per_frame = s.view(2, 2, 4, 3, 2, 16).transpose(-2, -3)  # (c, t, y, x): each frame of the tubelet
    torch.testing.assert_close(per_frame.mean((-2, -1)), torch.zeros(2, 2, 4, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_frame.var((-2, -1), unbiased=False), torch.ones(2, 2, 4, 2), atol=1e-3, rtol=0)
    # A brightness/contrast flicker in every raw frame (also between the two frames of a
    # tubelet) leaves the states as they were; values stay inside [0, 1].
    a = torch.rand(2, 1, 4, 1, 1) * 0.6 + 0.7
    b = (torch.rand(2, 1, 4, 1, 1) - 0.5) * 0.1
    flickered = (video - 0.5) * a + 0.5 + b
    assert flickered.min() >= 0 and flickered.max() <= 1
    torch.testing.assert_close(enc(flickered), s, atol=1e-3, rtol=1e-3)  # fp32 rounding
    plain = PixelEncoder(_pixels(pool=2))  # without token_norm the states move with it
    assert (plain(flickered) - plain(video)).abs().max() > 0.1


def test_orthogonal_and_pca_projections():
    video = torch.rand(4, 3, 4, 16, 16)
    orth = PixelEncoder(_pixels(pool=2, projection="orthogonal", width=10))
    q = orth.proj
    torch.testing.assert_close(q.T @ q, torch.eye(10), atol=1e-5, rtol=0)
    assert orth(video).shape == (4, 2, 4, 10)
    pca = PixelEncoder(_pixels(pool=2, projection="pca", width=6))
    assert not bool(pca.fitted)
    s = pca(video).reshape(-1, 6)
    assert bool(pca.fitted)
    torch.testing.assert_close(s.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.var(0), torch.ones(6), atol=1e-3, rtol=0)  # whitened on its fit batch
    before = pca.proj.clone()
    pca(torch.rand(4, 3, 4, 16, 16))
    assert torch.equal(before, pca.proj), "fitted once, then frozen"


def test_lam_with_pixels_round_trips(tmp_path):
    cfg = ModelConfig(image_size=16, frames=6, action_dim=8, encoder=_pixels(pool=2, projection="pca", width=12))
    model = LatentActionWorldModel(cfg)
    video = torch.rand(3, 3, 6, 16, 16)
    assert model(video).pred_loss.isfinite() and model.encoder.width == 12
    assert not list(model.encoder.parameters()), "weight-free"
    loaded = LatentActionWorldModel.from_checkpoint(model.save_pretrained(tmp_path / "m"))
    assert loaded.cfg.encoder.kind == "pixels"
    torch.testing.assert_close(loaded.encode(video), model.encode(video))
    torch.testing.assert_close(loaded.infer_actions(video), model.infer_actions(video))


@pytest.mark.parametrize("kw, match", [
    (dict(kind="pixelz"), "model.encoder.kind"),
    (dict(kind="pixels", pool=3), "model.encoder.pool"),
    (dict(kind="pixels", width=50), "model.encoder.width"),
    (dict(kind="pixels", projection="pca"), "model.encoder.width"),
    (dict(kind="pixels", projection="random", width=4), "model.encoder.projection"),
    (dict(kind="pixels", checkpoint="w.safetensors"), "model.encoder.checkpoint"),
    (dict(kind="pixels", token_norm="yes"), "model.encoder.token_norm"),
])
def test_bad_pixel_settings_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        LatentActionWorldModel(ModelConfig(image_size=16, frames=4, encoder=EncoderConfig(patch_size=8, **kw)))


def test_tiny_config_uses_pixels_and_vit_stays_default():
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml")
    assert cfg.model.encoder.kind == "pixels"
    assert EncoderConfig().kind == "vit"
    assert load_config(TrainConfig, "configs/paper_vitl.yaml").model.encoder.kind == "vit"


class _UsesZ(torch.nn.Module):
    """A known answer: the prediction is s_t + z_t[0] broadcast (z = the true shift)."""

    def __init__(self, uses_z: bool):
        super().__init__()
        self.uses_z, self.idm, self.w = uses_z, True, torch.nn.Parameter(torch.zeros(1))
        self.cfg = ModelConfig()

    def infer_actions(self, states):
        return (states[:, 1:] - states[:, :-1]).mean((-2, -1))[..., None].repeat(1, 1, 4)

    def predict(self, states, z):
        return states + (z[..., :1, None] if self.uses_z else 0.0)


def test_diagnostics_tell_used_from_ignored_latents():
    g = torch.Generator().manual_seed(0)
    steps = torch.randn(6, 5, generator=g).cumsum(1)
    states = steps[:, :, None, None] + 0.01 * torch.randn(6, 5, 3, 2, generator=g)
    rng = torch.get_rng_state()
    used = latent_diagnostics(_UsesZ(True), states)
    ignored = latent_diagnostics(_UsesZ(False), states)
    assert torch.equal(rng, torch.get_rng_state()), "no global RNG consumed"
    assert used["diag/action_dependence"] > 5 and used["diag/l1_zero"] > 5 * used["diag/l1_own"]
    assert ignored["diag/action_dependence"] == pytest.approx(1.0)
    assert used["diag/z_dims_active"] == 4 and used["diag/z_var_mean"] > 0
    assert progress_postfix(used)["dep"].startswith(f"{used['diag/action_dependence']:.1f}"[:3])


def test_diagnostics_on_real_models_and_vq_codes():
    states = torch.randn(4, 3, 4, 96)  # 16 px, patch 8, pool 2: 3 x 2 x 4 x 4 features
    for kind in ("deterministic", "noisy", "discrete"):
        cfg = ModelConfig(image_size=16, frames=6, action_dim=8, encoder=_pixels(pool=2),
                          regularizer=RegularizerConfig(kind=kind, num_codes=16))
        model = LatentActionWorldModel(cfg).train()
        out = latent_diagnostics(model, states)
        assert model.training, "mode restored"
        assert out["diag/l1_own"] > 0
        if kind == "deterministic":
            assert out["diag/action_dependence"] == 1.0
        if kind == "discrete":
            assert 1 <= out["diag/codes_used"] <= 8  # 4 clips x 2 transitions
            assert "diag/codes_used_train" in out
        if kind == "noisy":
            # by hand from the IDM's raw head: sigma = exp(logvar / 2); SNR = mean_j var(mu_j) / mean(sigma_j^2)
            with torch.no_grad():
                raw = model.idm(states).reshape(-1, 16).double()
            mu, logvar = raw[:, :8], raw[:, 8:].clamp(-20, 10)
            assert out["diag/posterior_sigma"] == pytest.approx(float(logvar.exp().mean(0).sqrt().mean()), rel=1e-5)
            snr = (mu.var(0, unbiased=False) / logvar.exp().mean(0)).mean()
            assert out["diag/posterior_snr"] == pytest.approx(float(snr), rel=1e-4)
        else:
            assert "diag/posterior_snr" not in out


@pytest.mark.slow
def test_training_logs_diagnostics(tmp_path):
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml", [
        "data.source=synthetic", "data.synthetic_clips=16", "model.image_size=16", "model.frames=4",
        "model.encoder.patch_size=8", "model.idm.width=16", "model.predictor.width=16", "batch_size=4",
        "progress=false", "log_every=2", "steps=4", "diagnostics_clips=3", f"out_dir={tmp_path}"])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("diag/action_dependence" in r and "diag/l1_zero" in r for r in rows)
    assert (tmp_path / "loss_curve.png").is_file()
    off = load_config(TrainConfig, tmp_path / "config.yaml", ["diagnostics_clips=0", f"out_dir={tmp_path / 'off'}"])
    train(off)
    assert not any("diag/l1_own" in line for line in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("kind", ["agent", "pan"])
def test_world_actions_are_the_true_motion(kind):
    w = make_world(kind, 6, steps=4, tubelet=2, size=32, agent=6, max_step=3, distractors=2, flicker=0.0, seed=1)
    assert w.video.shape == (6, 3, 8, 32, 32) and w.actions.shape == (6, 3, 2)
    assert w.distractor_moves.shape == (6, 3, 2, 2) and w.groups.shape == (6,)
    assert torch.equal(w.actions, (w.positions[:, 1:] - w.positions[:, :-1]).float())
    assert w.actions.abs().max() <= 3 and (w.actions != 0).any()
    assert torch.equal(w.video[:, :, 0], w.video[:, :, 1]), "frames of one step are equal without flicker"
    if kind == "agent":  # the agent's dark cross sits where its position says
        i, t = 2, 3
        y, x = (int(v) for v in w.positions[i, t])
        assert (w.video[i, :, 2 * t, y + 3, x:x + 6] < 0.06).all()
    else:  # the picture moved by -a: the overlap of two frames agrees away from distractors
        diffs = []
        for i in range(6):
            dy, dx = (int(v) for v in w.actions[i, 0])
            a, b = w.video[i, :, 0], w.video[i, :, 2]
            a_win = a[:, max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)]
            b_win = b[:, max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)]
            diffs.append(((a_win - b_win).abs() < 1e-6).float().mean())
        assert min(diffs) > 0.85


def test_backgrounds_fall_back_and_scene_cuts_change_group(tmp_path):
    bg, src = load_backgrounds(str(tmp_path / "missing"), 24, per_video=2)
    assert src == "procedural textures" and bg.shape == (8, 3, 24, 24)
    assert bg.min() >= 0 and bg.max() <= 1 and bg.std() > 0.05
    assert procedural_backgrounds(2, 16, seed=3).shape == (2, 3, 16, 16)
    w = make_world("agent", 20, steps=3, size=16, agent=4, distractor_size=3, backgrounds=bg, seed=0)
    j = other_scene(w.groups)
    assert (w.groups[j] != w.groups).all()
    with pytest.raises(ValueError, match="kind"):
        make_world("maze", 2)
    with pytest.raises(ValueError, match="max_step"):
        make_world("agent", 2, max_step=0)


def test_state_fingerprint_tells_pixel_encoders_apart():
    from fastlam.eval.common import state_fingerprint

    def fp(**kw):
        return state_fingerprint(LatentActionWorldModel(ModelConfig(image_size=16, frames=4, encoder=_pixels(**kw))))

    assert fp(pool=2) == fp(pool=2)
    assert len({fp(pool=2), fp(pool=4), fp(pool=2, token_norm=True)}) == 3
