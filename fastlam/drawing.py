"""Pictures of clips: uint8 frames and labelled grids of frames.

Shared by the training dashboard (:mod:`fastlam.dashboard`, its rollout strips) and the
evaluations (:mod:`fastlam.eval.visualize`, contact sheets and animations), so it sits below
both. Pillow comes with matplotlib, a dependency of fastlam.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["SCALE", "to_uint8", "canvas"]

SCALE = 2  # upscale factor of written frames: 64 px clips are too small to look at


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H*SCALE, W*SCALE, 3) uint8."""
    img = (frame.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return img.repeat(SCALE, axis=0).repeat(SCALE, axis=1)


def canvas(rows: list[tuple[str, list[np.ndarray]]], title: str | None, label_w: int = 150) -> Image.Image:
    """Grid image: one labelled row per entry, frames side by side."""
    h, w = rows[0][1][0].shape[:2]
    cols = max(len(f) for _, f in rows)
    top = 18 if title else 0
    img = Image.new("RGB", (label_w + cols * (w + 2), top + len(rows) * (h + 2)), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    if title:
        draw.text((4, 3), title, fill="black", font=font)
    for r, (label, frames) in enumerate(rows):
        y = top + r * (h + 2)
        draw.text((4, y + h // 2 - 6), label, fill="black", font=font)
        for c, f in enumerate(frames):
            img.paste(Image.fromarray(f), (label_w + c * (w + 2), y))
    return img
