"""Cycle consistency / transfer of latent actions: A -> B -> A (lam-spec.md section 5).

1. infer z_A on clip A;
2. apply z_A to clip B: ``B_hat_{t+1} = p(B_0..t, z_A_t)``;
3. re-infer the action from B's prediction: ``z'_t = g(B_t, B_hat_{t+1})``;
4. apply z' back to A: ``A_hat_{t+1} = p(A_0..t, z'_t)`` and measure its error against A.

If latent actions are actions (camera motion, an object moving) and not a description of A's
future, z' carries the same action and the cycle error is close to A's own error
``|p(A_0..t, z_A_t) - A_{t+1}|``; the ratio cycle / own is reported (paper, Kinetics: x1.07
to x1.34).
"""
from __future__ import annotations

import torch

from .common import check_states, encode_batched, has_latents, regularizer_kind, summary


@torch.no_grad()
def cycle_errors(model, states_a: torch.Tensor, states_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(own, cycle) L1 errors, each (B, T-1), for states of clips A and B of equal shape."""
    if not has_latents(model):
        raise ValueError("model: the 'deterministic' reference has no latent actions to transfer")
    check_states(states_a, "states_a")
    check_states(states_b, "states_b")
    if states_a.shape != states_b.shape:
        raise ValueError(f"states_b: expected the shape of states_a {tuple(states_a.shape)}, got {tuple(states_b.shape)}")
    B, T = states_a.shape[:2]
    target = states_a[:, 1:].float()
    z_a = model.infer_actions(states=states_a)
    own = (model.predict(states_a[:, :-1], z_a).float() - target).abs().mean(dim=(-2, -1))
    b_hat = model.predict(states_b[:, :-1], z_a)
    # Every transition as its own two-step clip (B_t, B_hat_{t+1}): the IDM sees one pair.
    pairs = torch.stack([states_b[:, :-1], b_hat.to(states_b.dtype)], dim=2).flatten(0, 1)
    z_back = model.infer_actions(states=pairs).view(B, T - 1, -1)
    cyc = (model.predict(states_a[:, :-1], z_back).float() - target).abs().mean(dim=(-2, -1))
    return own, cyc


@torch.no_grad()
def cycle_transfer(model, video_a: torch.Tensor | None = None, video_b: torch.Tensor | None = None, *,
                   states_a: torch.Tensor | None = None, states_b: torch.Tensor | None = None,
                   batch_size: int = 8) -> dict:
    """A -> B -> A cycle on video (or state) pairs; B defaults to A rolled by one clip."""
    if (video_a is None) == (states_a is None):
        raise ValueError("cycle_transfer: pass exactly one of video_a or states_a")
    if states_a is None:
        states_a = encode_batched(model, video_a, batch_size)
        if video_b is not None:
            states_b = encode_batched(model, video_b, batch_size)
    if states_b is None:
        if states_a.shape[0] < 2:
            raise ValueError("video_a: pass at least 2 clips (B defaults to A rolled by one clip) or give video_b")
        states_b = states_a.roll(1, dims=0)
    own, cyc = cycle_errors(model, states_a, states_b)
    o, c = summary(own), summary(cyc)
    return {"regularizer": regularizer_kind(model), "clips": int(states_a.shape[0]),
            "latent_l1": {"own": o, "cycle": c, "ratio": c["mean"] / max(o["mean"], 1e-12)}}
