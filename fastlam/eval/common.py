"""Shared pieces of the evaluations: loading a LAM with a regularizer check, held-out clips,
batched encoding, the latent one-step error, JSON / PNG output.

Every evaluation accepts any object with the world model's interface (``encode(video)``,
``infer_actions(states=...)``, ``predict(states, actions)``, and ``idm`` = None for a model
without latent actions), so constructed models with a known answer can be tested through the
same code as a trained :class:`~fastlam.models.LatentActionWorldModel`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ..clips import load_clips  # noqa: F401  (moved below the training diagnostics; importable here as before)
from ..models import LatentActionWorldModel
# Moved below the training dashboard, which draws rollouts too; importable here as before.
from ..rollouts import check_states, check_video, device_of, encode_batched, has_latents  # noqa: F401

REGULARIZER_KINDS = ("none", "deterministic", "sparse", "noisy", "discrete")


def regularizer_kind(model) -> str:
    cfg = getattr(model, "cfg", None)
    return getattr(getattr(cfg, "regularizer", None), "kind", "unknown")


def load_lam(path: str | Path, expect_regularizer: str | None = None,
             device: str | torch.device = "cpu") -> LatentActionWorldModel:
    """Load a LAM checkpoint in eval mode; with ``expect_regularizer`` refuse a checkpoint
    trained with another regularizer (an evaluation of "noisy" on a sparse model would
    silently report the wrong row of the paper's tables)."""
    if expect_regularizer is not None and expect_regularizer not in REGULARIZER_KINDS:
        raise ValueError(f"expect_regularizer: expected one of {REGULARIZER_KINDS}, got {expect_regularizer!r}")
    model = LatentActionWorldModel.from_checkpoint(path, map_location="cpu").to(device).eval()
    kind = regularizer_kind(model)
    if expect_regularizer is not None and kind != expect_regularizer:
        raise ValueError(f"checkpoint: {path} was trained with regularizer {kind!r}, "
                         f"but the evaluation asks for {expect_regularizer!r}")
    return model


@torch.no_grad()
def latents(model, states: torch.Tensor) -> torch.Tensor | None:
    """IDM latents (B, T-1, A) in eval mode, or None for a model without latent actions."""
    if not has_latents(model):
        return None
    return model.infer_actions(states=states)


@torch.no_grad()
def one_step_errors(model, states: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-transition L1 error (B, T-1) of predicting s_{t+1} from s_0..t and z_t, with the
    IDM's own latents unless ``actions`` are given: the paper's capacity measure."""
    check_states(states)
    z = latents(model, states) if actions is None else actions
    pred = model.predict(states[:, :-1], z)
    return (pred.float() - states[:, 1:].float()).abs().mean(dim=(-2, -1))


def state_fingerprint(model) -> str | None:
    """A short hash of the frozen encoder's weights: latent errors of two models are only
    comparable in the same state space."""
    enc = getattr(model, "encoder", None)
    if enc is None:
        return None
    h = hashlib.sha1()
    ecfg = getattr(enc, "cfg", None)
    if getattr(ecfg, "kind", "vit") == "pixels":  # weight-free: its settings are its identity
        h.update(repr((ecfg.patch_size, ecfg.tubelet, ecfg.pool, ecfg.projection, ecfg.width)).encode())
        if getattr(ecfg, "token_norm", False):  # only when on: older fingerprints stay valid
            h.update(b"token_norm")
    for k, v in sorted(enc.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def summary(values: torch.Tensor) -> dict:
    v = values.detach().float().flatten()
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0, "n": int(v.numel())}


def write_json(path: str | Path, obj: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_jsonable))
    return path


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png) -> Path:
    """Write ``fig`` to ``png`` (parents created) and free it; returns the path."""
    plt = pyplot()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def mean_of(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")
