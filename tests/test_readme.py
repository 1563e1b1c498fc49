"""The README says what a user sees: its "Using the model" snippet runs as written, and each
claim of the paragraph under it holds (shapes, the names of the checks, what is refused)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fastlam.config import from_dict, read_config_file
from fastlam.models import LatentActionWorldModel, ModelConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SECTION = README[README.index("## Using the model"):README.index("## Training")]


def _snippet() -> str:
    return re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)


@pytest.fixture(scope="module")
def tiny_final(tmp_path_factory):
    """A model of the README's tiny config saved where the snippet loads it from (training is
    not what this tests: test_train does)."""
    cfg = from_dict(ModelConfig, read_config_file(REPO / "configs" / "tiny_cpu.yaml")["model"])
    root = tmp_path_factory.mktemp("readme")
    LatentActionWorldModel(cfg).save_pretrained(root / "runs" / "tiny_cpu" / "final")
    return root


def test_the_snippet_runs_as_written_with_the_shapes_it_states(tiny_final, monkeypatch):
    monkeypatch.chdir(tiny_final)
    scope: dict = {}
    exec(compile(_snippet(), "README.md", "exec"), scope)
    model, video = scope["model"], scope["video"]
    B, frames = video.shape[0], video.shape[2]
    T = frames // 2  # "T = frames / 2"
    assert scope["z"].shape == (B, T - 1, 128)
    assert scope["states"].shape[:2] == (B, T) and scope["states"].dim() == 4
    assert scope["next_states"].shape == scope["states"][:, 1:].shape
    # "H = W = model.cfg.image_size": the name the README uses exists and is the snippet's size.
    assert "model.cfg.image_size" in SECTION and model.cfg.image_size == video.shape[-1] == video.shape[-2]


def _claims_model(tiny_final):
    return LatentActionWorldModel.from_checkpoint(tiny_final / "runs" / "tiny_cpu" / "final").eval()


@pytest.mark.parametrize("bad, what", [
    (lambda v: v[:, :, :3], "frames"),                       # not a multiple of the tubelet
    (lambda v: v[..., :32, :32], "shape"),                   # H = W != image_size
    (lambda v: v.double(), "dtype"),                         # not the model's dtype
    (lambda v: v.half(), "dtype"),
    (lambda v: v.bfloat16(), "dtype"),
    (lambda v: (v * 255).round().to(torch.uint8), "float"),  # integer frames
    (lambda v: v * 255, "[0, 1]"),                           # 0..255 float frames
])
def test_each_refusal_the_readme_lists_is_an_error_naming_video(tiny_final, bad, what):
    model = _claims_model(tiny_final)
    video = bad(torch.rand(2, 3, 16, 64, 64))
    for call in (model.encode, model.infer_actions):
        with pytest.raises((ValueError, TypeError)) as e:
            call(video)
        assert str(e.value).startswith("video:") and what in str(e.value), e.value


def test_what_the_readme_says_to_pass_instead_works(tiny_final):
    model = _claims_model(tiny_final)
    video = torch.rand(2, 3, 16, 64, 64)
    model.encode((video * 255), check_range=False)  # "check_range=False ... skips it"
    model.check_video_range = False
    model.encode(video * 255)
    model.check_video_range = True
    with torch.autocast("cpu", dtype=torch.bfloat16):  # "float32 or the autocast dtype"
        assert model.infer_actions(video.bfloat16()).shape == (2, 7, 128)
        assert model.infer_actions(video).shape == (2, 7, 128)
        for dtype in (torch.float64, torch.float16):  # "other dtypes ... an error naming video"
            with pytest.raises(TypeError, match=r"^video: expected dtype torch.float32 or torch.bfloat16"):
                model.infer_actions(video.to(dtype))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):  # "the dtype the model's"
        cast = _claims_model(tiny_final).to(dtype)
        assert cast.infer_actions(video.to(dtype)).dtype == dtype
