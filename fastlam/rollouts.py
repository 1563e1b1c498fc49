"""Open-loop and teacher-forced rollouts of a latent action world model, and the decoded rows
of the rollout comparison.

Used by the training dashboard (its rollout strip, :mod:`fastlam.dashboard`) and by the
evaluations (:mod:`fastlam.eval.visualize`, :mod:`fastlam.eval.common` re-export these names), so
it sits in the training library, below both.
"""
from __future__ import annotations

import torch

__all__ = ["check_states", "check_video", "device_of", "encode_batched", "has_latents", "rollout", "rollout_rows",
           "shuffled", "teacher_forced"]


def has_latents(model) -> bool:
    return getattr(model, "idm", True) is not None


def check_video(video: torch.Tensor, name: str = "video") -> None:
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or not video.is_floating_point():
        got = (tuple(video.shape), video.dtype) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{name}: expected a float (B, 3, frames, H, W) tensor in [0, 1], got {got}")


def check_states(states: torch.Tensor, name: str = "states", min_steps: int = 2) -> None:
    if not isinstance(states, torch.Tensor) or states.dim() != 4 or states.shape[1] < min_steps:
        got = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
        raise ValueError(f"{name}: expected (B, T >= {min_steps}, N, D) states, got {got}")


@torch.no_grad()
def encode_batched(model, video: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """States (B, T, N, D) of ``video`` (B, 3, frames, H, W), ``batch_size`` clips at a time."""
    check_video(video)
    device = device_of(model)
    return torch.cat([model.encode(video[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, video.shape[0], batch_size)])


def device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def rollout(model, start: torch.Tensor, actions: torch.Tensor | None, steps: int | None = None) -> torch.Tensor:
    """Open-loop rollout: ``s_hat_{t+1} = p(s_0, s_hat_1..t, z_t)`` from ``start`` (B, 1, N, D).

    Returns (B, 1 + steps, N, D) with the real start state first. ``actions`` (B, steps, A), or
    None for a model without latent actions (then ``steps`` is required).
    """
    if start.dim() != 4 or start.shape[1] != 1:
        raise ValueError(f"start: expected a (B, 1, N, D) start state, got {tuple(start.shape)}")
    steps = actions.shape[1] if actions is not None else steps
    if steps is None or steps < 1:
        raise ValueError("steps: give actions (B, steps, A) or steps >= 1")
    ctx = start
    for t in range(steps):
        z = None if actions is None else actions[:, : t + 1]
        nxt = model.predict(ctx, z)[:, -1:]
        ctx = torch.cat([ctx, nxt.to(ctx.dtype)], dim=1)
    return ctx


@torch.no_grad()
def teacher_forced(model, states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
    """(B, T, N, D): s_0, then p(s_0..t, z_t) for t < T-1 (every step sees the true past)."""
    return torch.cat([states[:, :1], model.predict(states[:, :-1], actions).to(states.dtype)], dim=1)


def shuffled(z: torch.Tensor) -> torch.Tensor:
    """Another clip's latents for every clip (a roll along the batch; needs B >= 2)."""
    if z.shape[0] < 2:
        raise ValueError("clips: shuffled latents need at least 2 clips")
    return z.roll(1, dims=0)


@torch.no_grad()
def rollout_rows(model, decoder, video: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decoded videos (B, 3, F, H, W) for each row of the rollout comparison."""
    states = encode_batched(model, video)
    T = states.shape[1]
    rows = {"ground truth": video.float().cpu(), "decoded ground truth": decoder.frames(states)}
    if not has_latents(model):
        rows["teacher-forced (no z)"] = decoder.frames(teacher_forced(model, states, None))
        rows["rollout (no z)"] = decoder.frames(rollout(model, states[:, :1], None, T - 1))
        return rows
    z = model.infer_actions(states=states)
    rows["teacher-forced, inferred z"] = decoder.frames(teacher_forced(model, states, z))
    rows["rollout, inferred z"] = decoder.frames(rollout(model, states[:, :1], z))
    rows["rollout, z = 0"] = decoder.frames(rollout(model, states[:, :1], torch.zeros_like(z)))
    if states.shape[0] >= 2:
        rows["rollout, shuffled z"] = decoder.frames(rollout(model, states[:, :1], shuffled(z)))
    return rows
