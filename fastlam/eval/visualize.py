"""Watching latent actions: decoded rollouts, action transfer and sampled actions.

``python -m fastlam.eval visualize --checkpoint LAM --decoder DECODER --data SRC --out DIR``
writes, for held-out clips:

- ``rollouts_<i>.mp4/.gif`` and ``rollouts.png``: rows ground truth | decoded ground truth |
  teacher-forced prediction | open-loop rollout from s_0 with the inferred z | with z = 0 |
  with z from another clip (shuffled). The gap between "decoded ground truth" and the
  predictions is the world model's error; the gap between the inferred-z rollout and the
  z = 0 / shuffled rows is what the latent action does.
- ``transfer.mp4/.gif/.png``: the paper's transfer strip: clip A, clip B, B rolled out with its
  own z, and B rolled out with **A's** z (A's action applied to B's scene).
- ``samples.png/.gif``: latent actions sampled from the model's prior (N(0, I), the codebook,
  or Langevin on the sparse energy) applied open-loop to one start state.

Frames are decoded by a :class:`~fastlam.models.decoder.StateDecoder` trained with
``python -m fastlam.train_decoder``; the PNG contact sheets show one frame per time step.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..drawing import SCALE, canvas, to_uint8  # SCALE: re-exported from its former home
from ..rollouts import encode_batched, has_latents, rollout, rollout_rows, shuffled, teacher_forced  # noqa: F401
from .sampling import sample_latents


@torch.no_grad()
def transfer_rows(model, decoder, video_a: torch.Tensor, video_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The transfer strip for pairs (A_i, B_i): A's inferred z drives a rollout of B's scene."""
    if not has_latents(model):
        raise ValueError("checkpoint: a 'deterministic' model has no latent actions to transfer")
    s_a, s_b = encode_batched(model, video_a), encode_batched(model, video_b)
    z_a, z_b = model.infer_actions(states=s_a), model.infer_actions(states=s_b)
    return {"clip A": video_a.float().cpu(), "clip B": video_b.float().cpu(),
            "B, own z": decoder.frames(rollout(model, s_b[:, :1], z_b)),
            "B, A's z": decoder.frames(rollout(model, s_b[:, :1], z_a))}


@torch.no_grad()
def sample_rows(model, decoder, video: torch.Tensor, n: int, generator: torch.Generator,
                langevin_iterations: int = 200) -> dict[str, torch.Tensor]:
    """``n`` rollouts of the first clip's start state, each with sampled latent actions
    (one independent sample per step) from the model's prior."""
    states = encode_batched(model, video[:1])
    T = states.shape[1]
    z = sample_latents(model, n * (T - 1), generator=generator, langevin_iterations=langevin_iterations)
    z = z.view(n, T - 1, -1).to(states.dtype)
    out = decoder.frames(rollout(model, states[:, :1].expand(n, -1, -1, -1), z))
    rows = {"ground truth": video[:1].float().cpu()}
    rows.update({f"sample {k}": out[k : k + 1] for k in range(n)})
    return rows


# ---- pictures and videos ----------------------------------------------------------------------
def contact_sheet(rows, png: str | Path, *, title: str | None = None, stride: int | None = None) -> Path:
    """PNG with one labelled row per (label, video (3, F, H, W)); one frame every ``stride``
    frames (default: every second frame = one per time step of a tubelet-2 encoder)."""
    rows = list(rows.items()) if isinstance(rows, dict) else list(rows)
    stride = stride or 2
    pics = [(label, [to_uint8(v[:, f]) for f in range(0, v.shape[1], stride)]) for label, v in rows]
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    canvas(pics, title).save(png)
    return png


def _animation(rows, title: str | None) -> list[np.ndarray]:
    rows = list(rows.items()) if isinstance(rows, dict) else list(rows)
    frames = min(v.shape[1] for _, v in rows)
    return [np.asarray(canvas([(label, [to_uint8(v[:, f])]) for label, v in rows],
                              f"{title}  frame {f}" if title else f"frame {f}"))
            for f in range(frames)]


def write_gif(rows, path: str | Path, *, title: str | None = None, fps: float = 4.0) -> Path:
    from PIL import Image

    imgs = [Image.fromarray(a) for a in _animation(rows, title)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return path


def write_mp4(rows, path: str | Path, *, title: str | None = None, fps: int = 4) -> Path | None:
    """H.264 MP4 with PyAV (None when PyAV is not installed: the GIF and PNG are still written)."""
    try:
        import av
    except ImportError:
        return None
    frames = _animation(rows, title)
    h, w = frames[0].shape[:2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = w - w % 2, h - h % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # deterministic bytes
        for a in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a[: stream.height, : stream.width]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_all(rows, out: Path, stem: str, title: str) -> dict:
    files = {"png": str(contact_sheet(rows, out / f"{stem}.png", title=title)),
             "gif": str(write_gif(rows, out / f"{stem}.gif", title=title))}
    mp4 = write_mp4(rows, out / f"{stem}.mp4", title=title)
    if mp4 is not None:
        files["mp4"] = str(mp4)
    return files


def visualize(model, decoder, video: torch.Tensor, out: str | Path, *, samples: int = 4, seed: int = 0) -> dict:
    """Write every visualisation for ``video`` (B >= 2 clips) into ``out``; returns the file list."""
    out = Path(out)
    kind = model.cfg.regularizer.kind if hasattr(model, "cfg") else "?"
    files: dict = {"rollouts": [], "regularizer": kind}
    rows = rollout_rows(model, decoder, video)
    files["rollouts_sheet"] = str(contact_sheet({f"{k}": v[0] for k, v in rows.items()},
                                                out / "rollouts.png", title=f"{kind} LAM: clip 0, one frame per step"))
    for i in range(video.shape[0]):
        files["rollouts"].append(write_all({k: v[i] for k, v in rows.items()}, out, f"rollouts_{i}",
                                           f"{kind} LAM, clip {i}"))
    if has_latents(model) and video.shape[0] >= 2:
        tr = transfer_rows(model, decoder, video[:1], video[1:2])
        files["transfer"] = write_all({k: v[0] for k, v in tr.items()}, out, "transfer",
                                      "A's latent actions applied to B")
        if kind in ("noisy", "discrete", "sparse") and samples > 0:
            g = torch.Generator().manual_seed(seed)
            sr = sample_rows(model, decoder, video, samples, g)
            files["samples"] = write_all({k: v[0] for k, v in sr.items()}, out, "samples",
                                         f"sampled latent actions ({kind} prior) from one start state")
    return files
