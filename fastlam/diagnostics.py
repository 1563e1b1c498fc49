"""Is the latent action used? Cheap checks on a fixed held-out batch, while training.

Every ``log_every`` steps the trainer calls :class:`TrainDiagnostics` (one hook in
``fastlam.train``); it writes ``diag/*`` keys into ``metrics.jsonl``, the action dependence
into the progress bar and a second panel into ``loss_curve.png``:

* ``diag/l1_own``: one-step L1 of the predictor with the IDM's own latents (eval mode: the
  noisy regularizer's mean);
* ``diag/l1_other``: the same with latents of *other clips* (rolled by one in the batch);
* ``diag/l1_zero``: with z = 0;
* ``diag/action_dependence`` = ``l1_other / l1_own``: 1.0 when the predictor ignores z, above
  1 when it uses it (a z that also copies the future pushes it up too: read it beside the
  leakage test);
* ``diag/z_var_mean`` / ``diag/z_var_max`` / ``diag/z_dims_active``: per-dimension variance of
  the latents over the batch (active = variance above 1% of the largest);
* ``diag/codes_used``: for a discrete regularizer, distinct codes among the batch's latents,
  and ``diag/codes_used_train`` from the regularizer's ``usage`` buffer where it has one.

All under ``torch.no_grad`` in eval mode; the global RNG is untouched, so a resumed run still
reproduces an uninterrupted one.
"""
from __future__ import annotations

import math

import torch

from .clips import load_clips
from .data.synthetic import make_sprite_clips

__all__ = ["latent_diagnostics", "TrainDiagnostics", "held_out_clips", "plot_diagnostics", "DIAG_KEYS"]

DIAG_KEYS = ("diag/l1_own", "diag/l1_other", "diag/l1_zero")


@torch.no_grad()
def latent_diagnostics(model, states: torch.Tensor) -> dict:
    """``diag/*`` figures of ``model`` on encoder states (B, T, N, D) (see the module docstring)."""
    if states.dim() != 4 or states.shape[1] < 2:
        raise ValueError(f"states: expected (B, T >= 2, N, D), got {tuple(states.shape)}")
    was_training = model.training
    model.eval()
    try:
        target = states[:, 1:].float()

        def l1(z):
            return float((model.predict(states[:, :-1], z).float() - target).abs().mean())

        if getattr(model, "idm", None) is None:  # deterministic: no latent at all
            own = l1(None)
            return {"diag/l1_own": own, "diag/l1_other": own, "diag/l1_zero": own, "diag/action_dependence": 1.0}
        z = model.infer_actions(states=states)
        own, zero = l1(z), l1(torch.zeros_like(z))
        other = l1(z.roll(1, dims=0)) if z.shape[0] > 1 else own
        flat = z.reshape(-1, z.shape[-1]).float()
        var = flat.var(0, unbiased=False)
        out = {"diag/l1_own": own, "diag/l1_other": other, "diag/l1_zero": zero,
               "diag/action_dependence": other / max(own, 1e-12),
               "diag/z_var_mean": float(var.mean()), "diag/z_var_max": float(var.max()),
               "diag/z_dims_active": int((var > 0.01 * var.max().clamp_min(1e-12)).sum())}
        reg = getattr(model, "regularizer", None)
        kind = getattr(getattr(getattr(model, "cfg", None), "regularizer", None), "kind", None)
        if kind == "discrete":
            out["diag/codes_used"] = int(torch.unique(flat, dim=0).shape[0])
            usage = getattr(reg, "usage", None)
            if isinstance(usage, torch.Tensor):
                out["diag/codes_used_train"] = int((usage > 0).sum())
        return out
    finally:
        model.train(was_training)


def held_out_clips(cfg, num_clips: int) -> torch.Tensor:
    """A fixed batch for the diagnostics of a training config: for ``data.source: synthetic``
    clips drawn like the training ones with another seed; otherwise the data layer's fixed
    clips of the source, whatever its type (:func:`fastlam.data.source_clips.fixed_clips`:
    centre crops spread over the videos of a folder, list or manifest, the first samples of
    shards; fixed, but not unseen: a training corpus has no split)."""
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        if cfg.data.source == "synthetic":
            video, _ = make_sprite_clips(num_clips, steps=m.frames // m.encoder.tubelet, tubelet=m.encoder.tubelet,
                                         size=m.image_size, num_sprites=cfg.data.synthetic_sprites,
                                         wrap=cfg.data.synthetic_wrap, seed=cfg.seed + 10_000)
            return video
        return load_clips(cfg.data.source, m, num_clips, seed=cfg.seed + 1, fps=cfg.data.fps)


class TrainDiagnostics:
    """Holds the fixed held-out batch's states; ``__call__(model)`` returns the ``diag/*`` row.

    The states are encoded once, lazily on the first call (a ``pca`` pixel encoder is fitted
    on the first *training* batch, so encoding earlier would fit it on this batch instead).
    """

    def __init__(self, video: torch.Tensor):
        self.video = video
        self.states: torch.Tensor | None = None

    @classmethod
    def for_config(cls, cfg, num_clips: int = 8) -> "TrainDiagnostics":
        return cls(held_out_clips(cfg, num_clips))

    def __call__(self, model) -> dict:
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if self.states is None:
                self.states = model.encode(self.video.to(device)).float()
                self.video = None
            return latent_diagnostics(model, self.states)


def progress_postfix(row: dict) -> dict:
    """Short progress-bar fields from a metrics row with ``diag/*`` keys."""
    out = {}
    if "diag/action_dependence" in row:
        out["dep"] = f"{row['diag/action_dependence']:.3f}"
    if "diag/codes_used" in row:
        out["codes"] = str(row["diag/codes_used"])
    return out


def plot_diagnostics(ax, rows: list[dict]) -> bool:
    """Draw held-out L1 with own / other clips' / zero latents on ``ax``; False if no data."""
    rows = [r for r in rows if "diag/l1_own" in r]
    if not rows:
        return False
    steps = [r["step"] for r in rows]
    for key, label in zip(DIAG_KEYS, ("own z", "other clips' z", "z = 0")):
        ax.plot(steps, [r[key] for r in rows], label=label)
    dep = rows[-1].get("diag/action_dependence", math.nan)
    ax.set_xlabel("step")
    ax.set_ylabel("one-step L1 on the fixed diagnostics clips")
    ax.set_title(f"latent use (last action dependence x{dep:.3f})")
    ax.legend()
    return True
