"""What benchmarks/bench_train_step.py times: the model sizes and kernel backends, one training
step written out part by part (marks for the step-time split), the inputs, and the FLOPs of a
clip (:mod:`fastlam.flops` for the LAM, :func:`ac_flops` here for V-JEPA 2-AC). The timing loop,
batch search and command line are in bench_train_step.py, the result files in
train_step_report.py."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from fastlam.flops import (FORWARD, FORWARD_BACKWARD, allowed_pairs, block_flops, lam_train_flops_per_clip,
                           linear_flops)
from fastlam.models.ac_predictor import ACPredictor, ACPredictorConfig
from fastlam.models.blocks import AdaLNZeroBlock, Block
from fastlam.models.encoder import EncoderConfig
from fastlam.models.lam import LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig


# ----------------------------------------------------------------------------- sizes


@dataclass
class Size:
    name: str
    kind: str  # "lam" | "ac"
    model: object  # ModelConfig | ACPredictorConfig
    batch: int | None  # None: the largest batch the reference fits (CUDA only)
    modes: tuple = ("states", "video")
    ac_frames: int = 8  # ac: frames of states per clip (T + 1)
    ac_rollout: int = 2
    note: str = ""


def paper_config(regularizer: str = "noisy") -> ModelConfig:
    """configs/paper_vitl.yaml's model."""
    return ModelConfig(
        encoder=EncoderConfig(size="large", patch_size=16, tubelet=2, frame_causal=True),
        idm=TransformerConfig(width=512, depth=6, heads=8),
        predictor=TransformerConfig(width=1024, depth=24, heads=16),
        regularizer=RegularizerConfig(kind=regularizer),
        action_dim=128, image_size=256, frames=16, loss="l1",
    )


def tiny_config(regularizer: str = "sparse") -> ModelConfig:
    """16 px, patch 8 (4 tokens per frame), T = 3 steps, one-layer parts of width 32 (head dim
    16), 16-d actions: the Triton interpreter runs every kernel launch in Python, so the CPU
    tier keeps launches few and tiles small."""
    return ModelConfig(
        encoder=EncoderConfig(size="tiny", patch_size=8, tubelet=2, width=32, depth=1, heads=2),
        idm=TransformerConfig(width=32, depth=1, heads=2),
        predictor=TransformerConfig(width=32, depth=1, heads=2),
        regularizer=RegularizerConfig(kind=regularizer),
        action_dim=16, image_size=16, frames=6, loss="l1",
    )


SIZES = {
    "paper": Size("paper", "lam", paper_config(), None,
                  note="encoder-included (video) mode at half the cached-states batch"),
    "ac": Size("ac", "ac", ACPredictorConfig(), None, modes=("states",),
               note="V-JEPA 2-AC's encoder is a frozen ViT-g: cached states only"),
    # The sparse regularizer is deterministic, so every backend's losses can be compared past
    # the first step (the noisy one draws its noise from different generators per backend).
    "tiny": Size("tiny", "lam", tiny_config(), 2),
}


@dataclass(frozen=True)
class Variant:
    attention: str
    ops: str
    compiled: bool = False


VARIANTS = {
    "fastlam_triton": Variant("triton", "triton"),
    "reference": Variant("torch", "torch"),
    "reference_compiled": Variant("torch", "torch", compiled=True),
    "flex_attention": Variant("flex", "torch"),
    "fastlam_compiled": Variant("triton", "triton", compiled=True),
}


# ----------------------------------------------------------------------------- FLOP count


def ac_flops(model: ACPredictor, frames: int, rollout_steps: int, dense: bool = False, passes=FORWARD) -> float:
    """Forward FLOPs of one clip of V-JEPA 2-AC's loss: teacher forcing over ``frames - 1``
    frames plus the rollout's extra predictor calls (on 2..rollout_steps frames); with
    ``passes=FORWARD_BACKWARD`` forward + backward, counted as fastlam.flops counts the LAM."""
    cfg = model.cfg
    N = cfg.grid_size * cfg.grid_size
    k = cfg.cond_tokens

    def call(t: int) -> float:
        f = linear_flops(t * N, model.predictor_embed) + linear_flops(t * N, model.predictor_proj)
        f += linear_flops(t, model.action_encoder) + linear_flops(t, model.state_encoder)
        if cfg.use_extrinsics:
            f += linear_flops(t, model.extrinsics_encoder)
        mask = "frame_causal" if cfg.frame_causal else "full"
        return passes[0] * f + sum(block_flops(b, 1, t * (N + k), allowed_pairs(t, N + k, mask, dense), passes=passes)
                                   for b in model.predictor_blocks)

    return call(frames - 1) + sum(call(n + 1) for n in range(1, rollout_steps))


def train_flops_per_clip(model, size: Size, mode: str) -> float:
    """Model FLOPs of one training clip: frozen encoder forward (video mode), forward + backward
    of the trainable parts (fastlam.flops' convention: backward 2 x the forward for linear
    layers, 2.5 x for attention)."""
    if size.kind == "ac":
        return ac_flops(model, size.ac_frames, size.ac_rollout, passes=FORWARD_BACKWARD)
    return lam_train_flops_per_clip(model, with_encoder=mode == "video")


def tokens_per_clip(size: Size) -> int:
    """Tokens the clip is made of: T x N encoder states (LAM) or the predictor's frames x 258
    tokens (AC, action and proprio tokens included)."""
    if size.kind == "ac":
        return (size.ac_frames - 1) * (size.model.grid_size ** 2 + size.model.cond_tokens)
    cfg = size.model
    return (cfg.frames // cfg.encoder.tubelet) * (cfg.image_size // cfg.encoder.patch_size) ** 2


# ----------------------------------------------------------------------------- timing


class PhaseClock:
    """Named time marks within a step: CUDA events on GPU (read after one final sync), wall
    clock on CPU (where every op is synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((name, ev))
        else:
            self.marks.append((name, time.perf_counter()))

    def times_ms(self) -> dict:
        """Milliseconds of every mark since the first one (call after a synchronize)."""
        if not self.marks:
            return {}
        name0, t0 = self.marks[0]
        if self.cuda:
            return {name: t0.elapsed_time(ev) for name, ev in self.marks}
        return {name: (t - t0) * 1e3 for name, t in self.marks}


def _on_grad(clock: PhaseClock, t: torch.Tensor, name: str) -> None:
    if t is not None and t.requires_grad:
        t.register_hook(lambda g: (clock.mark(name), None)[1])


def lam_step(model: LatentActionWorldModel, opts, params, batch, mode: str, clock: PhaseClock, autocast):
    """One training step, written out part by part so the clock can mark the boundaries; the
    loss is that of ``model.forward`` (tests/test_train_step_bench.py checks it)."""
    clock.mark("start")
    with autocast:
        if mode == "video":
            states = model.encode(batch)
        else:
            states = batch
        clock.mark("encoder")
        if model.idm is not None:
            h = model.idm(states)
            clock.mark("idm_fwd")
            reg = model.regularizer(h)
            z, reg_loss = reg.z, reg.loss
        else:
            h = None
            z, reg_loss = None, states.new_zeros((), dtype=torch.float32)
            clock.mark("idm_fwd")
        clock.mark("reg_fwd")
        pred = model.predict(states[:, :-1], z)
        clock.mark("predictor_fwd")
        pred_loss = model.loss_fn(pred.flatten(1, 2), states[:, 1:].flatten(1, 2))
        loss = pred_loss + reg_loss
    clock.mark("loss_fwd")
    # Backward order: losses -> predictor -> regularizer -> IDM (the autograd engine runs the
    # later-created nodes first, so each hook closes its part up to about one layer).
    _on_grad(clock, pred, "loss_bwd")
    _on_grad(clock, z, "predictor_bwd")
    _on_grad(clock, h, "reg_bwd")
    return _backward_and_step(loss, opts, params, clock)


def lam_phases(t: dict) -> dict:
    """Part times (ms) from :func:`lam_step`'s marks; they sum to the step."""
    bwd_end = t["backward"]
    loss_bwd = t.get("loss_bwd", bwd_end)
    pred_bwd = t.get("predictor_bwd", loss_bwd)
    reg_bwd = t.get("reg_bwd", pred_bwd)
    return {
        "encoder": t["encoder"],
        "idm": (t["idm_fwd"] - t["encoder"]) + (bwd_end - reg_bwd),
        "predictor": (t["predictor_fwd"] - t["reg_fwd"]) + (pred_bwd - loss_bwd),
        "losses": (t["reg_fwd"] - t["idm_fwd"]) + (t["loss_fwd"] - t["predictor_fwd"])
        + (loss_bwd - t["loss_fwd"]) + (reg_bwd - pred_bwd),
        "optimizer": t["optimizer"] - bwd_end,
    }


def ac_step(model: ACPredictor, opts, params, batch, mode: str, clock: PhaseClock, autocast, rollout: int = 2):
    clock.mark("start")
    states, actions, proprio = batch
    with autocast:
        loss = model.loss(states, actions, proprio, rollout_steps=rollout).loss
    return _backward_and_step(loss, opts, params, clock)


def ac_phases(t: dict) -> dict:
    return {"encoder": 0.0, "idm": 0.0, "predictor": t["backward"], "losses": 0.0,
            "optimizer": t["optimizer"] - t["backward"]}


def _backward_and_step(loss: torch.Tensor, opts, params, clock: PhaseClock) -> torch.Tensor:
    """The end of every timed step, marked "backward" and "optimizer": backward, then
    fastlam.train's update (global grad-norm clip at 1.0, Muon + AdamW, grads set to None)."""
    loss.backward()
    clock.mark("backward")
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for o in opts:
        o.step()
        o.zero_grad(set_to_none=True)
    clock.mark("optimizer")
    return loss.detach()


# ----------------------------------------------------------------------------- models and data


def build_model(size: Size, device: torch.device, seed: int, state: dict | None = None):
    torch.manual_seed(seed)
    with torch.device(device):
        model = ACPredictor(size.model) if size.kind == "ac" else LatentActionWorldModel(copy.deepcopy(size.model))
    if state is not None:
        model.load_state_dict(state)
    model.check_video_range = False  # as fastlam.train sets it: no per-step [0, 1] check (a host sync)
    return model.train()


def make_batch(size: Size, mode: str, batch: int, device: torch.device, seed: int):
    """Random inputs, the same for every backend: unit-variance states (what a LayerNorm'd
    encoder output looks like) or uniform [0, 1] video."""
    g = torch.Generator().manual_seed(seed + 1)
    if size.kind == "ac":
        cfg = size.model
        shape = (batch, size.ac_frames, cfg.grid_size ** 2, cfg.embed_dim)
        states = torch.randn(shape, generator=g)
        actions = torch.randn(batch, size.ac_frames - 1, cfg.action_dim, generator=g)
        proprio = torch.randn(batch, size.ac_frames, cfg.action_dim, generator=g)
        return tuple(t.to(device) for t in (states, actions, proprio))
    cfg = size.model
    if mode == "video":
        return torch.rand(batch, cfg.encoder.in_chans, cfg.frames, cfg.image_size, cfg.image_size, generator=g).to(device)
    width = cfg.encoder.dims()[0]
    T, N = cfg.frames // cfg.encoder.tubelet, (cfg.image_size // cfg.encoder.patch_size) ** 2
    return torch.randn(batch, T, N, width, generator=g).to(device)


def compile_regions(model) -> None:
    """Regional compilation of the reference: each transformer block (compiled once for all
    identical blocks), the prediction loss and the regularizer."""
    for m in model.modules():
        if isinstance(m, (Block, AdaLNZeroBlock)):
            m.compile(dynamic=False)
    for name in ("loss_fn", "regularizer"):
        m = getattr(model, name, None)
        if isinstance(m, torch.nn.Module):
            m.compile(dynamic=False)
