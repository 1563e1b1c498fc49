"""Cycle consistency / transfer of latent actions: A -> B -> A (lam-spec.md section 5).

1. infer z_A on clip A;
2. apply z_A to clip B: ``B_hat_{t+1} = p(B_0..t, z_A_t)``;
3. re-infer the action from B's prediction: ``z'_t = g(B_t, B_hat_{t+1})``;
4. apply z' back to A: ``A_hat_{t+1} = p(A_0..t, z'_t)`` and measure its error against A.

If latent actions are actions (camera motion, an object moving) and not a description of A's
future, z' carries the same action and the cycle error is close to A's own error
``|p(A_0..t, z_A_t) - A_{t+1}|``; the ratio cycle / own is reported (paper, Kinetics: x1.07
to x1.34). With a pixel ``decoder`` and an ``lpips_fn`` (see ``fastlam.nn.lpips``) the same
two predictions are also decoded and compared with A's real frames in LPIPS, the paper's metric.
"""
from __future__ import annotations

import torch

from .common import check_states, encode_batched, has_latents, regularizer_kind, summary


@torch.no_grad()
def cycle_predictions(model, states_a: torch.Tensor, states_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A's next-state predictions (B, T-1, N, D) with its own latents and with the cycled ones."""
    if not has_latents(model):
        raise ValueError("model: the 'deterministic' reference has no latent actions to transfer")
    check_states(states_a, "states_a")
    check_states(states_b, "states_b")
    if states_a.shape != states_b.shape:
        raise ValueError(f"states_b: expected the shape of states_a {tuple(states_a.shape)}, got {tuple(states_b.shape)}")
    B, T = states_a.shape[:2]
    z_a = model.infer_actions(states=states_a)
    own = model.predict(states_a[:, :-1], z_a)
    b_hat = model.predict(states_b[:, :-1], z_a)
    # Every transition as its own two-step clip (B_t, B_hat_{t+1}): the IDM sees one pair.
    pairs = torch.stack([states_b[:, :-1], b_hat.to(states_b.dtype)], dim=2).flatten(0, 1)
    z_back = model.infer_actions(states=pairs).view(B, T - 1, -1)
    return own, model.predict(states_a[:, :-1], z_back)


@torch.no_grad()
def cycle_errors(model, states_a: torch.Tensor, states_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(own, cycle) L1 errors, each (B, T-1), for states of clips A and B of equal shape."""
    own, cyc = cycle_predictions(model, states_a, states_b)
    target = states_a[:, 1:].float()
    err = lambda pred: (pred.float() - target).abs().mean(dim=(-2, -1))
    return err(own), err(cyc)


@torch.no_grad()
def cycle_transfer(model, video_a: torch.Tensor | None = None, video_b: torch.Tensor | None = None, *,
                   states_a: torch.Tensor | None = None, states_b: torch.Tensor | None = None,
                   batch_size: int = 8, decoder=None, lpips_fn=None) -> dict:
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
    out = {"regularizer": regularizer_kind(model), "clips": int(states_a.shape[0]),
           "latent_l1": {"own": o, "cycle": c, "ratio": c["mean"] / max(o["mean"], 1e-12)}}
    if decoder is not None and lpips_fn is not None and video_a is not None:
        out["lpips"] = _lpips_cycle(model, decoder, lpips_fn, states_a, states_b, video_a)
    else:
        out["lpips"] = None
        out["lpips_note"] = ("not computed: needs --decoder and local LPIPS weights (--lpips-backbone); "
                             "fastlam downloads nothing")
    return out


def _lpips_cycle(model, decoder, lpips_fn, states_a, states_b, video_a) -> dict:
    """LPIPS of A's decoded predictions (own latents / cycled latents) against A's real frames
    of time steps 1..T-1; the decoder is frame-causal, so step t's frames see s_0 and the
    predictions up to t only."""
    own, cyc = cycle_predictions(model, states_a, states_b)
    tub = video_a.shape[2] // states_a.shape[1]
    target = video_a[:, :, tub:].float()

    def score(pred):
        frames = decoder(torch.cat([states_a[:, :1], pred.to(states_a.dtype)], dim=1))[:, :, tub:]
        return torch.as_tensor(lpips_fn(frames.float(), target)).float().flatten()

    o, c = summary(score(own)), summary(score(cyc))
    return {"own": o, "cycle": c, "ratio": c["mean"] / max(o["mean"], 1e-12)}
