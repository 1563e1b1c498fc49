"""The world model's structure: AdaLN-zero identity, frame causality, shapes, bad input,
save/load. Small configs so every test runs in seconds on a CPU."""
import pytest
import torch

from fastlam.models import EncoderConfig, LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig
from fastlam.models.blocks import AdaLNZeroBlock
from fastlam.models.encoder import VideoEncoder
from fastlam.ops import Rope3D


def small_cfg(kind="noisy", **kw):
    return ModelConfig(
        image_size=32, frames=8, action_dim=16,
        encoder=EncoderConfig(size="tiny", patch_size=8, width=32, heads=2),
        idm=TransformerConfig(width=32, depth=1, heads=2), predictor=TransformerConfig(width=48, depth=2, heads=4),
        regularizer=RegularizerConfig(kind=kind, num_codes=8), **kw,
    )


def test_fresh_adaln_zero_block_is_identity():
    blk = AdaLNZeroBlock(48, 4)
    x = torch.randn(2, 3 * 16, 48)
    cond = torch.randn(2, 3, 48)
    out = blk(x, cond, frame_len=16, mask="frame_causal", rope=Rope3D(grid_w=4))
    assert torch.equal(out, x)


def test_predictor_is_frame_causal():
    model = LatentActionWorldModel(small_cfg()).eval()
    # Make the predictor non-trivial (fresh AdaLN-zero blocks would be the identity).
    for p in model.predictor.parameters():
        torch.nn.init.normal_(p, std=0.1)
    states = torch.randn(2, 4, 16, model.encoder.width)
    actions = torch.randn(2, 4, 16)
    ref = model.predict(states, actions)
    for t in range(3):
        s2, a2 = states.clone(), actions.clone()
        s2[:, t + 1] += torch.randn_like(s2[:, t + 1])
        a2[:, t + 1] += 1.0
        out = model.predict(s2, a2)
        assert torch.equal(out[:, : t + 1], ref[:, : t + 1]), f"frame {t + 1} leaked into frames <= {t}"
        assert not torch.equal(out[:, t + 1], ref[:, t + 1])


def test_frame_causal_encoder_is_frame_causal():
    enc = VideoEncoder(EncoderConfig(size="tiny", patch_size=8, frame_causal=True)).eval()
    video = torch.rand(1, 3, 8, 32, 32)
    ref = enc(video)
    v2 = video.clone()
    v2[:, :, 6:] = torch.rand_like(v2[:, :, 6:])  # change the last tubelet (time step 3)
    out = enc(v2)
    assert torch.equal(out[:, :3], ref[:, :3])
    assert not torch.equal(out[:, 3], ref[:, 3])


@pytest.mark.parametrize("kind", ["none", "sparse", "noisy", "discrete", "deterministic"])
def test_every_regularizer_trains_a_step(kind):
    model = LatentActionWorldModel(small_cfg(kind)).train()
    video = torch.rand(3, 3, 8, 32, 32)
    out = model(video)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters()), "the encoder must stay frozen"
    grads = [p.grad for p in model.predictor.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    if kind != "deterministic":
        assert out.actions.shape == (3, 3, 16)
        assert model.infer_actions(video).shape == (3, 3, 16)
    else:
        assert out.actions is None
        with pytest.raises(RuntimeError, match="deterministic"):
            model.infer_actions(video)


def test_noisy_actions_are_deterministic_in_eval():
    model = LatentActionWorldModel(small_cfg("noisy"))
    video = torch.rand(2, 3, 8, 32, 32)
    assert torch.equal(model.infer_actions(video), model.infer_actions(video))
    assert model.training, "infer_actions must restore the training mode"


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 8, 32, 32), "B, C, frames, H, W"),
        ((1, 3, 7, 32, 32), "multiple of the tubelet"),
        ((1, 3, 8, 30, 32), r"video: expected shape \(B, C, frames, 32, 32\)"),
        ((1, 4, 8, 32, 32), "channels"),
    ],
)
def test_bad_video_is_a_clear_error(shape, match):
    model = LatentActionWorldModel(small_cfg())
    with pytest.raises(ValueError, match=match):
        model(torch.rand(*shape))


def test_integer_video_is_rejected():
    model = LatentActionWorldModel(small_cfg())
    with pytest.raises(TypeError, match=r"video: expected a float tensor"):
        model(torch.zeros(1, 3, 8, 32, 32, dtype=torch.uint8))


def test_bad_actions_shape():
    model = LatentActionWorldModel(small_cfg())
    with pytest.raises(ValueError, match=r"actions: expected shape \(2, 4, 16\)"):
        model.predict(torch.randn(2, 4, 16, 32), torch.randn(2, 3, 16))


def test_config_validation():
    with pytest.raises(ValueError, match="model.image_size"):
        LatentActionWorldModel(small_cfg().__class__(image_size=30, encoder=EncoderConfig(patch_size=8)))
    with pytest.raises(ValueError, match="model.regularizer.kind"):
        LatentActionWorldModel(small_cfg("vae"))
    with pytest.raises(ValueError, match="model.encoder.size"):
        LatentActionWorldModel(ModelConfig(encoder=EncoderConfig(size="colossal")))


@pytest.mark.parametrize("kind", ["noisy", "discrete"])
def test_save_and_load_round_trip(tmp_path, kind):
    model = LatentActionWorldModel(small_cfg(kind)).eval()
    video = torch.rand(2, 3, 8, 32, 32)
    model.save_pretrained(tmp_path / "m")
    loaded = LatentActionWorldModel.from_checkpoint(tmp_path / "m").eval()
    assert torch.equal(model.infer_actions(video), loaded.infer_actions(video))
    states = model.encode(video)
    assert torch.equal(model(states=states).loss, loaded(states=states).loss)


def test_from_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file or folder at .*; pass a folder holding"):
        LatentActionWorldModel.from_checkpoint(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config.json \+ model.safetensors"):
        LatentActionWorldModel.from_checkpoint(tmp_path / "d")
