"""GPU benchmark of the fused loss / regularizer / AdaLN kernels against eager PyTorch and
``torch.compile`` of the same reference ops.

Each case times forward + backward (``triton.testing.do_bench`` median) and the forward alone,
and records the peak memory of one forward + backward above what the inputs occupy. Memory-bound
cases report effective bandwidth ``min_bytes / time`` (every input read once, every output and
gradient written once) against the device-to-device copy bandwidth measured at start-up (a
256 MiB clone, bytes read + written); the VQ case reports
the distance TFLOP/s (``2 N K D``). Writes ``losses.csv`` / ``losses.json`` (device, date,
commit, versions) and ``losses.png`` to ``--out`` (default ``$OUT`` or benchmarks/results/gpu).
Without CUDA it prints a message and exits 0 (CPU reference timings:
benchmarks/test_bench_losses_cpu.py).

    python benchmarks/bench_losses.py --out DIR [--quick]
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

try:  # run as a script (python benchmarks/bench_x.py) or as a module
    from benchmarks._common import allow_many_compiles, git_commit, pyplot_or_none
    from benchmarks.gpu_arguments import add_out_and_budget
except ImportError:  # pragma: no cover
    from _common import allow_many_compiles, git_commit, pyplot_or_none
    from gpu_arguments import add_out_and_budget



def measured_copy_bandwidth(nbytes: int = 256 << 20) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), median of do_bench."""
    import triton

    x = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=50, return_mode="median")
    del x, y
    return 2 * nbytes / (ms * 1e-3)




class Case:
    """One op at one shape: ``make()`` -> (inputs requiring grad, other args); ``run(backend, *x)``
    -> a scalar loss, or a tensor that is backpropagated with a fixed random cotangent."""

    def __init__(self, name, shape, dtype, make, run, min_bytes_fwd, min_bytes_fwdbwd, flops_fwd=0.0, kw=None):
        self.name, self.shape, self.dtype = name, shape, dtype
        self.make, self.run = make, run
        self.min_bytes_fwd, self.min_bytes_fwdbwd, self.flops_fwd = min_bytes_fwd, min_bytes_fwdbwd, flops_fwd
        self.kw = kw or {}


def _cases(quick: bool, device: str = "cuda", tiny: bool = False):
    """Benchmark cases; ``tiny`` (with ``device="cpu"``) shrinks every shape so the CPU tests
    can run each case's plumbing through the interpreter."""
    from fastlam import ops

    dev = device
    bf16 = torch.float16 if tiny else torch.bfloat16  # the interpreter's bf16 dot is wrong
    cases = []

    # prediction loss: (B, T*N, D) = (8, 2048, 1024), the paper's predictor output
    B, L, D = (2, 24, 40) if tiny else (4, 2048, 1024) if quick else (8, 2048, 1024)
    n = B * L * D
    for kind, norm in (("l1", False), ("l1", True), ("l2", False)):
        for mode in ("fused", "recompute"):
            def make(B=B, L=L, D=D):
                return [torch.randn(B, L, D, device=dev, dtype=bf16, requires_grad=True)], \
                       [torch.randn(B, L, D, device=dev, dtype=bf16)]

            def run(backend, pred, target, kind=kind, norm=norm, mode=mode):
                return ops.prediction_loss(pred, target, kind=kind, normalize_target=norm, backend=backend,
                                           grad_mode=mode)

            cases.append(Case(f"prediction_loss[{kind}{',ln' if norm else ''},{mode}]", f"B={B},L={L},D={D}", "bf16",
                              make, run, 2 * n * 2, 3 * n * 2))

    # frame-wise AdaLN and gated residual: B=8 clips, T=8 frames of 256 tokens, width 1024
    B, T, F, D = (2, 3, 8, 40) if tiny else (4, 8, 256, 1024) if quick else (8, 8, 256, 1024)
    n = B * T * F * D

    def make_adaln(B=B, T=T, F=F, D=D):
        return [torch.randn(B, T * F, D, device=dev, dtype=bf16, requires_grad=True),
                torch.randn(B, T, D, device=dev, dtype=bf16, requires_grad=True),
                (0.1 * torch.randn(B, T, D, device=dev, dtype=bf16)).requires_grad_()], []

    cases.append(Case("frame_adaln_modulate", f"B={B},T={T},F={F},D={D}", "bf16", make_adaln,
                      lambda backend, x, sh, sc: ops.frame_adaln_modulate(x, sh, sc, F, backend=backend),
                      2 * n * 2, 5 * n * 2))

    def make_gated(B=B, T=T, F=F, D=D):
        return [torch.randn(B, T * F, D, device=dev, dtype=bf16, requires_grad=True),
                torch.randn(B, T * F, D, device=dev, dtype=bf16, requires_grad=True),
                torch.randn(B, T, D, device=dev, dtype=bf16, requires_grad=True)], []

    cases.append(Case("frame_gated_residual", f"B={B},T={T},F={F},D={D}", "bf16", make_gated,
                      lambda backend, x, br, g: ops.frame_gated_residual(x, br, g, F, backend=backend),
                      3 * n * 2, 6 * n * 2))

    # sparse regularizer: one GPU's share of latents (the paper's batch: ~100 per GPU, the size
    # the model really runs) and a large Z of 1e5 x 128
    A = 32 if tiny else 128
    for N, dt_name, dtype in [(n, dn, dt_) for n in ((100,) if tiny else (112, 20_000 if quick else 100_000))
                              for dn, dt_ in (("bf16", bf16), ("fp32", torch.float32))]:
        es = 2 if dtype == bf16 else 4

        def make_sparse(N=N, A=A, dtype=dtype):
            return [(0.7 * torch.randn(N, A, device=dev) + 0.1).to(dtype).requires_grad_()], []

        cases.append(Case("sparse_regularizer", f"N={N},D={A}", dt_name, make_sparse,
                          lambda backend, z: ops.sparse_regularizer(z, l_l1=0.01, backend=backend)["loss"],
                          N * A * es, 3 * N * A * es, flops_fwd=2.0 * N * A * A))

    # noisy regularizer: sample + KL from an IDM head output (N, 2 * 128), same two sizes
    for N, dt_name, dtype in [(n, dn, dt_) for n in ((100,) if tiny else (112, 20_000 if quick else 100_000))
                              for dn, dt_ in (("bf16", bf16), ("fp32", torch.float32))]:
        es = 2 if dtype == bf16 else 4

        def make_gauss(N=N, A=A, dtype=dtype):
            return [torch.randn(N, 2 * A, device=dev, dtype=dtype, requires_grad=True)], []

        def run_gauss(backend, h, A=A):
            mu, logvar = h.chunk(2, dim=-1)
            z, kl = ops.gaussian_sample_kl(mu, logvar, seed=0, backend=backend)
            return z.float().square().mean() + kl

        # the cotangent of z costs a read in both paths; min bytes: mu, logvar, z, dz, dmu, dlogvar
        cases.append(Case("gaussian_sample_kl", f"N={N},D={A}", dt_name, make_gauss, run_gauss,
                          3 * N * A * es, 8 * N * A * es))

    # vector quantizer, codebook 32768 x 128: a large batch and the paper's per-GPU batch
    K = 200 if tiny else 32768
    for n_lat in ((40,) if tiny else (2048, 112) if quick else (8192, 112)):
        for zt, ct, tag in ((bf16, bf16, "bf16"), (bf16, torch.float32, "z bf16, codebook fp32")):
            def make_vq(n_lat=n_lat, zt=zt, ct=ct):
                return [torch.randn(n_lat, A, device=dev, dtype=zt, requires_grad=True),
                        torch.randn(K, A, device=dev, dtype=ct, requires_grad=True)], []

            def run_vq(backend, z, cb):
                z_q, _, cb_loss, commit = ops.vector_quantize(z, cb, 0.25, check_finite=False, backend=backend)
                return z_q.float().mean() + cb_loss + commit

            zb, cb_b = 2 if zt == bf16 else 4, 2 if ct == bf16 else 4
            cases.append(Case("vector_quantize", f"N={n_lat},K={K},D={A}", tag, make_vq, run_vq,
                              n_lat * A * (2 * zb) + K * A * cb_b, n_lat * A * (4 * zb) + 2 * K * A * cb_b,
                              flops_fwd=2.0 * n_lat * K * A))
    return cases


def _fwd_bwd(fn, xs, others):
    """One forward + backward; non-scalar outputs get a fixed random cotangent (made once)."""
    cot = {}

    def step():
        for x in xs:
            x.grad = None
        out = fn(*xs, *others)
        if out.dim() == 0:
            out.backward()
            return
        if "g" not in cot:
            cot["g"] = torch.randn_like(out)
        out.backward(cot["g"])
    return step


def _peak_mb(step) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_losses.py",
        description="GPU benchmark of the fused loss / regularizer / AdaLN kernels against eager PyTorch and "
                    "torch.compile of the same reference ops.")
    add_out_and_budget(parser, "cases")
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_losses: no CUDA device, nothing to measure (the CPU reference paths are timed by "
              "benchmarks/test_bench_losses_cpu.py)")
        return 0
    from triton.testing import do_bench

    args.out.mkdir(parents=True, exist_ok=True)
    allow_many_compiles()
    t0 = time.time()
    rows, notes = [], []
    hbm = measured_copy_bandwidth()
    print(f"measured copy bandwidth: {hbm / 1e12:.2f} TB/s", flush=True)
    for case in _cases(args.quick):
        if time.time() - t0 > args.budget_s:
            notes.append(f"time budget reached before {case.name} {case.shape}")
            break
        torch.manual_seed(0)
        xs, others = case.make()
        variants = {"eager": lambda *a, c=case: c.run("torch", *a), "fastlam_triton": lambda *a, c=case: c.run("triton", *a)}
        if not args.no_compile:
            variants["torch_compile"] = torch.compile(lambda *a, c=case: c.run("torch", *a), dynamic=False)
        for vname, fn in variants.items():
            try:
                step = _fwd_bwd(fn, xs, others)
                step()  # warm-up / compile
                t_both = do_bench(step, warmup=10, rep=50, return_mode="median")
                with torch.no_grad():
                    fwd_only = [x.detach() for x in xs]
                t_fwd = do_bench(lambda: fn(*fwd_only, *others), warmup=10, rep=50, return_mode="median")
                peak = _peak_mb(step)
            except Exception as exc:  # one variant failing must not hide the others
                notes.append(f"{vname} failed on {case.name} {case.shape} {case.dtype}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            finally:
                torch.cuda.empty_cache()
            row = dict(op=case.name, shape=case.shape, dtype=case.dtype, backend=vname,
                       fwd_ms=round(t_fwd, 4), fwd_bwd_ms=round(t_both, 4), peak_mem_mb=round(peak, 1),
                       fwd_gbps=round(case.min_bytes_fwd / t_fwd / 1e6, 1),
                       fwd_bwd_gbps=round(case.min_bytes_fwdbwd / t_both / 1e6, 1),
                       fwd_bwd_pct_hbm=round(100 * case.min_bytes_fwdbwd / (t_both * 1e-3) / hbm, 1),
                       fwd_tflops=round(case.flops_fwd / t_fwd / 1e9, 1) if case.flops_fwd else "")
            rows.append(row)
            print(json.dumps(row), flush=True)
        del xs, others
        write_results(args.out, rows, notes, hbm)
    write_results(args.out, rows, notes, hbm, final=True)
    for n in notes:
        print("note:", n)
    return 0


def write_results(out: Path, rows, notes, hbm: float, final: bool = False) -> None:
    import triton

    meta = dict(device=torch.cuda.get_device_name(), date=dt.datetime.now(dt.timezone.utc).isoformat(),
                commit=git_commit(), torch=torch.__version__, triton=triton.__version__,
                timing="triton.testing.do_bench median, forward+backward and forward",
                bandwidth_rule="min_bytes / time, min_bytes = each input read once, each output/grad written once",
                hbm_reference_bytes_per_s=hbm, hbm_reference="measured: device-to-device copy at start-up", complete=final, notes=notes)
    (out / "losses.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    if not rows:
        return
    with open(out / "losses.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["device", "date", "commit"])
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, device=meta["device"], date=meta["date"], commit=meta["commit"]))
    if final:
        print(summary(rows))
        plot(rows, meta, out / "losses.png")


def _groups(rows):
    by = {}
    for r in rows:
        by.setdefault((r["op"], r["shape"], r["dtype"]), {})[r["backend"]] = r
    return by


def summary(rows) -> str:
    lines = []
    for (op, shape, dtype), g in _groups(rows).items():
        ours = g.get("fastlam_triton")
        if not ours:
            continue
        parts = [f"{op} {shape} {dtype}: fastlam fwd+bwd {ours['fwd_bwd_ms']} ms ({ours['fwd_bwd_pct_hbm']}% of HBM), "
                 f"peak {ours['peak_mem_mb']} MB"]
        for name in ("eager", "torch_compile"):
            r = g.get(name)
            if r:
                parts.append(f"vs {name} {r['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.2f}x (fwd {r['fwd_ms'] / ours['fwd_ms']:.2f}x, "
                             f"peak {r['peak_mem_mb']} MB)")
        lines.append("; ".join(parts))
    return "\n".join(lines)


def plot(rows, meta, path: Path) -> None:
    plt = pyplot_or_none()
    if plt is None:
        return
    groups = [(k, g) for k, g in _groups(rows).items() if "fastlam_triton" in g]
    fig, axes = plt.subplots(1, 2, figsize=(16, 6))
    labels = [f"{op}\n{shape}\n{dtype}" for (op, shape, dtype), _ in groups]
    for ax, metric, title in ((axes[0], "fwd_bwd_ms", "speedup of fastlam (fwd+bwd time ratio)"),
                              (axes[1], "peak_mem_mb", "peak memory of fwd+bwd (MB)")):
        for i, name in enumerate(("eager", "torch_compile", "fastlam_triton")):
            if metric == "fwd_bwd_ms":
                if name == "fastlam_triton":
                    continue
                vals = [g[name][metric] / g["fastlam_triton"][metric] if name in g else 0 for _, g in groups]
            else:
                vals = [g[name][metric] if name in g else 0 for _, g in groups]
            ax.barh([j + 0.27 * i for j in range(len(groups))], vals, 0.27, label=name)
        ax.set_yticks([j + 0.27 for j in range(len(groups))])
        ax.set_yticklabels(labels, fontsize=6)
        ax.set_title(title)
    axes[0].axvline(1.0, color="k", lw=0.8)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"fused losses / regularizers / AdaLN on {meta['device']} ({meta['commit'][:10]}, {meta['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
