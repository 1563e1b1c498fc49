"""Held-out worlds with known actions, for proving that latent actions are actions.

Unlike :func:`~fastlam.data.synthetic.make_sprite_clips` (the learning test's flat sprites),
these clips sit on *real* video backgrounds: still frames of the sample videos
(``data/samples``, read with PyAV), or procedural textures when those are absent (so tests
never need them). Every clip belongs to a *group* (the background it was cut from), so probes
can be fitted on some backgrounds and scored on others.

Two worlds, one step of ``tubelet`` still frames per action (the encoder's time step):

* ``agent``: one agent (a bright square with a dark cross, so its shape differs from the
  distractors) moved by the action ``a_t = p_{t+1} - p_t`` (integer pixels ``(dy, dx)``,
  each in ``[-max_step, max_step]``, drawn among the moves that keep it inside the frame),
  among ``distractors`` plain squares that each move by their own random moves.
* ``pan``: the camera moves by the action over a background larger than the frame (the
  picture shifts by ``-a_t``); the distractors move on their own in screen coordinates.

``max_step`` below the encoder's patch gives sub-patch moves, above it multi-patch moves.
Scene cuts for the leakage splice: :func:`other_scene` pairs each clip with a clip of another
group (pass both to :func:`fastlam.eval.leakage.future_leakage`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dataset import list_videos
from .video import VideoDecodeError, clip_to_tensor, probe_video, read_clip

__all__ = ["World", "make_world", "load_backgrounds", "procedural_backgrounds", "other_scene", "WORLD_KINDS"]

WORLD_KINDS = ("agent", "pan")


@dataclass
class World:
    """``video`` float (n, 3, steps * tubelet, size, size) in [0, 1]; ``actions`` float
    (n, steps - 1, 2) (dy, dx) pixels; ``distractor_moves`` float (n, steps - 1, k, 2);
    ``groups`` long (n,) background id; ``positions`` long (n, steps, 2) agent / camera."""

    video: torch.Tensor
    actions: torch.Tensor
    distractor_moves: torch.Tensor
    groups: torch.Tensor
    positions: torch.Tensor
    kind: str
    background_source: str


def procedural_backgrounds(num: int, size: int, seed: int = 0) -> torch.Tensor:
    """``num`` smooth coloured textures (num, 3, size, size) in [0, 1]: upsampled noise at three
    scales, so they have edges and blobs like natural images but need no file."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(num, 3, size, size)
    for cells, weight in ((4, 0.5), (8, 0.3), (size // 4, 0.2)):
        noise = torch.rand(num, 3, cells, cells, generator=g)
        out += weight * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    lo, hi = out.amin((1, 2, 3), keepdim=True), out.amax((1, 2, 3), keepdim=True)
    return 0.15 + 0.6 * (out - lo) / (hi - lo).clamp_min(1e-6)


def load_backgrounds(source: str | None, size: int, per_video: int = 4, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Still frames (num, 3, size, size) in [0, 1]: ``per_video`` frames spread over each video
    of ``source`` (centre crops), or ``4 * per_video`` procedural textures when ``source`` is
    None, missing or unreadable. Returns (frames, description of where they came from)."""
    if source:
        try:
            frames = []
            for path in list_videos(source):
                try:
                    dur = probe_video(path).duration_s or 1.0
                    fps = per_video / max(dur * 0.9, 1e-3)
                    clip = read_clip(path, num_frames=per_video, fps=fps, size=(size, size), crop="center")
                    frames.append(clip_to_tensor(clip).permute(1, 0, 2, 3))  # (per_video, 3, size, size)
                except VideoDecodeError:
                    continue
            if frames:
                # Dimmed a little so the bright agent stays the most salient object.
                return 0.85 * torch.cat(frames), f"{len(frames)} videos of {source}"
        except (ImportError, ValueError):
            pass
    return procedural_backgrounds(4 * per_video, size, seed), "procedural textures"


def _feasible(pos: torch.Tensor, low: int, high: int, max_step: int, g: torch.Generator) -> torch.Tensor:
    """Uniform integer moves (n, 2) in [-max_step, max_step] with pos + move in [low, high]."""
    lo = torch.clamp(low - pos, min=-max_step)
    hi = torch.clamp(high - pos, max=max_step)
    u = torch.rand(pos.shape, generator=g)
    return lo + torch.floor(u * (hi - lo + 1)).long().clamp_max(hi - lo)


def _walk(n: int, steps: int, low: int, high: int, max_step: int, g: torch.Generator):
    pos = torch.randint(low, high + 1, (n, 2), generator=g)
    path, moves = [pos], []
    for _ in range(steps - 1):
        m = _feasible(pos, low, high, max_step, g)
        pos = pos + m
        path.append(pos)
        moves.append(m)
    return torch.stack(path, 1), torch.stack(moves, 1)


def _paste(frames: torch.Tensor, pos: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor) -> None:
    """In place: draw ``patch`` (n, 3, s, s) where ``mask`` (n, 1, s, s) at ``pos`` (n, steps, 2)
    into frames (n, steps, 3, H, W)."""
    s = patch.shape[-1]
    for i in range(frames.shape[0]):
        for t in range(frames.shape[1]):
            y, x = int(pos[i, t, 0]), int(pos[i, t, 1])
            win = frames[i, t, :, y:y + s, x:x + s]
            win.copy_(torch.where(mask[i], patch[i], win))


def make_world(kind: str, num_clips: int, *, steps: int = 8, tubelet: int = 2, size: int = 64,
               agent: int = 8, max_step: int = 4, distractors: int = 2, distractor_size: int = 6,
               flicker: float = 0.03, backgrounds: torch.Tensor | None = None, background_source: str = "",
               seed: int = 0) -> World:
    """Clips of world ``kind`` (``agent`` or ``pan``, see the module docstring)."""
    if kind not in WORLD_KINDS:
        raise ValueError(f"kind: expected one of {WORLD_KINDS}, got {kind!r}")
    for name, value, least in (("num_clips", num_clips, 1), ("steps", steps, 2), ("tubelet", tubelet, 1),
                               ("size", size, 8), ("agent", agent, 2), ("max_step", max_step, 1),
                               ("distractors", distractors, 0), ("distractor_size", distractor_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")
    if agent >= size or distractor_size >= size:
        raise ValueError(f"agent ({agent}) and distractor_size ({distractor_size}) must be smaller than size ({size})")
    if not 0.0 <= flicker <= 0.2:
        raise ValueError(f"flicker: expected a brightness amplitude in [0, 0.2], got {flicker!r}")
    g = torch.Generator().manual_seed(int(seed))
    n = num_clips
    # A pan needs room to move: the background is the frame plus the largest total excursion.
    canvas = size + 2 * max_step * (steps - 1) if kind == "pan" else size
    if backgrounds is None:
        backgrounds = procedural_backgrounds(16, canvas, seed)
        background_source = background_source or "procedural textures"
    if backgrounds.dim() != 4 or backgrounds.shape[1] != 3:
        raise ValueError(f"backgrounds: expected (num, 3, H, W) in [0, 1], got {tuple(backgrounds.shape)}")
    if backgrounds.shape[-1] != canvas or backgrounds.shape[-2] != canvas:
        backgrounds = F.interpolate(backgrounds, size=(canvas, canvas), mode="bilinear", align_corners=False)
    groups = torch.randint(0, backgrounds.shape[0], (n,), generator=g)
    # Random flips give each clip its own view of its background (still the same group).
    flip = torch.rand(n, generator=g) < 0.5
    bg = backgrounds[groups]
    bg = torch.where(flip[:, None, None, None], bg.flip(-1), bg)

    if kind == "pan":
        lim = canvas - size
        positions, actions = _walk(n, steps, 0, lim, max_step, g)
        frames = torch.stack([torch.stack([bg[i, :, int(positions[i, t, 0]):int(positions[i, t, 0]) + size,
                                               int(positions[i, t, 1]):int(positions[i, t, 1]) + size]
                                           for t in range(steps)]) for i in range(n)])
    else:
        positions, actions = _walk(n, steps, 0, size - agent, max_step, g)
        frames = bg[:, None].expand(n, steps, 3, size, size).clone()

    d_moves = torch.zeros(n, steps - 1, distractors, 2)
    d_colour = 0.35 + 0.3 * torch.rand(n, distractors, 3, generator=g)
    for k in range(distractors):
        d_pos, d_mv = _walk(n, steps, 0, size - distractor_size, max_step, g)
        d_moves[:, :, k] = d_mv.float()
        patch = d_colour[:, k, :, None, None].expand(n, 3, distractor_size, distractor_size)
        _paste(frames, d_pos, patch, torch.ones(n, 1, distractor_size, distractor_size, dtype=torch.bool))
    if kind == "agent":
        colour = 0.75 + 0.25 * torch.rand(n, 3, generator=g)
        colour.scatter_(1, torch.randint(0, 3, (n, 1), generator=g), 1.0)
        patch = colour[:, :, None, None].expand(n, 3, agent, agent).clone()
        mid = agent // 2
        patch[:, :, mid, :] = 0.05  # the dark cross: a shape no distractor has
        patch[:, :, :, mid] = 0.05
        _paste(frames, positions, patch, torch.ones(n, 1, agent, agent, dtype=torch.bool))

    video = frames.repeat_interleave(tubelet, dim=1).permute(0, 2, 1, 3, 4)  # (n, 3, frames, H, W)
    if flicker > 0:  # per raw frame, so even still frames of one step differ a little
        video = video + flicker * (2 * torch.rand(n, 1, steps * tubelet, 1, 1, generator=g) - 1)
    return World(video.clamp(0, 1).contiguous(), actions.float(), d_moves, groups, positions, kind,
                 background_source)


def other_scene(groups: torch.Tensor) -> torch.Tensor:
    """Indices ``j`` (n,) with ``groups[j] != groups[i]`` where possible: the clip that supplies
    the scene after a cut (a splice with the same background would not be a scene cut)."""
    n = groups.shape[0]
    order = torch.argsort(groups, stable=True)
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(math.ceil(n / 2))
    return partner
