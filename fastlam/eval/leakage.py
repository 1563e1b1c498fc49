"""Future leakage: the scene-cut splice test (lam-spec.md section 5).

Clip A is cut at time step ``cut`` and continued with clip B, so the transition
``cut - 1 -> cut`` jumps to another scene. A latent action that only describes *what moved*
cannot explain a scene cut, so the error of that transition rises (the paper: x2.0 to x2.5).
A latent that copies the future explains the cut as well as any transition: its ratio stays
near 1. The ratio ``error(cut) / error(no cut)`` of the same transition is the leakage
measure (higher = less leakage).

Errors are in latent space (L1 over tokens and channels) and, as in the paper, in LPIPS through
a pixel decoder: ``lpips`` is reported when a ``decoder`` (``fastlam.models.decoder``, trained
with ``python -m fastlam.train_decoder``) and an ``lpips_fn`` (``fastlam.nn.lpips.LPIPS`` with
weights from local files) are passed in; nothing is downloaded, and without them the result
says LPIPS was not computed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .common import check_video, encode_batched, latents, regularizer_kind, summary


def splice(video_a: torch.Tensor, video_b: torch.Tensor, cut_step: int, tubelet: int) -> torch.Tensor:
    """Frames of A for time steps < ``cut_step``, then B's frames from the same time on."""
    check_video(video_a, "video_a")
    check_video(video_b, "video_b")
    if video_a.shape != video_b.shape:
        raise ValueError(f"video_b: expected the shape of video_a {tuple(video_a.shape)}, got {tuple(video_b.shape)}")
    steps = video_a.shape[2] // tubelet
    if not 1 <= cut_step < steps:
        raise ValueError(f"cut_step: expected 1..{steps - 1} (time steps of {tubelet} frames), got {cut_step}")
    f = cut_step * tubelet
    return torch.cat([video_a[:, :, :f], video_b[:, :, f:]], dim=2)


@torch.no_grad()
def transition_errors(model, states: torch.Tensor, step: int) -> torch.Tensor:
    """L1 error (B,) of predicting ``states[:, step + 1]`` from frames <= step with the IDM latents."""
    z = latents(model, states)
    pred = model.predict(states[:, : step + 1], None if z is None else z[:, : step + 1])[:, step]
    return (pred.float() - states[:, step + 1].float()).abs().mean(dim=(-2, -1))


@torch.no_grad()
def future_leakage(model, video_a: torch.Tensor, video_b: torch.Tensor, *, cut_step: int | None = None,
                   tubelet: int | None = None, batch_size: int = 8, decoder=None,
                   lpips_fn: Callable | None = None) -> dict:
    """Error of the transition into time step ``cut_step`` with and without a scene cut there.

    ``video_b`` supplies the scene after the cut (e.g. ``video_a`` rolled by one along the
    batch). ``cut_step`` defaults to the middle time step.
    """
    tubelet = tubelet or model.cfg.encoder.tubelet
    steps = video_a.shape[2] // tubelet
    cut_step = steps // 2 if cut_step is None else cut_step
    spliced = splice(video_a, video_b, cut_step, tubelet)
    s_a = encode_batched(model, video_a, batch_size)
    s_cut = encode_batched(model, spliced, batch_size)
    err_plain = transition_errors(model, s_a, cut_step - 1)
    err_cut = transition_errors(model, s_cut, cut_step - 1)
    plain, cut = summary(err_plain), summary(err_cut)
    out = {"regularizer": regularizer_kind(model), "cut_step": cut_step, "clips": int(video_a.shape[0]),
           "latent_l1": {"no_cut": plain, "cut": cut, "ratio": cut["mean"] / max(plain["mean"], 1e-12)}}
    if decoder is not None and lpips_fn is not None:
        out["lpips"] = _lpips_pair(model, decoder, lpips_fn, s_a, s_cut, video_a, spliced, cut_step, tubelet)
    else:
        out["lpips"] = None
        out["lpips_note"] = ("not computed: needs a pixel decoder and LPIPS weights available locally "
                             "(fastlam downloads nothing)")
    return out


def _lpips_pair(model, decoder, lpips_fn, s_a, s_cut, video_a, spliced, cut_step, tubelet):
    def one(states, video):
        z = latents(model, states)
        pred = model.predict(states[:, :cut_step], None if z is None else z[:, :cut_step])[:, -1:]
        # Decoded after the true past (the decoder is frame-causal): the cut step's frames only.
        ctx = torch.cat([states[:, :cut_step], pred.to(states.dtype)], dim=1)
        frames = decoder(ctx)[:, :, cut_step * tubelet:]  # (B, 3, tubelet, H, W) in [0, 1]
        target = video[:, :, cut_step * tubelet:(cut_step + 1) * tubelet]
        return torch.as_tensor(lpips_fn(frames, target)).float().flatten()

    plain, cut = summary(one(s_a, video_a)), summary(one(s_cut, spliced))
    return {"no_cut": plain, "cut": cut, "ratio": cut["mean"] / max(plain["mean"], 1e-12)}
