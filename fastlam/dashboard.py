"""Live training dashboard: TensorBoard (and optionally Weights & Biases) next to metrics.jsonl.

Off by default (``logging.tensorboard: true`` turns it on); metrics.jsonl is always written
and stays the record of a run. Every row the trainer logs goes to the dashboard as scalars
(lists such as ``lr`` become ``lr/0``, ``lr/1``); a row's ``warnings`` (such as the diagnostics'
latent-collapse warning) go to TensorBoard's Text tab and W&B alerts. With ``logging.decoder`` set to a pixel
decoder (``python -m fastlam.train_decoder``'s ``final/``), every ``logging.image_every`` steps
a strip of a fixed clip is added: ground truth | decoded ground truth | teacher-forced
prediction | open-loop rollout with the inferred z | with z = 0.

TensorBoard event files go to ``out_dir/tensorboard``: ``tensorboard --logdir runs/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Lives with every run configuration; imported here under its old name (fastlam.dashboard.LoggingConfig).
from .configs import LoggingConfig
from .drawing import canvas, to_uint8
from .models.decoder import StateDecoder
from .rollouts import rollout_rows

__all__ = ["Dashboard", "LoggingConfig"]


def _flatten(row: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)):
            out[key] = float(v)
        elif isinstance(v, (list, tuple)):
            out.update(_flatten({str(i): x for i, x in enumerate(v)}, key + "/"))
        elif isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
    return out


class Dashboard:
    """Scalars and image strips to TensorBoard / W&B; a no-op when both are off or off-rank."""

    def __init__(self, cfg: LoggingConfig, out_dir: str | Path, run_config: dict | None = None,
                 enabled: bool = True, log_every: int = 10):
        self.cfg = cfg
        self.tb = self.wb = self.decoder = None
        self.image_every = cfg.image_every or 10 * log_every
        self._clip: torch.Tensor | None = None
        if not enabled:
            return
        cfg.check()
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard (the viz extra)

            self.tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
        if cfg.wandb:
            import wandb  # optional: wandb

            self.wb = wandb.init(project=cfg.wandb_project, dir=str(out_dir), config=run_config or {},
                                 name=Path(out_dir).name, resume="allow")
        if cfg.decoder is not None:
            self.decoder = StateDecoder.from_checkpoint(cfg.decoder)

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wb is not None

    def scalars(self, step: int, row: dict) -> None:
        if not self.active:
            return
        flat = {k: v for k, v in _flatten(row).items() if k != "step"}
        if self.tb is not None:
            for k, v in flat.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(flat, step=step)
        for text in row.get("warnings", ()):  # e.g. a latent collapse (fastlam.diagnostics): as text, not a scalar
            self.warn(step, text)

    def warn(self, step: int, text: str) -> None:
        """A warning where the dashboard shows text: TensorBoard's Text tab (tag ``warnings``),
        a W&B alert."""
        if self.tb is not None:
            self.tb.add_text("warnings", f"```\n{text}\n```", step)  # fenced: kept as printed
        if self.wb is not None:
            self.wb.alert(title=f"fastlam warning at step {step}", text=text)

    def remember_clip(self, video: torch.Tensor) -> None:
        """Keep the first clip seen as the fixed clip of every strip."""
        if self.decoder is not None and self._clip is None:
            self._clip = video[:2].detach().float().cpu().clone()

    @torch.no_grad()
    def strip(self, step: int, model) -> None:
        if self.decoder is None or self._clip is None or step % self.image_every:
            return
        was = model.training
        dev = next(model.parameters()).device
        try:
            rows = rollout_rows(model.eval(), self.decoder.to(dev), self._clip.to(dev))
        finally:
            model.train(was)
        keep = [k for k in rows if "shuffled" not in k]
        img = np.asarray(canvas([(k, [to_uint8(rows[k][0][:, f].cpu()) for f in range(0, rows[k].shape[2], 2)])
                                 for k in keep], f"step {step}"))
        if self.tb is not None:
            self.tb.add_image("rollout_strip", img, step, dataformats="HWC")
        if self.wb is not None:
            import wandb  # optional: wandb

            self.wb.log({"rollout_strip": wandb.Image(img)}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()
