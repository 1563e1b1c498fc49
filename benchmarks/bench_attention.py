"""GPU benchmark of spatio-temporal attention: fastlam's Triton kernels against cuDNN SDPA (the
FA3-class kernel on the GPU image), FlexAttention (compiled, block mask), SDPA flash (causal,
or on the (B*T, H, F, D) layout for frame_local), dense-mask SDPA (memory-efficient and
math kernels, V-JEPA 2-AC's path), flash-attn and xformers when installed; the runners and why
one is skipped are in benchmarks/attention_baselines.py.

With the frame_causal mask fastlam is also timed with 3D RoPE both ways
(``fastlam_triton_rope_kernel``: rotation fused into the attention kernels;
``fastlam_triton_rope_prepass``: a rotation kernel before them, ``FASTLAM_ROPE_FUSION``),
against FlexAttention with the reference rotation, so the default fusion follows the data;
the summary prints the kernel / prepass time ratio.

Before it is timed, every runner's output and gradients are checked against the float64
reference by fastlam.testing's error-ratio rule (``benchmarks/attention_check.py``, batch 1,
at most 4096 tokens); a runner that fails is reported ``failed check`` and not timed. Results
are rewritten after each timed runner, so a run cut off at its budget keeps what it measured.

Timing: ``triton.testing.do_bench`` medians of the forward and of forward + backward, at a
batch where the host's launch overhead is not the measurement: the shape's batch doubled
until the forward computes >= 0.5 TFLOP (:data:`MIN_TIMED_FWD_FLOPS`; each row's ``B`` is the
batch timed). FLOPs follow FlashAttention's convention (fastlam.flops, as the training-step
MFU): forward ``4 * B * H * D * (allowed query-key pairs)`` (the unmasked fraction only;
causal pairs for the causal bounds), backward ``ATTENTION_BACKWARD_FACTOR`` (2.5) x forward.
Each TFLOP/s is also given as a share of the bf16 matmul peak measured at the start of the
run (an 8192^3 ``torch.matmul``; not measured in the CPU dry run, where the shares are null).
Writes ``attention.csv`` / ``attention.json`` (device, date, commit, torch and triton
versions, every runner's check or skip reason) and ``attention.png`` to ``--out`` (default
``$OUT`` or benchmarks/results/gpu).

    python benchmarks/bench_attention.py --out DIR [--quick] [--dry-run]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

# Without CUDA the Triton kernels run only under the interpreter (the dry run), which must be
# switched on before triton is first imported (by fastlam below).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:  # run as a script (python benchmarks/bench_x.py) or as a module
    from benchmarks._common import allow_many_compiles, git_commit, pyplot_or_none, versions
    from benchmarks.attention_baselines import Runner, make_runners, rope_for, rope_runners  # noqa: F401
    from benchmarks.attention_check import check_inputs, check_runner, check_shape
    from benchmarks.gpu_arguments import add_out_and_budget
    from benchmarks.result_files import save_figure, write_rows_csv
except ImportError:  # pragma: no cover
    from _common import allow_many_compiles, git_commit, pyplot_or_none, versions
    from attention_baselines import Runner, make_runners, rope_for, rope_runners  # noqa: F401
    from attention_check import check_inputs, check_runner, check_shape
    from gpu_arguments import add_out_and_budget
    from result_files import save_figure, write_rows_csv
from fastlam.flops import ATTENTION_BACKWARD_FACTOR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Forward + backward over forward FLOPs (3.5): the one attention backward factor of fastlam.flops.
FWD_BWD_FACTOR = 1.0 + ATTENTION_BACKWARD_FACTOR
# About 1 ms of forward at 500 TFLOP/s: twice the ~0.5 ms the host spends per st_attention call
# (mostly custom-op dispatch), so the GPU queue stays ahead of the host and the events time
# the kernels, not the launches.
MIN_TIMED_FWD_FLOPS = 0.5e12
MAX_TIMED_TENSOR_BYTES = 2 << 30  # per q / k / v / grad tensor: ~16 GiB for the eight of them
# A math kernel's scores (fp32, ~4 live copies through the backward) may take this share of
# the free memory; beyond it the runner is skipped rather than run out of memory.
MATH_SCORES_SHARE = 0.4
DENSE_MASK_MAX_L = 8192  # beyond it the dense-mask path is too slow for the suite's budget


def allowed_pairs(L: int, F: int, mask: str, window: int | None = None) -> int:
    """Number of (query, key) pairs the mask allows (closed form, no L x L tensor)."""
    T = L // F
    if mask == "full":
        return L * L
    if mask == "causal":
        return L * (L + 1) // 2
    if mask == "frame_local":
        return T * F * F
    if mask == "temporal":
        return L * T
    w = T if window is None else min(window, T)
    if mask == "temporal_causal":
        return F * sum(min(t + 1, w) for t in range(T))
    return F * F * sum(min(t + 1, w) for t in range(T))


# (B, H, frames, frame_len, head_dim): V-JEPA-like shapes from issue 9; B is the smallest batch
# timed (timed_batch raises it until launch overhead is not the measurement).
SHAPES = [
    (4, 16, 8, 256, 64),
    (4, 16, 8, 258, 64),
    (4, 16, 8, 256, 128),
    (4, 16, 8, 258, 128),
    (16, 16, 8, 256, 64),
    (1, 16, 32, 576, 64),
]
# The paper's predictor (8 frames of 256 tokens, 16 heads of 64) and V-JEPA 2-AC's (258-token
# frames: 256 patches + action and proprio tokens, same heads), first: the quick suite's budget.
QUICK_SHAPES = [(4, 16, 8, 256, 64), (4, 16, 8, 258, 64)]
DRY_SHAPES = [(1, 2, 3, 18, 16)]  # --dry-run: CPU, Triton interpreter (2 prefix tokens, as 258)


def forward_flops(B: int, H: int, L: int, F: int, D: int, mask: str) -> float:
    """Forward FLOPs of attention (QK^T and PV) over the pairs ``mask`` allows."""
    return 4.0 * B * H * D * allowed_pairs(L, F, mask)


def timed_batch(B: int, H: int, L: int, F: int, D: int, mask: str, itemsize: int = 2) -> int:
    """``B`` doubled until the forward computes :data:`MIN_TIMED_FWD_FLOPS`, or until one
    (B, H, L, D) tensor would pass :data:`MAX_TIMED_TENSOR_BYTES`."""
    while (forward_flops(B, H, L, F, D, mask) < MIN_TIMED_FWD_FLOPS
           and 2 * B * H * L * D * itemsize <= MAX_TIMED_TENSOR_BYTES):
        B *= 2
    return B


def matmul_peak(device: str) -> float | None:
    """FLOP/s of one large bf16 matmul (8192^3, ``do_bench`` median) timed on the GPU at the
    start of the run: the denominator of every ``*_peak_share``. None on the CPU (the dry
    run): a CPU matmul rate says nothing about the GPU's, so the shares are not measured there."""
    if device != "cuda":
        return None
    import triton  # optional dependency: triton (the GPU timing path)

    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))  # random: zeros run faster
    ms = triton.testing.do_bench(lambda: torch.matmul(a, b), warmup=25, rep=100, return_mode="median")
    return 2.0 * n ** 3 / (ms / 1e3)


def wall_ms(fn, repeats: int) -> float:
    """Median wall-clock milliseconds of ``fn`` after one warm-up call (CPU ops are synchronous)."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def bench_one_cpu(fn, q, k, v, do, repeats: int = 1):
    """--dry-run timing: wall-clock medians; peak memory not measured."""
    def fwd_bwd():
        fn(q, k, v).backward(do)

    return wall_ms(lambda: fn(q, k, v), repeats), wall_ms(fwd_bwd, repeats), 0


def bench_one(fn, q, k, v, do, quick: bool):
    """do_bench medians (ms) of the forward and of forward + backward, and the peak memory of
    one forward + backward over what was allocated before it."""
    import triton  # optional dependency: triton (the GPU timing path)

    rep, warm = (30, 10) if quick else (100, 25)
    fwd = triton.testing.do_bench(lambda: fn(q, k, v), warmup=warm, rep=rep, return_mode="median")

    def fwd_bwd():
        out = fn(q, k, v)
        out.backward(do)

    for x in (q, k, v):
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    both = triton.testing.do_bench(fwd_bwd, warmup=warm, rep=rep, grad_to_none=[q, k, v], return_mode="median")
    return fwd, both, peak


def too_big_to_time(runner: Runner, B: int, H: int, L: int, F: int, device: str) -> str | None:
    """Why ``runner`` is not timed at this size (dense-mask paths at long sequences, math
    kernels whose scores would not fit), or None."""
    if runner.name.startswith("sdpa_dense") and L > DENSE_MASK_MAX_L:
        return f"L={L} > {DENSE_MASK_MAX_L}: the dense mask path is too slow for the suite's budget"
    if runner.materialises_scores and device == "cuda":
        need = 4 * 4 * B * H * allowed_pairs(L, F, runner.materialises_scores)
        free = torch.cuda.mem_get_info()[0]
        if need > MATH_SCORES_SHARE * free:
            return (f"the math kernel's scores need ~{need / 2**30:.1f} GiB at B={B}, over "
                    f"{MATH_SCORES_SHARE:.0%} of the {free / 2**30:.1f} GiB free")
    return None


def check_then_time(runners: list[Runner], shape: tuple, mask: str, dtype, device: str, quick: bool,
                    deadline: float, peak_flops: float | None,
                    on_row: Callable[[list[dict], list[dict]], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Check each runner against the float64 reference and time it only if it passes, runner by
    runner in the list's order (a run cut off at its budget has timed the first ones, not only
    checked them all). Returns (timed rows, one status row per runner: ``ok``, ``skipped: why``,
    ``failed check: why``, ``failed: why``); ``on_row(rows, statuses)`` is called after each
    timed runner, so the caller can write what was measured so far."""
    B, H, T, F, D = shape
    L = T * F
    where = dict(mask=mask, frame_len=F, L=L, head_dim=D)
    statuses, rows = [], []
    inputs, refs = check_inputs(check_shape(*shape), dtype, device), {}
    timed_inputs = None  # allocated when the first runner passes its check
    Bt = B if device != "cuda" else timed_batch(B, H, L, F, D, mask, torch.tensor([], dtype=dtype).element_size())
    for r in runners:
        if r.fn is None:
            statuses.append(dict(backend=r.name, status=f"skipped: {r.skipped}", **where))
            continue
        if time.time() > deadline:
            statuses.append(dict(backend=r.name, status="skipped: time budget", **where))
            continue
        check = check_runner(r, inputs, F, backward=True, refs=refs)
        status = dict(backend=r.name, status=check.status, check_errors=check.errors, **where)
        statuses.append(status)
        if not check.ok:
            continue
        why = "time budget" if time.time() > deadline else too_big_to_time(r, Bt, H, L, F, device)
        if why:
            status["status"] = f"skipped: {why}"
            continue
        if timed_inputs is None:
            torch.manual_seed(0)
            timed_inputs = [torch.randn(Bt, H, L, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
            timed_inputs.append(torch.randn(Bt, H, L, D, device=device, dtype=dtype))
        try:
            t_fwd, t_both, peak = (bench_one_cpu(r.fn, *timed_inputs) if device != "cuda"
                                   else bench_one(r.fn, *timed_inputs, quick))
        except Exception as exc:  # report and go on: one backend failing must not hide the rest
            status["status"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            continue
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        status["B"] = Bt
        rows.append(timing_row(r, mask, (Bt, H, T, F, D), dtype, (t_fwd, t_both, peak), peak_flops))
        print(json.dumps(rows[-1]), flush=True)
        if on_row is not None:
            on_row(rows, statuses)
    return rows, statuses


def timing_row(r: Runner, mask: str, shape: tuple, dtype, timing: tuple, peak_flops: float | None) -> dict:
    """One timed runner of ``mask``: times (ms) and peak memory (``timing``), TFLOP/s on the
    pairs it computes (backward counted ATTENTION_BACKWARD_FACTOR x the forward) and as a share
    of the measured matmul peak (None where ``peak_flops`` was not measured)."""
    B, H, T, F, D = shape
    t_fwd, t_both, peak = timing
    L = T * F
    counted = forward_flops(B, H, L, F, D, r.computes)
    t_bwd = max(t_both - t_fwd, 1e-9)
    fwd, both = counted / (t_fwd / 1e3), FWD_BWD_FACTOR * counted / (t_both / 1e3)

    def share(flop_s):
        return None if peak_flops is None else round(flop_s / peak_flops, 3)

    return dict(backend=r.name, mask=mask, computes=r.computes, B=B, H=H, frames=T, frame_len=F, L=L, head_dim=D,
                dtype=str(dtype).replace("torch.", ""), fwd_ms=round(t_fwd, 4), bwd_ms=round(t_bwd, 4),
                fwd_bwd_ms=round(t_both, 4), fwd_tflops=round(fwd / 1e12, 1),
                bwd_tflops=round(ATTENTION_BACKWARD_FACTOR * counted / (t_bwd / 1e3) / 1e12, 1),
                fwd_bwd_tflops=round(both / 1e12, 1), fwd_peak_share=share(fwd),
                fwd_bwd_peak_share=share(both), peak_mem_mb=round(peak / 2**20, 1),
                unmasked_fraction=round(allowed_pairs(L, F, r.computes) / L / L, 4))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_attention.py", description=__doc__.split("\n\n")[0])
    add_out_and_budget(parser, "shapes")
    parser.add_argument("--quick", action="store_true", help="two shapes, shorter timing")
    parser.add_argument("--masks", nargs="+", default=None,
                        help="attention masks to time (default: frame_causal frame_local full; --quick: "
                             "frame_causal frame_local)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter (suite test)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.masks is None:
        args.masks = ["frame_causal", "frame_local"] + ([] if args.quick or args.dry_run else ["full"])
    if not torch.cuda.is_available() and not args.dry_run:
        print("bench_attention: no CUDA device, nothing to measure (the CPU reference paths are timed by "
              "benchmarks/test_bench_attention_cpu.py; --dry-run runs this script at tiny shapes)")
        return 0
    device = "cpu" if args.dry_run else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)

    # Every (shape, mask) is a new FlexAttention compile; keep them all compiled.
    allow_many_compiles()
    t_start = time.time()
    deadline = t_start + args.budget_s
    notes: list[str] = []
    rows, statuses = [], []
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    peak = matmul_peak(device)
    print("bf16 matmul peak (8192^3): " + (f"{peak / 1e12:.3g} TFLOP/s" if peak else "not measured (CPU)"), flush=True)
    for B, H, T, F, D in (DRY_SHAPES if args.dry_run else QUICK_SHAPES if args.quick else SHAPES):
        if time.time() > deadline:
            notes.append(f"time budget reached: skipped shape B={B} H={H} T={T} F={F} D={D} and later")
            break
        for mask in args.masks:
            runners = make_runners(mask, F, device, dtype, D, with_rope=not args.dry_run)
            got, status = check_then_time(
                runners, (B, H, T, F, D), mask, dtype, device, args.quick, deadline, peak,
                on_row=lambda done, now: write_results(args.out, rows + done, notes, statuses=statuses + now, peak=peak,
                                                      device=device))
            rows += got
            statuses += status
            for s in status:
                if s["status"] != "ok":
                    print(f"{s['backend']} ({mask}, L={s['L']}, D={D}): {s['status']}", flush=True)
        write_results(args.out, rows, notes, statuses=statuses, peak=peak, device=device)
    write_results(args.out, rows, notes, final=True, statuses=statuses, peak=peak, device=device)
    for n in notes:
        print("note:", n)
    return 0


def write_results(out: Path, rows, notes, final: bool = False, statuses=(), peak: float | None = None,
                  device: str = "cuda") -> None:
    """(Re)write JSON / CSV (after every timed runner and shape, so a timeout keeps what was
    measured) and, at the end, the plot. ``statuses``: every runner's check or skip reason;
    ``peak``: the measured matmul FLOP/s (None: not measured)."""
    cuda = device == "cuda"
    meta = dict(device=torch.cuda.get_device_name() if cuda else "cpu",
                date=dt.datetime.now(dt.timezone.utc).isoformat(), commit=git_commit(), **versions(),
                flops_rule=f"fwd 4*B*H*D*allowed_pairs (unmasked pairs only, causal for the causal bounds), "
                           f"bwd {ATTENTION_BACKWARD_FACTOR}x fwd (fastlam.flops.ATTENTION_BACKWARD_FACTOR)",
                timing=(f"triton.testing.do_bench median at the batch B of each row (the shape's batch doubled until "
                        f"the fwd is >= {MIN_TIMED_FWD_FLOPS / 1e12:g} TFLOP)" if cuda
                        else "wall clock, one run after a warm-up (dry run)"),
                check="float64 reference, fastlam.testing error-ratio rule (2x out, 3x grads), batch 1, "
                      "<= 4096 tokens, before timing; failing runners not timed",
                matmul_peak_tflops=None if peak is None else float(f"{peak / 1e12:.3g}"),
                matmul_peak=("bf16 8192^3 torch.matmul, do_bench median, at the start of the run" if peak is not None
                             else "not measured (CPU dry run): *_peak_share are null"),
                complete=final, notes=notes)
    (out / "attention.json").write_text(json.dumps(dict(meta=meta, rows=rows, runners=list(statuses)), indent=1))
    if not rows:
        return
    write_rows_csv(out / "attention.csv", rows, meta)
    if final:
        plot(rows, meta, out / "attention.png")
        print(speedup_summary(rows))


def speedup_summary(rows) -> str:
    """fastlam vs the others per shape and mask (forward and forward+backward time ratios)."""
    lines = []
    key = lambda r: (r["B"], r["L"], r["head_dim"], r["mask"])  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["backend"]] = r
    for k, group in by.items():
        ours = group.get("fastlam_triton")
        if not ours:
            continue
        parts = []
        for name, r in group.items():
            if name.startswith("fastlam") or name.endswith("_rope"):
                continue
            parts.append(f"vs {name}: fwd {r['fwd_ms'] / ours['fwd_ms']:.2f}x fwd+bwd {r['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.2f}x")
        lines.append(f"B={k[0]} L={k[1]} D={k[2]} {k[3]}: fastlam fwd {ours['fwd_tflops']} TFLOP/s, "
                     f"fwd+bwd {ours['fwd_bwd_tflops']} TFLOP/s; " + "; ".join(parts))
        fused, pre = group.get("fastlam_triton_rope_kernel"), group.get("fastlam_triton_rope_prepass")
        if fused and pre:
            # > 1: the fused rotation is faster; the default fusion should follow this.
            lines.append(f"  RoPE prepass / kernel time: fwd {pre['fwd_ms'] / fused['fwd_ms']:.2f}x, "
                         f"fwd+bwd {pre['fwd_bwd_ms'] / fused['fwd_bwd_ms']:.2f}x "
                         f"(no RoPE / kernel RoPE fwd+bwd {ours['fwd_bwd_ms'] / fused['fwd_bwd_ms']:.2f}x)"
                         + (f"; flex+RoPE / kernel RoPE fwd {group['flex_rope']['fwd_ms'] / fused['fwd_ms']:.2f}x "
                            f"fwd+bwd {group['flex_rope']['fwd_bwd_ms'] / fused['fwd_bwd_ms']:.2f}x"
                            if "flex_rope" in group else ""))
    return "\n".join(lines)


def plot(rows, meta, path: Path) -> None:
    plt = pyplot_or_none()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), sharey=True)
    for ax, metric in zip(axes, ("fwd_tflops", "fwd_bwd_tflops")):
        cases = sorted({(r["mask"], r["B"], r["L"], r["head_dim"]) for r in rows})
        backends = sorted({r["backend"] for r in rows})
        width = 0.8 / max(len(backends), 1)
        for i, b in enumerate(backends):
            vals = [next((r[metric] for r in rows if r["backend"] == b and (r["mask"], r["B"], r["L"], r["head_dim"]) == c), 0)
                    for c in cases]
            ax.bar([j + i * width for j in range(len(cases))], vals, width, label=b)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels([f"{m}\nB{b} L{l}\nD{d}" for m, b, l, d in cases], fontsize=7)
        ax.set_title(f"{metric.replace('_', ' ')} (unmasked FLOPs)")
        ax.set_ylabel("TFLOP/s")
    axes[0].legend(fontsize=7)
    save_figure(plt, fig, path, f"st_attention bf16 on {meta['device']} ({meta['commit'][:10]}, {meta['date'][:10]})")


if __name__ == "__main__":
    sys.exit(main())
