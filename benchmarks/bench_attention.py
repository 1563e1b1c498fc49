"""GPU benchmark of spatio-temporal attention: fastlam's Triton kernels against PyTorch SDPA
(dense boolean mask, V-JEPA 2-AC's path), FlexAttention (compiled, block mask), flash-attn
when installed, and SDPA's own flash kernel on the causal mask (the FA2-class upper bound at
the same FLOP count when flash-attn cannot be installed).

With the frame_causal mask fastlam is also timed with 3D RoPE both ways
(``fastlam_triton_rope_kernel``: rotation fused into the attention kernels;
``fastlam_triton_rope_prepass``: a rotation kernel before them, ``FASTLAM_ROPE_FUSION``),
against FlexAttention with the reference rotation, so the default fusion follows the data;
the summary prints the kernel / prepass time ratio.

FLOPs follow kernels-and-env.md: forward ``4 * B * H * D * (allowed query-key pairs)`` (the
unmasked fraction only), backward 2.5 x forward. Times are ``triton.testing.do_bench``
medians. Writes ``attention.csv`` / ``attention.json`` (device, date, commit, torch and
triton versions) and ``attention.png`` to ``--out`` (default ``$OUT`` or
benchmarks/results/gpu).

    python benchmarks/bench_attention.py --out DIR [--quick]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

try:  # run as a script (python benchmarks/bench_x.py) or as a module
    from benchmarks._common import allow_many_compiles, git_commit, pyplot_or_none, versions
    from benchmarks.result_files import save_figure, write_rows_csv
except ImportError:  # pragma: no cover
    from _common import allow_many_compiles, git_commit, pyplot_or_none, versions
    from result_files import save_figure, write_rows_csv

REPO = Path(__file__).resolve().parents[1]




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


# (B, H, frames, frame_len, head_dim): V-JEPA-like shapes from issue 9.
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


def frame_local_sdpa(sdpa_backend):
    """frame_local is full attention within each frame: SDPA's own flash / memory-efficient
    kernel on the (B*T, H, F, D) layout (the transposes to and from it included), the fair
    baseline for that mask instead of a dense L x L mask."""
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, F):
        B, H, L, D = q.shape
        T = L // F
        to = lambda x: x.view(B, H, T, F, D).transpose(1, 2).reshape(B * T, H, F, D)  # noqa: E731
        with sdpa_kernel(sdpa_backend):
            o = torch.nn.functional.scaled_dot_product_attention(to(q), to(k), to(v))
        return o.view(B, T, H, F, D).transpose(1, 2).reshape(B, H, L, D)
    return run


def make_runners(mask: str, F: int, notes: list, device: str = "cuda"):
    """name -> fn(q, k, v) for every backend that can run this mask here."""
    from fastlam.ops import st_attention
    from fastlam.ops.dispatch import AttentionRequest, attention_backend
    from torch.nn.attention import SDPBackend

    runners = {
        "fastlam_triton": lambda q, k, v: st_attention(q, k, v, frame_len=F, mask=mask, backend="triton"),
        "fastlam_triton_det": lambda q, k, v: st_attention(q, k, v, frame_len=F, mask=mask, backend="triton",
                                                           deterministic=True),
        "sdpa_dense_mask" if mask != "full" else "sdpa": (
            lambda q, k, v: st_attention(q, k, v, frame_len=F, mask=mask, backend="torch")),
    }
    if mask == "frame_local":
        for label, be in (("sdpa_flash_reshaped", SDPBackend.FLASH_ATTENTION),
                          ("sdpa_efficient_reshaped", SDPBackend.EFFICIENT_ATTENTION),
                          ("sdpa_math_reshaped", SDPBackend.MATH)):
            if device == "cuda" or be == SDPBackend.MATH:
                runners[label] = lambda q, k, v, f=frame_local_sdpa(be): f(q, k, v, F)
    if device != "cuda":  # --dry-run: FlexAttention has no CPU backward, flash-attn no CPU kernels
        runners.pop("fastlam_triton_det")  # one interpreted kernel pair is enough to prove the path
        return runners
    runners["flex"] = lambda q, k, v: st_attention(q, k, v, frame_len=F, mask=mask, backend="flex")
    probe = torch.empty(1, 1, F, 64, device="cuda", dtype=torch.bfloat16)
    req = AttentionRequest(F, "causal" if mask == "frame_causal" else mask, None, 0.125, None, False, False)
    reason = attention_backend("flash_attn").supports(probe, req)
    label = "flash_attn_causal" if mask == "frame_causal" else "flash_attn"
    if reason is None:
        # frame_causal has no flash-attn mask: its causal kernel is the upper bound at a similar FLOP count.
        m = req.mask
        runners[label] = lambda q, k, v: st_attention(q, k, v, frame_len=F, mask=m, backend="flash_attn")
    else:
        notes.append(f"{label} skipped: {reason}")
    if mask == "frame_causal":
        runners["sdpa_flash_causal"] = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True)
    if mask in ("temporal_causal", "temporal"):
        # What Genie / UniVLA-style code does: reshape to (B*S, H, T, D), SDPA, reshape back.
        def factorised(q, k, v):
            B, H, L, D = q.shape

            def fact(x):
                return x.unflatten(2, (L // F, F)).permute(0, 3, 1, 2, 4).reshape(B * F, H, L // F, D)

            o = torch.nn.functional.scaled_dot_product_attention(fact(q), fact(k), fact(v),
                                                                 is_causal=mask == "temporal_causal")
            return o.reshape(B, F, H, L // F, D).permute(0, 2, 3, 1, 4).reshape(B, H, L, D)

        runners["sdpa_factorised"] = factorised
    return runners


def rope_for(F: int):
    """V-JEPA 2 layout for a frame of F tokens: a square patch grid after the per-frame
    prefix tokens (258 = 2 action/state tokens + 16 x 16), duplicated-frequency quirk on."""
    from fastlam.ops import Rope3D

    import math

    prefix = 2 if F % 2 else F % 16  # 258: V-JEPA 2-AC's action + state tokens
    return Rope3D(grid_w=math.isqrt(F - prefix), num_prefix=prefix)


def rope_runners(F: int) -> dict:
    """fastlam with RoPE fused into the kernels and as a pre-pass, and FlexAttention + RoPE."""
    from fastlam.ops import st_attention
    from fastlam.ops.triton_attention import ROPE_FUSION_ENV

    rope = rope_for(F)

    def fused(fusion):
        def run(q, k, v):
            # Read when the forward is called; the backward reuses the forward's choice.
            old = os.environ.get(ROPE_FUSION_ENV)
            os.environ[ROPE_FUSION_ENV] = fusion
            try:
                return st_attention(q, k, v, frame_len=F, mask="frame_causal", rope=rope, backend="triton")
            finally:
                if old is None:
                    os.environ.pop(ROPE_FUSION_ENV, None)
                else:
                    os.environ[ROPE_FUSION_ENV] = old
        return run

    return {
        "fastlam_triton_rope_kernel": fused("kernel"),
        "fastlam_triton_rope_prepass": fused("prepass"),
        "flex_rope": lambda q, k, v: st_attention(q, k, v, frame_len=F, mask="frame_causal", rope=rope,
                                                  backend="flex"),
    }


def bench_one_cpu(fn, q, k, v, do, repeats: int = 1):
    """--dry-run timing: wall-clock medians (CPU ops are synchronous); peak memory not measured."""
    import statistics

    def fwd_bwd():
        fn(q, k, v).backward(do)

    times = {}
    for name, f in (("fwd", lambda: fn(q, k, v)), ("both", fwd_bwd)):
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            ts.append((time.perf_counter() - t) * 1e3)
        times[name] = statistics.median(ts)
    return times["fwd"], times["both"], 0


def bench_one(fn, q, k, v, do, quick: bool):
    import triton

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_attention.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks/results/gpu")),
                        help="folder for the CSV / JSON / PNG results (default: $OUT, else benchmarks/results/gpu)")
    parser.add_argument("--quick", action="store_true", help="two shapes, shorter timing")
    parser.add_argument("--masks", nargs="+", default=None,
                        help="attention masks to time (default: frame_causal frame_local full; --quick: "
                             "frame_causal frame_local)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter (suite test)")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S", 240)),
                        help="stop starting new shapes after this many seconds (default: $BENCH_BUDGET_S, else 240)")
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
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    # Every (shape, mask) is a new FlexAttention compile; keep them all compiled.
    allow_many_compiles()
    t_start = time.time()
    notes: list[str] = []
    rows = []
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    for B, H, T, F, D in (DRY_SHAPES if args.dry_run else QUICK_SHAPES if args.quick else SHAPES):
        if time.time() - t_start > args.budget_s:
            notes.append(f"time budget reached: skipped shape B={B} H={H} T={T} F={F} D={D} and later")
            break
        L = T * F
        for mask in args.masks:
            pairs = allowed_pairs(L, F, mask)
            fwd_flops = 4.0 * B * H * D * pairs
            runners = make_runners(mask, F, notes, device)
            if mask == "frame_causal" and not args.dry_run:
                runners.update(rope_runners(F))
            for name, fn in runners.items():
                if name.startswith("sdpa_dense") and L > 8192:
                    notes.append(f"{name} skipped at L={L}: the dense mask path is too slow for the suite's budget")
                    continue
                counted = fwd_flops
                if name in ("sdpa_flash_causal", "flash_attn_causal"):
                    counted = 4.0 * B * H * D * allowed_pairs(L, F, "causal")
                torch.manual_seed(0)
                q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                do = torch.randn(B, H, L, D, device=device, dtype=dtype)
                try:
                    t_fwd, t_both, peak = (bench_one_cpu(fn, q, k, v, do) if args.dry_run
                                           else bench_one(fn, q, k, v, do, args.quick))
                except Exception as exc:  # report and go on: one backend failing must not hide the rest
                    notes.append(f"{name} failed on B={B} L={L} D={D} {mask}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                finally:
                    if device == "cuda":
                        torch.cuda.empty_cache()
                t_bwd = max(t_both - t_fwd, 1e-9)
                row = dict(backend=name, mask=mask, B=B, H=H, frames=T, frame_len=F, L=L, head_dim=D,
                           dtype=str(dtype).replace("torch.", ""), fwd_ms=round(t_fwd, 4), bwd_ms=round(t_bwd, 4),
                           fwd_bwd_ms=round(t_both, 4), fwd_tflops=round(counted / t_fwd / 1e9, 1),
                           bwd_tflops=round(2.5 * counted / t_bwd / 1e9, 1),
                           fwd_bwd_tflops=round(3.5 * counted / t_both / 1e9, 1),
                           peak_mem_mb=round(peak / 2**20, 1), unmasked_fraction=round(pairs / L / L, 4))
                rows.append(row)
                print(json.dumps(row), flush=True)
                del q, k, v, do
        write_results(args.out, rows, notes)
    write_results(args.out, rows, notes, final=True)
    for n in notes:
        print("note:", n)
    return 0


def write_results(out: Path, rows, notes, final: bool = False) -> None:
    """(Re)write JSON / CSV (after every shape, so a timeout keeps what was measured) and the plot."""
    meta = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", date=dt.datetime.now(dt.timezone.utc).isoformat(),
                commit=git_commit(), **versions(),
                flops_rule="fwd 4*B*H*D*allowed_pairs (unmasked pairs only), bwd 2.5x fwd",
                timing="triton.testing.do_bench median" if torch.cuda.is_available() else "wall clock, one run (dry run)",
                complete=final, notes=notes)
    (out / "attention.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
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
