"""Bad inputs are errors that name the argument and what to pass: video values outside [0, 1]
(with an opt-out), dtype and resolution mismatches, and checkpoint files that are not what
from_checkpoint reads (never PyTorch's advice to retry with weights_only=False)."""
import os
import pickle
import traceback

import pytest
import torch

from fastlam.checkpoint import CheckpointError, load_checkpoint
from fastlam.models import LatentActionWorldModel, ModelConfig
from fastlam.models.encoder import EncoderConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LatentActionWorldModel(ModelConfig(image_size=16, frames=4, action_dim=8,
                                              encoder=EncoderConfig(patch_size=8, width=16, depth=1, heads=2)))


def clip(*shape, dtype=torch.float32):
    return torch.rand(*(shape or (2, 3, 4, 16, 16)), generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("scale, shift", [(255.0, 0.0), (1.0, -0.5), (1.0, 0.01)])
def test_values_outside_unit_range_are_refused(model, scale, shift):
    video = clip() * scale + shift
    for call in (model.infer_actions, model.encode, model):
        with pytest.raises(ValueError, match=r"video: expected values in \[0, 1\], got min"):
            call(video)


def test_nan_video_is_refused_and_the_range_check_can_be_skipped(model):
    video = clip()
    video[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"video: expected values in \[0, 1\]"):
        model.infer_actions(video)
    big = clip() * 255
    assert model.infer_actions(big, check_range=False).shape == (2, 1, 8)
    model.check_video_range = False
    try:
        assert model.encode(big).shape[:2] == (2, 2)
    finally:
        model.check_video_range = True
    # In range: the check passes and changes nothing.
    v = clip()
    assert torch.equal(model.infer_actions(v), model.infer_actions(v, check_range=False))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_mismatch_names_video_and_the_expected_dtype(model, dtype):
    with pytest.raises(TypeError, match=rf"video: expected dtype torch.float32 .*got {dtype}"):
        model.infer_actions(clip(dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the model: accepted
        assert model.encode(clip(dtype=torch.bfloat16)).shape[:2] == (2, 2)


@pytest.mark.parametrize("shape, match", [
    ((2, 3, 4, 32, 32), r"video: expected shape \(B, C, frames, 16, 16\) \(model.image_size=16\), got \(2, 3, 4, 32, 32\)"),
    ((2, 3, 4, 16, 24), r"video: expected shape \(B, C, frames, 16, 16\)"),
    ((2, 3, 2, 16, 16), r"video: expected at least 4 frames"),
    ((2, 3, 5, 16, 16), r"video: frames=5 must be a positive multiple of the tubelet"),
    ((2, 1, 4, 16, 16), r"video: expected 3 channels"),
    ((3, 4, 16, 16), r"video: expected a \(B, C, frames, H, W\) tensor"),
])
def test_wrong_shapes_name_video(model, shape, match):
    with pytest.raises(ValueError, match=match):
        model.infer_actions(clip(*shape))


def test_uint8_video_names_video(model):
    with pytest.raises(TypeError, match=r"video: expected a float tensor"):
        model.infer_actions((clip() * 255).to(torch.uint8))


# ---- checkpoints ------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def _assert_no_weights_only_advice(excinfo):
    shown = "".join(traceback.format_exception(excinfo.value))  # what a user's traceback prints
    assert "weights_only" not in shown and "UnpicklingError" not in shown


def test_random_bytes_are_always_a_checkpoint_error(tmp_path):
    """Many seeded noise files (os.urandom once hit a UnicodeDecodeError in the legacy header)."""
    f = tmp_path / "noise.pt"
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        f.write_bytes(bytes(torch.randint(0, 256, (int(torch.randint(1, 3000, (1,), generator=g)),),
                                          generator=g, dtype=torch.uint8).tolist()))
        with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
            load_checkpoint(f)


def test_foreign_or_corrupt_checkpoint_files_say_what_to_pass(tmp_path):
    evil, noise = tmp_path / "evil.pt", tmp_path / "noise.pt"
    torch.save({"model": _Payload()}, evil)
    noise.write_bytes(os.urandom(2000))
    for f, why in ((evil, "objects other than tensors"), (noise, "not a readable torch checkpoint")):
        with pytest.raises(CheckpointError, match=why) as e:
            LatentActionWorldModel.from_checkpoint(f)
        assert "model.safetensors + config.json" in str(e.value) and "checkpoints/latest.pt" in str(e.value)
        _assert_no_weights_only_advice(e)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(f)
        _assert_no_weights_only_advice(e)
    assert issubclass(CheckpointError, ValueError) and not issubclass(CheckpointError, pickle.UnpicklingError)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match=r"is not a fastlam training checkpoint .*pass a folder holding"):
        LatentActionWorldModel.from_checkpoint(other)


def test_weights_file_loads_as_its_folder_and_run_folders_point_to_final(model, tmp_path):
    final = model.save_pretrained(tmp_path / "run" / "final")
    v = clip()
    for p in (final, final / "model.safetensors", final / "config.json"):
        assert torch.equal(LatentActionWorldModel.from_checkpoint(p).infer_actions(v), model.infer_actions(v))
    with pytest.raises(FileNotFoundError, match=r"a training run folder: pass .*final"):
        LatentActionWorldModel.from_checkpoint(tmp_path / "run")
    lone = tmp_path / "lone" / "model.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((final / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"no config.json \+ model.safetensors pair beside it; pass a folder"):
        LatentActionWorldModel.from_checkpoint(lone)
    with pytest.raises(FileNotFoundError, match=r"no file or folder at .*; pass a folder holding"):
        LatentActionWorldModel.from_checkpoint(tmp_path / "missing")
