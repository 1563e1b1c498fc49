"""Capacity: the one-step prediction error with IDM latents on held-out video (lam-spec.md 5).

Lower error = more information flows through z. The two references bracket every
regularized model: ``deterministic`` (no z: the floor of capacity, highest error) and
``none`` (an unconstrained z: the ceiling, lowest error). :func:`capacity_sweep` trains one
model per regularizer strength with :func:`fastlam.trainer.train` and draws the capacity curve.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import apply_overrides, from_dict, load_config, to_dict
from ..trainer import TrainConfig, train
from .common import (
    encode_batched,
    has_latents,
    load_lam,
    one_step_errors,
    pyplot,
    save_figure,
    regularizer_kind,
    state_fingerprint,
    summary,
    write_json,
)

# The strength each family is swept over, and the paper's grids (lam-spec.md section 3).
STRENGTH_PARAM = {"sparse": "l_l1", "noisy": "beta", "discrete": "num_codes"}
PAPER_GRIDS = {
    "sparse": [0.4, 0.1, 0.08, 0.06, 0.05, 0.04, 0.02, 0.01],
    "noisy": [5e-3, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5, 5e-6, 1e-6],
    "discrete": [16, 1024, 4096, 32768],
}


@torch.no_grad()
def capacity(model, video: torch.Tensor | None = None, *, states: torch.Tensor | None = None,
             batch_size: int = 8) -> dict:
    """One-step IDM prediction error (latent L1) of ``model`` on held-out clips."""
    if (video is None) == (states is None):
        raise ValueError("capacity: pass exactly one of video or states")
    if states is None:
        states = encode_batched(model, video, batch_size)
    errs = one_step_errors(model, states)
    return {"regularizer": regularizer_kind(model), "has_latents": has_latents(model),
            "one_step_error": summary(errs), "per_step": errs.mean(0).tolist(),
            "state_space": state_fingerprint(model)}


def compare_capacity(models: dict, video: torch.Tensor, batch_size: int = 8) -> dict:
    """Capacity of several models (name -> model) on the same clips. A warning is recorded
    when the models' frozen encoders differ, since their errors are then not comparable."""
    rows = {name: capacity(m, video, batch_size=batch_size) for name, m in models.items()}
    spaces = {r["state_space"] for r in rows.values()}
    out = {"models": rows, "clips": int(video.shape[0])}
    if len(spaces) > 1:
        out["warning"] = "the models have different frozen encoders: their latent errors are not comparable"
    return out


def capacity_sweep(base_cfg, kind: str, values: Sequence[float], out_dir: str | Path, eval_video: torch.Tensor,
                   *, references: Sequence[str] = ("deterministic", "none"), overrides: Sequence[str] = (),
                   train_fn=None) -> dict:
    """Train one model per strength of regularizer ``kind`` (plus the references) and
    measure each one's capacity on ``eval_video``.

    ``base_cfg`` is a :class:`fastlam.trainer.TrainConfig` (or a path to its YAML); every run
    shares its seed, so the randomly initialised frozen encoders, and hence the state spaces,
    are the same. ``overrides`` (``key.sub=value``) apply to every run. Writes
    ``capacity_sweep.json`` and ``capacity_curve.png`` into ``out_dir``.
    """
    if kind not in STRENGTH_PARAM:
        raise ValueError(f"kind: expected one of {tuple(STRENGTH_PARAM)}, got {kind!r}")
    if not values:
        raise ValueError("values: expected at least one regularizer strength")
    for ref in references:
        if ref not in ("deterministic", "none"):
            raise ValueError(f"references: expected 'deterministic' and/or 'none', got {ref!r}")
    train_fn = train_fn or train
    out_dir = Path(out_dir)
    if isinstance(base_cfg, (str, Path)):
        base_cfg = load_config(TrainConfig, base_cfg, list(overrides))
    else:
        base_cfg = from_dict(TrainConfig, apply_overrides(to_dict(copy.deepcopy(base_cfg)), list(overrides)))
    param = STRENGTH_PARAM[kind]

    def run(name: str, settings: dict) -> dict:
        data = to_dict(base_cfg)
        data["out_dir"] = str(out_dir / name)
        data["progress"] = False
        data["model"]["regularizer"].update(settings)
        summary_ = train_fn(from_dict(TrainConfig, data))
        model = load_lam(summary_["model"])
        row = capacity(model, eval_video)
        row.update(name=name, checkpoint=summary_["model"], **settings)
        return row

    points = [run(f"{kind}_{param}_{v:g}", {"kind": kind, param: int(v) if kind == "discrete" else float(v)})
              for v in values]
    refs = {ref: run(ref, {"kind": ref}) for ref in references}
    result = {"kind": kind, "param": param, "points": points, "references": refs,
              "clips": int(eval_video.shape[0])}
    result["png"] = str(plot_capacity_curve(result, out_dir / "capacity_curve.png"))
    write_json(out_dir / "capacity_sweep.json", result)
    return result


def plot_capacity_curve(result: dict, png: str | Path) -> Path:
    """Error vs regularizer strength, references as horizontal lines. Strength axis is
    logarithmic; for sparse / noisy, larger values constrain more (less capacity)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p[result["param"]] for p in result["points"]]
    ys = [p["one_step_error"]["mean"] for p in result["points"]]
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ax.plot([xs[i] for i in order], [ys[i] for i in order], "o-", label=result["kind"])
    styles = {"deterministic": ("k", "--"), "none": ("g", ":")}
    for name, row in result.get("references", {}).items():
        c, ls = styles.get(name, ("gray", "-."))
        ax.axhline(row["one_step_error"]["mean"], color=c, linestyle=ls,
                   label="unconstrained" if name == "none" else name)
    if all(x > 0 for x in xs) and len(xs) > 1 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(result["param"])
    ax.set_ylabel("one-step IDM error (latent L1)")
    ax.set_title(f"capacity curve: {result['kind']}")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, png)
