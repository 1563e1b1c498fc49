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
* ``diag/posterior_sigma`` / ``diag/posterior_snr``: for the noisy regularizer, the mean
  posterior sigma and the signal-to-noise ratio of its samples (variance of mu across clips over
  the mean posterior variance, averaged over dims): below ~1 the predictor sees mostly noise;
* ``diag/codes_used``: for a discrete regularizer, distinct codes among the batch's latents,
  and ``diag/codes_used_train`` from the regularizer's ``usage`` buffer where it has one.

All under ``torch.no_grad`` in eval mode; the global RNG is untouched, so a resumed run still
reproduces an uninterrupted one.

A collapse must not hide in a column of numbers (issue 28: a noisy run whose z the predictor
never used read 0.0480 / 0.0480 and nobody looked). :class:`CollapseWatch` judges every
measurement by ``latent_collapse`` (:class:`~fastlam.configs.LatentCollapseConfig`): when the
action dependence has stayed within its tolerance of 1.0 for its window after the warm-up, it
prints a warning to stderr (once per episode; again after z was used in between), puts
``diag/latent_collapse`` (true / false after the warm-up) and the warning text (``warnings``)
into the metrics row, marks the progress bar and the loss curve's panel, and hands the trainer
the record for ``summary.json`` (:meth:`CollapseWatch.report`).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from .clips import load_clips
from .configs import LatentCollapseConfig, RegularizerConfig
from .data.synthetic import make_sprite_clips
from .run_folder import read_metrics

__all__ = ["latent_diagnostics", "TrainDiagnostics", "CollapseWatch", "held_out_clips", "plot_diagnostics",
           "DIAG_KEYS"]

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
        if callable(getattr(reg, "posterior", None)):
            # noisy: how much of z the training noise drowns. SNR = mean over dims of the
            # variance of mu across clips over the mean posterior variance; below ~1 a sampled z
            # is mostly noise and the predictor learns to ignore it (README, method options).
            mu, logvar = reg.posterior(model.idm(states))
            noise_var = logvar.float().exp().mean(0)
            out["diag/posterior_sigma"] = float(noise_var.sqrt().mean())
            out["diag/posterior_snr"] = float((mu.float().var(0, unbiased=False) / noise_var).mean())
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


# What each regularizer's strength is called, for the warning's advice.
_STRENGTH_KEYS = {"noisy": ("beta", "lower"), "sparse": ("l_l1", "lower"), "discrete": ("num_codes", "raise")}


class CollapseWatch:
    """Judges each diagnostics row of a run for a collapsed latent (the module docstring);
    ``observe(step, row)`` returns the keys to add to the row, ``report()`` the summary record.

    ``stream``: where the warning goes (stderr: the run's output, apart from the progress bar
    on stdout). ``prime(rows)`` replays a resumed run's earlier rows quietly, so the summary
    covers the whole run; a collapse still holding after the resume is announced again in the
    new process's output."""

    def __init__(self, cfg: LatentCollapseConfig, total_steps: int, regularizer: RegularizerConfig | None = None,
                 stream=None):
        self.cfg, self.total_steps, self.regularizer = cfg, total_steps, regularizer
        self.stream = stream
        self.judged_from = math.ceil(cfg.warmup * total_steps)  # first step whose measurement counts
        self.recent: list[tuple[int, float, float, float]] = []  # (step, dependence, l1_own, l1_other)
        self.episodes: list[dict] = []  # {"from_step", "to_step"}: to_step None while it holds
        self.holding = self.announced = False
        self.has_latent = None  # unknown until a row says (a deterministic model has no z to collapse)

    def prime(self, rows: list[dict]) -> None:
        for r in rows:
            if "diag/action_dependence" in r:
                self.observe(int(r["step"]), r, quiet=True)
        self.announced = False

    def observe(self, step: int, row: dict, quiet: bool = False) -> dict:
        if "diag/action_dependence" not in row:
            return {}
        self.has_latent = "diag/z_var_mean" in row  # latent_diagnostics: only models with an IDM
        if not self.has_latent or step < self.judged_from:
            return {}
        dep = float(row["diag/action_dependence"])
        self.recent = (self.recent + [(step, dep, float(row["diag/l1_own"]), float(row["diag/l1_other"]))])
        self.recent = self.recent[-self.cfg.window:]
        holds = (len(self.recent) == self.cfg.window
                 and all(abs(d - 1.0) <= self.cfg.tolerance for _, d, _, _ in self.recent))
        out: dict = {"diag/latent_collapse": holds}
        if holds and not self.holding:
            self.episodes.append({"from_step": self.recent[0][0], "to_step": None})
        if not holds and self.holding:
            self.episodes[-1]["to_step"] = step
            if not quiet:
                print(f"fastlam: the latent action is used again at step {step} (action dependence x{dep:.4f}); "
                      f"the collapse held from step {self.episodes[-1]['from_step']}",
                      file=self.stream or sys.stderr, flush=True)
        if holds and not self.announced and not quiet:
            text = self.warning(step)
            print(text, file=self.stream or sys.stderr, flush=True)
            out["warnings"] = [text]
            self.announced = True
        if not holds:
            self.announced = False
        self.holding = holds
        return out

    def warning(self, step: int) -> str:
        _, dep, own, other = self.recent[-1]
        c = self.cfg
        reg = self.regularizer
        kind = reg.kind if reg is not None else None
        advice = "lower the regularizer's strength"
        if kind in _STRENGTH_KEYS:
            key, way = _STRENGTH_KEYS[kind]
            advice = f"{way} model.regularizer.{key} (now {getattr(reg, key)!r}, kind {kind})"
        bar = "!" * 78
        return "\n".join([
            bar,
            f"WARNING: LATENT COLLAPSE at step {step}: the predictor ignores the latent action z.",
            f"  Held-out one-step L1 with the IDM's own z {own:.4f}, with other clips' z {other:.4f}: action "
            f"dependence x{dep:.4f}, within {c.tolerance:g} of 1.0 for the last {c.window} measurements "
            f"(steps {self.recent[0][0]}-{step}; judged after step {self.judged_from}).",
            "  What it means: the world model predicts as if there were no actions, so z holds nothing a",
            "  controller or a probe can use (the probes of z will read the shuffled floor).",
            f"  What to try: {advice}; train longer (a small predictor first learns to copy s_t and only",
            "  then uses z); check that the frozen encoder shows the move (the study report's encoder probe).",
            "  Thresholds: latent_collapse.tolerance / .window / .warmup in the run config.",
            bar])

    def report(self) -> dict | None:
        """The ``summary.json`` record: None when nothing was judged (no diagnostics rows, or a
        deterministic model, which has no latent to collapse)."""
        if not self.has_latent:
            return None
        c = self.cfg
        return {"detected": bool(self.episodes), "holds_at_end": self.holding, "episodes": self.episodes,
                "criterion": {"tolerance": c.tolerance, "window": c.window, "warmup": c.warmup,
                              "judged_from_step": self.judged_from},
                "last_measurements": [{"step": s, "action_dependence": d, "l1_own": o, "l1_other": t}
                                      for s, d, o, t in self.recent]}


class TrainDiagnostics:
    """Holds the fixed held-out batch's states; ``__call__(model, step)`` returns the ``diag/*``
    row, with the collapse verdict of :attr:`collapse` when ``step`` is given.

    The states are encoded once, lazily on the first call (a ``pca`` pixel encoder is fitted
    on the first *training* batch, so encoding earlier would fit it on this batch instead).
    """

    def __init__(self, video: torch.Tensor, collapse: CollapseWatch | None = None):
        self.video = video
        self.states: torch.Tensor | None = None
        self.collapse = collapse

    @classmethod
    def for_config(cls, cfg, num_clips: int = 8) -> "TrainDiagnostics":
        """For a run of ``cfg``; a resumed run's earlier rows (its ``metrics.jsonl``, already cut
        back to the checkpoint's step by the trainer) prime the collapse watch."""
        watch = CollapseWatch(cfg.latent_collapse, cfg.steps, cfg.model.regularizer)
        watch.prime(read_metrics(Path(cfg.out_dir) / "metrics.jsonl"))
        return cls(held_out_clips(cfg, num_clips), watch)

    def __call__(self, model, step: int | None = None) -> dict:
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if self.states is None:
                self.states = model.encode(self.video.to(device)).float()
                self.video = None
            row = latent_diagnostics(model, self.states)
        if step is not None and self.collapse is not None:
            row.update(self.collapse.observe(step, row))
        return row

    def finish(self) -> dict | None:
        """At the end of the run: the collapse record for ``summary.json``, and, when the run ends
        collapsed, a last line in its output (the warning may have scrolled away long before)."""
        if self.collapse is None:
            return None
        report = self.collapse.report()
        if report is not None and report["holds_at_end"]:
            print(f"WARNING: the run ended with its latent action collapsed (since step "
                  f"{report['episodes'][-1]['from_step']}): summary.json latent_collapse has the numbers",
                  file=self.collapse.stream or sys.stderr, flush=True)
        return report


def progress_postfix(row: dict) -> dict:
    """Short progress-bar fields from a metrics row with ``diag/*`` keys."""
    out = {}
    if "diag/action_dependence" in row:
        out["dep"] = f"{row['diag/action_dependence']:.3f}"
    if "diag/codes_used" in row:
        out["codes"] = str(row["diag/codes_used"])
    if row.get("diag/latent_collapse"):
        out["z"] = "COLLAPSED"
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
    collapsed = [r["step"] for r in rows if r.get("diag/latent_collapse")]
    if collapsed:  # the panel says it in red, not only the curve's flatness
        ax.set_title(f"LATENT COLLAPSE (z ignored; from step {collapsed[0]}), last dependence x{dep:.3f}", color="red")
    else:
        ax.set_title(f"latent use (last action dependence x{dep:.3f})")
    ax.legend()
    return True
