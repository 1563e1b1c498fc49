"""End-to-end training-step benchmark of the latent action world model: what fastlam's kernels
buy a whole step (IDM + predictor forward, losses, backward, optimizer), not one op.

Backends (same model weights, same data, same seed; switched with ``fastlam.ops.use_backend``):

- ``fastlam_triton``: fastlam's Triton attention (RoPE, frame mask from indices) and fused
  losses / regularizers / AdaLN.
- ``reference``: plain PyTorch: SDPA with the dense boolean mask the frame-causal predictor
  needs, unfused losses, regularizers and AdaLN (the ops' references).
- ``reference_compiled``: the reference with every transformer block, the prediction loss and
  the regularizer under ``torch.compile`` (regional compilation: one compile serves all 24
  identical blocks, which keeps compile time inside the suite's budget).
- ``fastlam_compiled``: fastlam's kernels with the same regional ``torch.compile`` (the custom
  ops trace without graph breaks, so the elementwise work between them fuses).
- ``flex_attention``: FlexAttention (compiled, block mask) for the attention alone; everything
  else as the reference. FlexAttention has no backward on CPU, so it is skipped there.

Sizes: ``paper`` (frozen V-JEPA 2 ViT-L encoder, ViT-L predictor 24 x 1024 x 16 heads, IDM
6 x 512, T = 8 steps x 256 tokens, 128-d noisy latent actions; ``states`` mode from cached
encoder states at the largest batch the reference fits, ``video`` mode with the encoder
forward included at half that batch), ``ac`` (V-JEPA 2-AC's predictor, 24 x 1024 x 16
heads over 8 frames of 256 patch + 2 action/proprio tokens = 258-token frames, ViT-g-sized
1408-d cached states, teacher forcing + 2-step rollout L1 as V-JEPA 2-AC trains) and
``tiny`` (CPU; what CI runs, see tests/test_train_step_bench.py).

Step time is split into encoder / idm / predictor / losses / optimizer with CUDA events (wall
clock on CPU): forward boundaries between the model's parts, backward boundaries from
gradient hooks on the parts' outputs (the gradient of the predictions marks the end of the
losses' backward, of the latent actions the end of the predictor's, of the IDM head's output
the end of the regularizer's), so the parts sum to the step. The regularizer counts as a
loss. For ``ac`` the loss is inline in the predictor (V-JEPA 2-AC's code path): only
predictor / optimizer are split.

Model FLOPs (for MFU) are counted analytically from the modules' shapes by fastlam.flops (the
model the training log's MFU uses too; :func:`ac_flops` here for V-JEPA 2-AC): 2 x in x out per token per linear layer (the tubelet conv as a linear),
4 x width per query-key pair the mask allows for attention (QK^T and AV; masked pairs are
not counted), elementwise work not counted; the trainable parts count forward + backward as
3 x forward, the frozen encoder forward only; activation recomputation is not counted. MFU
is against the bf16 matmul peak measured on the device at start-up (``mfu``) and against
the datasheet dense peak (``mfu_datasheet``). Peak memory is ``max_memory_allocated`` over
the timed steps minus what was allocated before the model was built (the input batch).

Writes ``train_step.csv`` / ``train_step.json`` (device, date, commit, versions, notes) and
``train_step.png`` to ``--out`` (default benchmarks/results/train_step/).

    python benchmarks/bench_train_step.py [--sizes paper ac] [--out DIR]   # GPU
    python benchmarks/bench_train_step.py --sizes tiny                     # CPU tier
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# As in tests/conftest.py: without CUDA the Triton kernels can only run under the interpreter,
# which must be switched on before triton is first imported (by fastlam below).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastlam.models.ac_predictor import ACPredictor, ACPredictorConfig  # noqa: E402
from fastlam.models.blocks import AdaLNZeroBlock, Block  # noqa: E402
from fastlam.models.encoder import EncoderConfig  # noqa: E402
from fastlam.models.lam import LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig  # noqa: E402
from fastlam.flops import allowed_pairs, datasheet_bf16_peak, lam_flops  # noqa: E402,F401  (one FLOP model)
from fastlam.flops import block_flops as _block, linear_flops as _linear  # noqa: E402
from fastlam.ops import use_backend  # noqa: E402
from fastlam.optim import OptimConfig, build_optimizers  # noqa: E402

try:  # run as a script (python benchmarks/bench_x.py) or as a module
    from benchmarks._common import allow_many_compiles, git_commit, pyplot_or_none
except ImportError:  # pragma: no cover
    from _common import allow_many_compiles, git_commit, pyplot_or_none

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "train_step"
GPU_SIZES = ("paper", "ac")
# Seconds of budget a compiled run needs at GPU sizes (regional compile of the blocks, loss and
# regularizer, forward and backward, plus the steps).
COMPILE_RESERVE_S = 90


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


def ac_flops(model: ACPredictor, frames: int, rollout_steps: int, dense: bool = False) -> float:
    """Forward FLOPs of one clip of V-JEPA 2-AC's loss: teacher forcing over ``frames - 1``
    frames plus the rollout's extra predictor calls (on 2..rollout_steps frames)."""
    cfg = model.cfg
    N = cfg.grid_size * cfg.grid_size
    k = cfg.cond_tokens

    def call(t: int) -> float:
        f = _linear(t * N, model.predictor_embed) + _linear(t * N, model.predictor_proj)
        f += _linear(t, model.action_encoder) + _linear(t, model.state_encoder)
        if cfg.use_extrinsics:
            f += _linear(t, model.extrinsics_encoder)
        mask = "frame_causal" if cfg.frame_causal else "full"
        return f + sum(_block(b, 1, t * (N + k), allowed_pairs(t, N + k, mask, dense)) for b in model.predictor_blocks)

    return call(frames - 1) + sum(call(n + 1) for n in range(1, rollout_steps))


def train_flops_per_clip(model, size: Size, mode: str) -> float:
    """Model FLOPs of one training clip: frozen encoder forward (video mode), 3 x forward of the
    trainable parts."""
    if size.kind == "ac":
        return 3.0 * ac_flops(model, size.ac_frames, size.ac_rollout)
    from fastlam.flops import lam_train_flops_per_clip

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
    loss.backward()
    clock.mark("backward")
    _optimizer_step(opts, params)
    clock.mark("optimizer")
    return loss.detach()


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
    loss.backward()
    clock.mark("backward")
    _optimizer_step(opts, params)
    clock.mark("optimizer")
    return loss.detach()


def ac_phases(t: dict) -> dict:
    return {"encoder": 0.0, "idm": 0.0, "predictor": t["backward"], "losses": 0.0,
            "optimizer": t["optimizer"] - t["backward"]}


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _optimizer_step(opts, params) -> None:
    # fastlam.train's step: global grad-norm clip at 1.0, Muon + AdamW, grads set to None.
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for o in opts:
        o.step()
        o.zero_grad(set_to_none=True)


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


@dataclass
class RunResult:
    row: dict
    losses: list = field(default_factory=list)


def run_variant(size: Size, mode: str, name: str, batch: int, data, device: torch.device, init_state: dict,
                *, steps: int, warmup: int, seed: int = 0) -> RunResult:
    """Warm up then time ``steps`` training steps of one backend from the shared initial weights.

    Raises what the backend raises (e.g. a backend that cannot run here); the caller records it.
    """
    variant = VARIANTS[name]
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()  # a failed previous run's frames may still hold its model
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base_mem = torch.cuda.memory_allocated()
    model = build_model(size, device, seed, init_state)
    if variant.compiled:
        compile_regions(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opts = build_optimizers(model, OptimConfig())
    step_fn, phases_fn = (ac_step, ac_phases) if size.kind == "ac" else (lam_step, lam_phases)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    losses, clocks = [], []
    with use_backend(attention=variant.attention, ops=variant.ops):
        t0 = time.perf_counter()
        for i in range(warmup + steps):
            if i == warmup:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                warm_s = time.perf_counter() - t0
                t0 = time.perf_counter()
            clock = PhaseClock(device)
            losses.append(step_fn(model, opts, params, data, mode, clock, autocast))
            if i >= warmup:
                clocks.append(clock)
        if cuda:
            torch.cuda.synchronize()
        wall_s = time.perf_counter() - t0
    if warmup == 0:
        warm_s = 0.0
    peak_gb = (torch.cuda.max_memory_allocated() - base_mem) / 2**30 if cuda else None
    marks = [c.times_ms() for c in clocks]
    step_ms = statistics.median(m["optimizer"] for m in marks)
    phases = {k: statistics.median(phases_fn(m)[k] for m in marks) for k in ("encoder", "idm", "predictor",
                                                                               "losses", "optimizer")}
    losses = [float(x) for x in losses]
    flops = train_flops_per_clip(model, size, mode)
    tok = tokens_per_clip(size)
    row = dict(size=size.name, mode=mode, backend=name, batch=batch, steps_timed=steps, step_ms=round(step_ms, 3),
               wall_step_ms=round(wall_s / steps * 1e3, 3), tokens_per_clip=tok,
               tokens_per_s=round(batch * tok / step_ms * 1e3, 1), clips_per_s=round(batch / step_ms * 1e3, 3),
               **{f"{k}_ms": round(v, 3) for k, v in phases.items()},
               peak_mem_gb=None if peak_gb is None else round(peak_gb, 3),
               train_flop_per_clip=_sig(flops), model_tflops=_sig(flops * batch / step_ms / 1e9),
               mfu=None, mfu_datasheet=None,
               steps_run=len(losses), loss_first=losses[0], loss_last=losses[-1], warmup_s=round(warm_s, 2),
               status="ok")
    return RunResult(row, losses)


# ----------------------------------------------------------------------------- GPU helpers


def measured_bf16_peak(n: int = 8192, iters: int = 20) -> float:
    """Best of three timings of an n^3 bf16 matmul (FLOP/s): the MFU denominator."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        torch.mm(a, b, out=c)
    best = 0.0
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2.0 * n ** 3 * iters / (start.elapsed_time(end) / 1e3))
    del a, b, c
    torch.cuda.empty_cache()
    return best


def datasheet_peak() -> float | None:
    """fastlam.flops' table, by the exact device name (an H100 PCIe is not an SXM)."""
    return datasheet_bf16_peak(torch.cuda.get_device_name())


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _nbytes(data) -> int:
    tensors = data if isinstance(data, tuple) else (data,)
    return sum(t.numel() * t.element_size() for t in tensors)


def batch_from_peaks(peaks: dict, free_bytes: float, cap: int = 256, fill: float = 0.9) -> tuple[int, float, float]:
    """(batch, fixed bytes, bytes per clip) from peak memory at two batch sizes ``{b: bytes}``:
    the largest batch whose linear-fit peak stays under ``fill`` of the free memory, a multiple
    of 8 from 16 on, at least 1 and at most ``cap``."""
    (b1, p1), (b2, p2) = sorted(peaks.items())
    per_clip = max((p2 - p1) / (b2 - b1), 1.0)
    fixed = p1 - b1 * per_clip
    b = int((fill * free_bytes - fixed) // per_clip)
    b = max(1, min(cap, b - b % 8 if b >= 16 else b))
    return b, fixed, per_clip


def fit_batch(size: Size, mode: str, device: torch.device, init_state: dict, notes: list, cap: int = 256) -> int:
    """Largest batch the plain reference (the most memory-hungry backend: dense mask, unfused
    ops) fits in ~90% of the device, from a linear fit of its steady-state peak memory (second
    step: the optimizer states exist) at two small batches."""
    total = torch.cuda.get_device_properties(device).total_memory
    peaks = {}
    for b in (2, 4):
        data = make_batch(size, mode, b, device, 0)
        res = run_variant(size, mode, "reference", b, data, device, init_state, steps=1, warmup=1)
        peaks[b] = res.row["peak_mem_gb"] * 2**30 + _nbytes(data)
        del data, res
        torch.cuda.empty_cache()
    b, fixed, per_clip = batch_from_peaks(peaks, total - torch.cuda.memory_allocated(), cap)
    notes.append(f"{size.name}/{mode}: batch {b} from the reference's peak memory "
                 f"({fixed / 2**30:.1f} GiB fixed + {per_clip / 2**30:.2f} GiB per clip, 90% of "
                 f"{total / 2**30:.0f} GiB)")
    return b


# ----------------------------------------------------------------------------- main




def run_size(size: Size, modes, backends, device, args, rows: list, notes: list, t_start: float,
             peak: float | None, sheet: float | None, out: Path, meta: dict) -> None:
    init_state = {k: v.detach().cpu() for k, v in build_model(size, device, args.seed).state_dict().items()}
    batch_states = args.batch or size.batch
    for mode in modes:
        if mode not in size.modes:
            notes.append(f"{size.name}: mode {mode!r} not run ({size.note or 'not part of this size'})")
            continue
        if time.time() - t_start > args.budget_s:
            notes.append(f"time budget reached: skipped {size.name}/{mode}")
            continue
        if device.type == "cuda" and batch_states is None:
            try:
                batch_states = fit_batch(size, "states", device, init_state, notes)
            except Exception as exc:
                notes.append(f"{size.name}: batch search failed ({type(exc).__name__}: {str(exc)[:200]}); using 8")
                batch_states = 8
        batch = batch_states if mode == "states" or args.batch else max(1, batch_states // 2)
        data = make_batch(size, mode, batch, device, args.seed)
        # Compiled runs last: they cost a compile on top of the steps, and a run that would not fit
        # the budget is better skipped than killed by the suite's timeout.
        for name in sorted(backends, key=lambda n: VARIANTS[n].compiled):
            left = args.budget_s - (time.time() - t_start)
            if left <= 0 or (VARIANTS[name].compiled and device.type == "cuda" and left < args.compile_reserve_s):
                notes.append(f"time budget reached: skipped {size.name}/{mode}/{name}")
                continue
            try:
                res = run_variant(size, mode, name, batch, data, device, init_state, steps=args.steps,
                                  warmup=args.warmup, seed=args.seed)
            except Exception as exc:  # one backend failing must not hide the others
                # ValueError: select_backend / use_triton saying this backend cannot run here.
                kind = "out of memory" if _is_oom(exc) else "cannot run here" if isinstance(exc, ValueError) \
                    else "failed"
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                notes.append(f"{size.name}/{mode}/{name} {kind} at batch {batch}: {msg}")
                rows.append(dict(size=size.name, mode=mode, backend=name, batch=batch, status=f"skipped: {msg}"))
                continue
            row = res.row
            if peak:
                row["mfu"] = _sig(row["model_tflops"] * 1e12 / peak)
            if sheet:
                row["mfu_datasheet"] = _sig(row["model_tflops"] * 1e12 / sheet)
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(out, rows, meta, notes, plot_png=not args.no_plot)
        del data
        if device.type == "cuda":
            torch.cuda.empty_cache()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_train_step.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for train_step.json / .csv / .png (default: benchmarks/results/train_step)")
    parser.add_argument("--sizes", nargs="+", default=list(GPU_SIZES), choices=list(SIZES),
                        help="model sizes to time (default: %(default)s; tiny runs on the CPU)")
    parser.add_argument("--modes", nargs="+", default=["states", "video"], choices=["states", "video"],
                        help="states: from precomputed encoder states; video: the frozen encoder runs too "
                             "(default: both)")
    parser.add_argument("--backends", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="kernel backends to compare (default: all)")
    parser.add_argument("--batch", type=int, default=None, help="override the size's batch (default: as large as fits)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per backend (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first, the first compiles (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S", 230)),
                        help="start no new backend run after this many seconds (default: $BENCH_BUDGET_S, else 230)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--compile-reserve-s", type=float, default=COMPILE_RESERVE_S,
                        help="start a compiled backend only with this many seconds of budget left, GPU sizes "
                             "(default: %(default)s)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be >= 1")
    cuda = torch.cuda.is_available()
    gpu_sizes = [s for s in args.sizes if s in GPU_SIZES]
    if gpu_sizes and not cuda:
        print(f"bench_train_step: no CUDA device, the GPU sizes {gpu_sizes} are skipped (run --sizes tiny for "
              "the CPU tier; tests/test_train_step_bench.py runs it in CI)")
        args.sizes = [s for s in args.sizes if s not in GPU_SIZES]
        if not args.sizes:
            return 0
    t_start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    allow_many_compiles()
    notes: list[str] = []
    rows: list[dict] = []
    peak = sheet = None
    if cuda:
        peak = measured_bf16_peak()
        sheet = datasheet_peak()
        print(f"measured bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s", flush=True)
    meta = dict(device=torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
                date=dt.datetime.now(dt.timezone.utc).isoformat(), commit=git_commit(), torch=torch.__version__,
                triton=_triton_version(), dtype="bf16 autocast" if cuda else "fp32",
                measured_bf16_peak_tflops=None if peak is None else round(peak / 1e12, 1),
                datasheet_bf16_peak_tflops=None if sheet is None else round(sheet / 1e12, 1),
                flops_rule="linear 2*in*out per token; attention 4*width per allowed query-key pair; trainable "
                           "parts 3x forward, frozen encoder 1x; elementwise and recomputation not counted",
                timing=("CUDA events" if cuda else "wall clock") + ", median over timed steps; parts split at "
                       "forward boundaries and gradient hooks", complete=False)
    for name in args.sizes:
        size = SIZES[name]
        device = torch.device("cuda" if name in GPU_SIZES else "cpu")
        run_size(size, args.modes, args.backends, device, args, rows, notes, t_start, peak, sheet, args.out, meta)
    meta["complete"] = True
    meta["elapsed_s"] = round(time.time() - t_start, 1)
    write_results(args.out, rows, meta, notes, plot_png=not args.no_plot)
    print(summary(rows))
    for n in notes:
        print("note:", n)
    return 0


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


# ----------------------------------------------------------------------------- reporting

FIELDS = ["size", "mode", "backend", "status", "batch", "steps_timed", "step_ms", "wall_step_ms", "tokens_per_clip",
          "tokens_per_s", "clips_per_s", "encoder_ms", "idm_ms", "predictor_ms", "losses_ms", "optimizer_ms",
          "peak_mem_gb", "train_flop_per_clip", "model_tflops", "mfu", "mfu_datasheet", "steps_run", "loss_first", "loss_last",
          "warmup_s"]


def comparisons(rows) -> list[dict]:
    """fastlam against the others per (size, mode), with the issue's targets at paper size."""
    out = []
    ok = [r for r in rows if r.get("status") == "ok"]
    for key in sorted({(r["size"], r["mode"]) for r in ok}):
        group = {r["backend"]: r for r in ok if (r["size"], r["mode"]) == key}
        ours = group.get("fastlam_triton")
        if not ours:
            continue
        c = dict(size=key[0], mode=key[1])
        for other in ("reference", "reference_compiled", "flex_attention", "fastlam_compiled"):
            if other in group:
                c[f"speedup_vs_{other}"] = round(ours["tokens_per_s"] / group[other]["tokens_per_s"], 3)
                if ours.get("peak_mem_gb") and group[other].get("peak_mem_gb"):
                    c[f"memory_vs_{other}"] = round(ours["peak_mem_gb"] / group[other]["peak_mem_gb"], 3)
        if key[0] == "paper":
            c["targets"] = "speedup_vs_reference >= 1.5, speedup_vs_reference_compiled >= 1.2, memory_vs_reference <= 0.7"
        out.append(c)
    return out


def summary(rows) -> str:
    lines = []
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['size']}/{r['mode']}/{r['backend']}: {r['status']}")
            continue
        mem = f", peak {r['peak_mem_gb']} GiB" if r.get("peak_mem_gb") is not None else ""
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        lines.append(f"{r['size']}/{r['mode']}/{r['backend']}: B={r['batch']} step {r['step_ms']:.1f} ms, "
                     f"{r['tokens_per_s']:.0f} tokens/s{mem}{mfu}, loss {r['loss_first']:.5f} -> {r['loss_last']:.5f}")
    for c in comparisons(rows):
        lines.append(json.dumps(c))
    return "\n".join(lines)


def write_results(out: Path, rows, meta, notes, plot_png: bool = False) -> None:
    """(Re)write JSON and CSV after every backend, so a timeout keeps what was measured."""
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(meta=dict(meta, notes=list(notes)), rows=rows, comparisons=comparisons(rows))
    (out / "train_step.json").write_text(json.dumps(payload, indent=1))
    with open(out / "train_step.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS + ["device", "date", "commit"], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, device=meta["device"], date=meta["date"], commit=meta["commit"]))
    if plot_png:
        plot(rows, meta, out / "train_step.png")


def plot(rows, meta, path: Path) -> Path | None:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return None
    plt = pyplot_or_none()
    if plt is None:
        return None
    cases = sorted({(r["size"], r["mode"]) for r in ok})
    backends = [b for b in VARIANTS if any(r["backend"] == b for r in ok)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    width = 0.8 / max(len(backends), 1)
    get = lambda b, c, k: next((r[k] or 0 for r in ok if r["backend"] == b and (r["size"], r["mode"]) == c), 0)  # noqa: E731
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens/s"), (axes[1], "peak_mem_gb", "peak memory (GiB)")):
        for i, b in enumerate(backends):
            ax.bar([j + i * width for j in range(len(cases))], [get(b, c, key) for c in cases], width, label=b)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels([f"{s}\n{m}" for s, m in cases])
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    if not any(r.get("peak_mem_gb") for r in ok):
        axes[1].text(0.5, 0.5, "peak memory is measured on CUDA only", ha="center", transform=axes[1].transAxes)
    # Step-time split of every (case, backend), stacked.
    parts = ["encoder", "idm", "predictor", "losses", "optimizer"]
    labels = [f"{s}/{m}\n{b}" for s, m in cases for b in backends if get(b, (s, m), "step_ms")]
    bottoms = [0.0] * len(labels)
    for part in parts:
        vals = [get(b, (s, m), f"{part}_ms") for s, m in cases for b in backends if get(b, (s, m), "step_ms")]
        axes[2].bar(range(len(labels)), vals, bottom=bottoms, label=part)
        bottoms = [x + y for x, y in zip(bottoms, vals)]
    axes[2].set_xticks(range(len(labels)))
    axes[2].set_xticklabels(labels, fontsize=6, rotation=90)
    axes[2].set_ylabel("step time (ms)")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"LAM training step on {meta['device']} ({meta['dtype']}, {str(meta['commit'])[:10]}, "
                 f"{meta['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
