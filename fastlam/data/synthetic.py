"""Generated clips whose true actions are known: a sprite moved by random 2-D actions.

Each clip shows a square sprite of one colour on a flat background. Time step ``t`` spans
``tubelet`` raw frames (one tubelet of the encoder) during which the sprite stands still at
``p_t``; between steps it moves by the action ``a_t = p_{t+1} - p_t`` (integer pixels,
``(dy, dx)``, each in ``[-max_step, max_step]``).

Staying inside the frame: actions are drawn uniformly from the moves that keep the whole
sprite inside the frame (a sprite at the left edge cannot move further left), so the recorded
action is always exactly the displacement; there is no clipping or bouncing that would make
the picture disagree with the label.

Distractors, so that an inverse-dynamics model cannot recover the action by copying pixels or
by the global frame difference alone: the background brightness flickers independently in
every raw frame (uniform in ``[-flicker, +flicker]`` around the clip's background level), and
a second sprite of another colour wanders with its own random moves that are not the action.
The action sprite is drawn on top, so it is always fully visible.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

__all__ = ["make_sprite_clips"]


def _feasible_moves(pos: torch.Tensor, limit: int, max_step: int, gen: torch.Generator):
    """Uniform integer moves in [-max_step, max_step] keeping ``pos + move`` in [0, limit]."""
    low = torch.clamp(-pos, min=-max_step)
    high = torch.clamp(limit - pos, max=max_step)
    u = torch.rand(pos.shape, generator=gen)
    return low + torch.floor(u * (high - low + 1)).long().clamp_max(high - low)


def make_sprite_clips(
    num_clips: int,
    *,
    steps: int = 8,
    tubelet: int = 2,
    size: int = 32,
    sprite: int = 6,
    max_step: int = 3,
    flicker: float = 0.3,
    distractor: bool = True,
    seed: int = 0,
    return_positions: bool = False,
) -> Union[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Clips of a sprite moved by known actions.

    Returns ``video`` float32 ``(num_clips, 3, steps * tubelet, size, size)`` in ``[0, 1]``
    and ``actions`` float32 ``(num_clips, steps - 1, 2)`` holding ``(dy, dx)`` in pixels
    (``actions[:, t]`` moves the sprite from step ``t`` to ``t + 1``). With
    ``return_positions=True`` also the sprite's top-left corners, long
    ``(num_clips, steps, 2)``.
    """
    for name, value, least in (("num_clips", num_clips, 1), ("steps", steps, 2),
                               ("tubelet", tubelet, 1), ("size", size, 1),
                               ("sprite", sprite, 1), ("max_step", max_step, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if sprite >= size:
        raise ValueError(f"sprite ({sprite}) must be smaller than size ({size}) so it can move")
    if not 0.0 <= float(flicker) <= 0.5:
        raise ValueError(f"flicker must be in [0, 0.5] (brightness amplitude), got {flicker!r}")

    gen = torch.Generator().manual_seed(int(seed))
    n, limit = num_clips, size - sprite
    frames = steps * tubelet

    def walk():
        pos = torch.randint(0, limit + 1, (n, 2), generator=gen)
        path, moves = [pos], []
        for _ in range(steps - 1):
            move = _feasible_moves(pos, limit, max_step, gen)
            pos = pos + move
            path.append(pos)
            moves.append(move)
        return torch.stack(path, 1), torch.stack(moves, 1)

    positions, moves = walk()  # (n, steps, 2), (n, steps - 1, 2)

    # Colours kept apart so "which object is the sprite" is never ambiguous: a dark
    # background, a bright sprite, a mid-grey-ish distractor in a different hue range.
    background = 0.1 + 0.2 * torch.rand(n, 3, generator=gen)
    sprite_colour = 0.6 + 0.4 * torch.rand(n, 3, generator=gen)
    sprite_colour[torch.arange(n), torch.randint(0, 3, (n,), generator=gen)] = 1.0
    level = background[:, :, None] + flicker * (2 * torch.rand(n, 1, frames, generator=gen) - 1)
    video = level.clamp(0.0, 1.0)[..., None, None]  # broadcast; `where` materialises it

    coords = torch.arange(size)

    def box_mask(pos):  # pos (n, steps, 2) -> bool (n, 1, frames, size, size)
        pos = pos.repeat_interleave(tubelet, dim=1)
        rows = (coords >= pos[..., :1]) & (coords < pos[..., :1] + sprite)  # (n, frames, size)
        cols = (coords >= pos[..., 1:]) & (coords < pos[..., 1:] + sprite)
        return (rows[..., :, None] & cols[..., None, :])[:, None]

    if distractor:
        other_positions, _ = walk()
        other_colour = sprite_colour.roll(1, dims=1) * 0.6  # another hue, dimmer
        video = torch.where(box_mask(other_positions), other_colour[:, :, None, None, None],
                            video)
    video = torch.where(box_mask(positions), sprite_colour[:, :, None, None, None], video)
    video = video.expand(n, 3, frames, size, size).contiguous()  # no-op unless both were off

    actions = moves.to(torch.float32)
    if return_positions:
        return video, actions, positions
    return video, actions
