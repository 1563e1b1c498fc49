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
model the training log's MFU uses too; ``train_step_cases.ac_flops`` for V-JEPA 2-AC): 2 x in x out per token per linear layer (the tubelet conv as a linear),
4 x width per query-key pair the mask allows for attention (QK^T and AV; masked pairs are
not counted), elementwise work not counted; the trainable parts count forward + backward
(backward 2 x the forward for linear layers, 2.5 x for attention: FlashAttention's convention,
the one benchmarks/bench_attention.py uses), the frozen encoder forward only; activation
recomputation is not counted. MFU
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

# Besides what runs here: the names tests/test_train_step_bench.py and test_train_step_sync.py
# have always taken from this script (the sizes, models and the one FLOP model) stay importable.
from fastlam.flops import allowed_pairs, datasheet_bf16_peak, lam_flops  # noqa: E402,F401
from fastlam.models.ac_predictor import ACPredictor, ACPredictorConfig  # noqa: E402,F401
from fastlam.ops import use_backend  # noqa: E402
from fastlam.optim import OptimConfig, build_optimizers  # noqa: E402

try:  # run as a script (python benchmarks/bench_x.py) or as a module
    from benchmarks._common import allow_many_compiles, git_commit
    from benchmarks.train_step_cases import (  # noqa: F401
        SIZES, VARIANTS, PhaseClock, Size, ac_flops, ac_phases, ac_step, build_model, compile_regions, lam_phases,
        lam_step, make_batch, paper_config, tiny_config, tokens_per_clip, train_flops_per_clip)
    from benchmarks.train_step_report import summary, write_results
except ImportError:  # pragma: no cover
    from _common import allow_many_compiles, git_commit
    from train_step_cases import (  # noqa: F401
        SIZES, VARIANTS, PhaseClock, Size, ac_flops, ac_phases, ac_step, build_model, compile_regions, lam_phases,
        lam_step, make_batch, paper_config, tiny_config, tokens_per_clip, train_flops_per_clip)
    from train_step_report import summary, write_results

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "train_step"
GPU_SIZES = ("paper", "ac")
# Seconds of budget a compiled run needs at GPU sizes (regional compile of the blocks, loss and
# regularizer, forward and backward, plus the steps).
COMPILE_RESERVE_S = 90


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


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
                           "parts fwd+bwd = 3x linear + 3.5x attention fwd (fastlam.flops), frozen encoder 1x; "
                           "elementwise and recomputation not counted",
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



if __name__ == "__main__":
    sys.exit(main())
