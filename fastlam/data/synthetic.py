"""Generated clips whose true actions are known: sprites moved by random 2-D actions.

Each clip shows square sprites on a flat background. Time step ``t`` spans ``tubelet`` raw
frames (one tubelet of the encoder) during which the sprites stand still; between steps every
action sprite moves by the same action ``a_t = p_{t+1} - p_t`` (integer pixels, ``(dy, dx)``,
each in ``[-max_step, max_step]``). With one sprite this is an agent moved by its controls;
with several it is a camera panning over a scene, the kind of action a latent action model
learns from in-the-wild video (a single code for "everything moved by a").

Why several sprites and ``wrap``: with one sprite and moves smaller than an encoder patch, a
latent action can describe the *next frame* (where the sprite lands inside its patch) as well
as the *action*, and a small model prefers the former; the displacement is then not linearly
readable from the latents. When many sprites at different sub-patch positions share one move,
the displacement is the only compact description of the transition. ``wrap=True`` makes the
frame a torus (sprites leaving one side enter the other), so every action is possible from
every state and the label is always exactly the displacement.

Staying inside the frame (``wrap=False``): actions are drawn uniformly from the moves that keep
every action sprite inside the frame (a sprite at the left edge cannot move further left), so
the recorded action is always exactly the displacement; there is no clipping or bouncing that
would make the picture disagree with the label.

Distractors, so that an inverse-dynamics model cannot recover the action by copying pixels or
by the global frame difference alone: the background brightness flickers independently in
every raw frame (uniform in ``[-flicker, +flicker]`` around the clip's background level), and
a second sprite of another colour wanders with its own random moves that are not the action.
The action sprite is drawn on top, so it is always fully visible.
"""
from __future__ import annotations

import torch

__all__ = ["make_sprite_clips"]


def _feasible_moves(pos: torch.Tensor, limit: int, max_step: int, gen: torch.Generator):
    """Uniform integer moves (n, 2) in [-max_step, max_step] keeping every ``pos + move`` in
    [0, limit]; ``pos`` is (n, sprites, 2)."""
    low = torch.clamp(-pos.amin(1), min=-max_step)
    high = torch.clamp(limit - pos.amax(1), max=max_step)
    u = torch.rand(low.shape, generator=gen)
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
    num_sprites: int = 1,
    wrap: bool = False,
    seed: int = 0,
    return_positions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips of sprites moved by known actions.

    Returns ``video`` float32 ``(num_clips, 3, steps * tubelet, size, size)`` in ``[0, 1]``
    and ``actions`` float32 ``(num_clips, steps - 1, 2)`` holding ``(dy, dx)`` in pixels
    (``actions[:, t]`` moves the sprites from step ``t`` to ``t + 1``). ``num_sprites``
    action sprites (each its own bright colour) all move by the action; ``wrap`` makes the
    frame a torus. With ``return_positions=True`` also the sprites' top-left corners, long
    ``(num_clips, steps, 2)`` for one sprite, ``(num_clips, steps, num_sprites, 2)`` for more.
    """
    for name, value, least in (("num_clips", num_clips, 1), ("steps", steps, 2),
                               ("tubelet", tubelet, 1), ("size", size, 1),
                               ("sprite", sprite, 1), ("max_step", max_step, 0),
                               ("num_sprites", num_sprites, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if sprite >= size:
        raise ValueError(f"sprite ({sprite}) must be smaller than size ({size}) so it can move")
    if not 0.0 <= float(flicker) <= 0.5:
        raise ValueError(f"flicker must be in [0, 0.5] (brightness amplitude), got {flicker!r}")

    gen = torch.Generator().manual_seed(int(seed))
    n, limit = num_clips, size - sprite
    frames = steps * tubelet

    def walk(count):
        """Positions (n, steps, count, 2) of ``count`` sprites sharing one move per step."""
        if wrap:
            pos = torch.randint(0, size, (n, count, 2), generator=gen)
            moves = torch.randint(-max_step, max_step + 1, (n, steps - 1, 2), generator=gen)
            offsets = torch.cat([moves.new_zeros(n, 1, 2), moves.cumsum(1)], 1)
            return (pos[:, None] + offsets[:, :, None]) % size, moves
        pos = torch.randint(0, limit + 1, (n, count, 2), generator=gen)
        path, moves = [pos], []
        for _ in range(steps - 1):
            move = _feasible_moves(pos, limit, max_step, gen)
            pos = pos + move[:, None]
            path.append(pos)
            moves.append(move)
        return torch.stack(path, 1), torch.stack(moves, 1)

    positions, moves = walk(num_sprites)  # (n, steps, sprites, 2), (n, steps - 1, 2)

    # Colours kept apart so "which object is the sprite" is never ambiguous: a dark
    # background, a bright sprite, a mid-grey-ish distractor in a different hue range.
    background = 0.1 + 0.2 * torch.rand(n, 3, generator=gen)
    sprite_colour = 0.6 + 0.4 * torch.rand(n, num_sprites, 3, generator=gen)
    brightest = torch.randint(0, 3, (n, num_sprites), generator=gen)
    sprite_colour.scatter_(2, brightest[..., None], 1.0)
    level = background[:, :, None] + flicker * (2 * torch.rand(n, 1, frames, generator=gen) - 1)
    video = level.clamp(0.0, 1.0)[..., None, None]  # broadcast; `where` materialises it

    coords = torch.arange(size)

    def box_mask(pos):  # pos (n, steps, 2) -> bool (n, 1, frames, size, size)
        pos = pos.repeat_interleave(tubelet, dim=1)
        # Offsets modulo the size: the same box without wrap (pos + sprite <= size there),
        # a box split across the edges with it.
        rows = (coords - pos[..., :1]) % size < sprite  # (n, frames, size)
        cols = (coords - pos[..., 1:]) % size < sprite
        return (rows[..., :, None] & cols[..., None, :])[:, None]

    if distractor:
        other_positions, _ = walk(1)
        other_colour = sprite_colour[:, 0].roll(1, dims=1) * 0.6  # another hue, dimmer
        video = torch.where(box_mask(other_positions[:, :, 0]), other_colour[:, :, None, None, None],
                            video)
    for i in range(num_sprites):
        video = torch.where(box_mask(positions[:, :, i]), sprite_colour[:, i, :, None, None, None], video)
    video = video.expand(n, 3, frames, size, size).contiguous()  # no-op unless both were off

    actions = moves.to(torch.float32)
    if return_positions:
        return video, actions, positions[:, :, 0] if num_sprites == 1 else positions
    return video, actions
