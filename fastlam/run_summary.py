"""What a finished run leaves beside its weights: the loss curve (``loss_curve.png``, with the
latent-use diagnostics when they were logged), ``summary.json`` (rank 0) and, under DeepSpeed,
the bytes each rank held (``memory.json``). ``train_decoder`` draws its curve here too."""
from __future__ import annotations

import json
from pathlib import Path

from fastlam import distributed as fdist
from fastlam import run_folder
from fastlam.diagnostics import plot_diagnostics


def write_summary(summary: dict, out: Path, metrics_file: Path, last_loss: float | None, dataset) -> None:
    """Complete ``summary`` from the run folder and write ``out/summary.json`` (rank 0 only).

    A resumed run reports the whole run's first loss (and, when it had no step left to train,
    its last), not the first of this process; sources that skip bad inputs add their report."""
    rows = [r for r in run_folder.read_metrics(metrics_file) if "loss" in r]
    if rows:
        summary["first_loss"] = rows[0]["loss"]
        summary["last_loss"] = last_loss if last_loss is not None else rows[-1]["loss"]
    png = plot_losses(metrics_file, out / "loss_curve.png")
    summary["loss_curve"] = str(png) if png else None
    if hasattr(dataset, "report"):
        summary["data_report"] = dataset.report()
        summary["bad_inputs"] = len(dataset.bad_files)  # skipped, each listed in data_report
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def plot_losses(metrics_file: Path, png: Path) -> Path | None:
    import matplotlib  # optional (the plotting stack): loaded only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None

    has_diag = any("diag/l1_own" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_diag else 1, figsize=(13 if has_diag else 7, 4), squeeze=False)
    ax = axes[0, 0]
    if has_diag:
        plot_diagnostics(axes[0, 1], rows)
    steps = [r["step"] for r in rows]
    # The total is drawn wide and pale beneath its terms: when reg_loss is small, loss and
    # pred_loss coincide, and a thin line on top of the other hid one of them.
    styles = {"loss": dict(linewidth=4.0, alpha=0.35, zorder=1), "pred_loss": dict(linewidth=1.4, zorder=2),
              "reg_loss": dict(linewidth=1.4, linestyle="--", zorder=2)}
    for key in ("loss", "pred_loss", "reg_loss", "l1", "lpips"):  # l1 / lpips: train_decoder's terms
        if all(key in r for r in rows):
            ax.plot(steps, [r[key] for r in rows], label=key, **styles.get(key, {}))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"fastlam training: {metrics_file.parent.name}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png



def write_memory(out: Path, env: fdist.DistEnv, runner) -> None:
    """Bytes each rank holds after its first optimizer step (``memory.json``)."""
    per_rank = fdist.all_gather_objects(env, runner.memory_report())
    if env.is_main:
        (out / "memory.json").write_text(json.dumps({"zero_stage": runner.stage, "world_size": env.world_size,
                                                     "per_rank": per_rank}, indent=2))
