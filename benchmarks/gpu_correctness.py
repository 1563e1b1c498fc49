"""Correctness of every fastlam kernel at the shapes and dtypes training runs (bf16 and fp16 on a
GPU), for the first minutes of a GPU lease (step 1 of benchmarks/gpu_suite.sh).

Uses the unit tests' rule and helpers (:mod:`fastlam.testing`: ``run_three`` /
``error_ratio``): with ``ref`` the float64 reference, ``pt`` the reference in the kernel's
dtype, ``max|out - ref| <= 2 x max|pt - ref| + atol * max(1, max|ref|)`` (3x for gradients); a
non-finite output fails whatever the bound. Outputs are poisoned: before every case a large
block of the CUDA caching allocator is filled with NaN and freed, so a kernel output that
reuses it and is not fully written shows NaN; the attention kernels are also run into
explicitly NaN-filled ``out`` / ``lse`` / gradient buffers. Cases (in order of importance,
each timed; the run stops starting new ones at ``--budget-s`` and records the rest as skipped):

- attention forward + backward, frames of 256 and 258 tokens, head dim 64 and 128, no RoPE
  with atomic dQ, fused RoPE with deterministic dQ, RoPE pre-pass with atomic dQ;
- prediction loss (L1, L2), frame AdaLN modulate and gated residual at predictor width;
- sparse, Gaussian (KL and sample + KL) regularizers and the VQ at ~100 latents (one GPU's
  share) and at 8192.

``--part first`` runs only the first dtype's head-dim-64 attention, poisoned-buffer and fused-op
cases (bf16 on a GPU: what training runs), ``--part rest`` the others (head dim 128, fp16), so
the GPU suite can time the kernels between the two.

``--dry-run``: tiny shapes, fp32 + fp16, under the Triton interpreter on CPU (what CI runs).
Writes ``correctness.csv`` / ``correctness.json`` (``correctness_rest.*`` for ``--part rest``;
device, date, commit, versions) to ``--out`` as it goes: a CSV line per check appended when its
case ends, the JSON replaced after every case, so a run cut off keeps every finished case. Exit
status 1 when a case fails.

    python -m benchmarks.gpu_correctness --out DIR [--budget-s 90] [--dry-run] [--part first|rest]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the kernels run only under the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]

from benchmarks._common import git_commit, versions  # noqa: E402
from benchmarks.result_files import append_row_csv, write_text_atomic  # noqa: E402
from fastlam.ops import gaussian_kl, gaussian_sample, gaussian_sample_kl  # noqa: E402
from fastlam.testing import error_ratio, run_three  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def poison_allocator(nbytes: int = 1 << 30) -> None:
    """Fill a large cached block with NaN and free it: torch.empty outputs reuse it."""
    if not CUDA:
        return
    free = torch.cuda.mem_get_info()[0]
    n = min(nbytes, int(free * 0.5)) // 4
    blk = torch.empty(n, device="cuda", dtype=torch.float32).fill_(float("nan"))
    del blk


def check(o, r, p, ratio, atol, what) -> dict:
    """One row of the report: the rule's numbers (atol relative to the output's scale, as in
    tests/test_fused_losses.py) and, when it fails, why."""
    res = error_ratio(o, r, p, factor=ratio, atol=atol, scale_atol_by_ref=True)
    if res.ok:
        return dict(check=what, ok=True, err=res.err, torch_err=res.torch_err)
    return dict(check=what, ok=False, err=res.err, torch_err=res.torch_err, msg=res.message(what)[:300])


# ----------------------------------------------------------------------------- attention


def attention_case(B, H, T, F, D, dtype, rope: str | None, deterministic: bool) -> list[dict]:
    """fwd + bwd of the Triton attention (frame_causal, as the predictor) vs float64 math."""
    from fastlam.ops import st_attention
    from fastlam.ops.triton_attention import ROPE_FUSION_ENV

    rope_mod = None
    if rope is not None:
        from benchmarks.bench_attention import rope_for

        rope_mod = rope_for(F)
        os.environ[ROPE_FUSION_ENV] = rope
    try:
        L = T * F
        q, k, v = (torch.randn(B, H, L, D, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
        do = torch.randn(B, H, L, D, device=DEV, dtype=dtype)
        kw = dict(frame_len=F, mask="frame_causal", rope=rope_mod)
        poison_allocator()
        out = st_attention(q, k, v, backend="triton", deterministic=deterministic, **kw)
        out.backward(do)
        q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = st_attention(q64, k64, v64, backend="math", **kw)
        ref.backward(do.double())
        qp, kp, vp = (x.detach().clone().requires_grad_() for x in (q, k, v))
        pt = st_attention(qp, kp, vp, backend="math", **kw)
        pt.backward(do)
        atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
        rows = [check(out, ref, pt, 2.0, atol, "out")]
        for name, x, r, p in (("dq", q, q64, qp), ("dk", k, k64, kp), ("dv", v, v64, vp)):
            rows.append(check(x.grad, r.grad, p.grad, 3.0, atol, name))
        return rows
    finally:
        os.environ.pop(ROPE_FUSION_ENV, None)


def attention_poison_case(dtype, F, D) -> list[dict]:
    """Kernels launched into NaN-filled out / lse / dq dk dv: every element must be written."""
    from fastlam.kernels import attention as kernels

    B, H, L = 1, 2, 3 * F
    q, k, v = (torch.randn(B, H, L, D, device=DEV, dtype=dtype) for _ in range(3))
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, L), float("nan"), device=DEV)
    kernels.attention_forward(q, k, v, frame_len=F, mask="frame_causal", scale=D**-0.5, out=out, lse=lse)
    rows = [dict(check="out,lse written", ok=bool(torch.isfinite(out).all() and torch.isfinite(lse).all()))]
    do = torch.randn_like(q)
    for det in (True, False):
        grads = tuple(torch.full_like(q, float("nan")) for _ in range(3))
        kernels.attention_backward(do, q, k, v, out, lse, frame_len=F, mask="frame_causal", scale=D**-0.5,
                                   deterministic=det, grads=grads)
        rows.append(dict(check=f"grads written (deterministic={det})", ok=all(bool(torch.isfinite(g).all())
                                                                             for g in grads)))
    return rows


# ----------------------------------------------------------------------------- fused ops


def kernel_noise(n: int, d: int, seed: int) -> torch.Tensor:
    """The fused Gaussian kernel's eps for ``seed`` (float64): a sample with mu = 0, logvar = 0
    is eps itself."""
    zeros = torch.zeros(n, d, device=DEV)
    return gaussian_sample_kl(zeros, zeros, seed=seed, backend="triton")[0].double()


def gaussian_sample_kl_on_noise(mu, logvar, backend: str, *, seed: int, noise: torch.Tensor) -> torch.Tensor:
    """``cat(z.flatten(), kl)`` of the sample + KL, comparable across backends: Triton's fused
    kernel draws eps from ``seed``, the torch reference is handed that same eps as ``noise``
    (:func:`kernel_noise`). For :func:`fastlam.testing.run_three` (here and in the unit tests)."""
    if backend == "triton":
        z, kl = gaussian_sample_kl(mu, logvar, seed=seed, backend="triton")
    else:
        z = gaussian_sample(mu, logvar, noise=noise.to(mu.dtype), backend="torch")
        kl = gaussian_kl(mu, logvar, backend="torch")
    return torch.cat([z.flatten(), kl.reshape(1)])


def ops_cases(dtype, sizes: dict) -> list[tuple[str, callable]]:
    """(name, fn() -> rows) for the losses, AdaLN, regularizers and VQ."""
    from fastlam.ops import (frame_adaln_modulate, frame_gated_residual, prediction_loss, sparse_regularizer,
                             vector_quantize)

    atol = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}[dtype]
    B, T, N, D = sizes["B"], sizes["T"], sizes["N"], sizes["D"]

    def rows_of(results, names):
        return [check(o, r, p, 2.0 if i == 0 else 3.0, atol, n) for i, (n, (o, p, r)) in enumerate(zip(names, results))]

    def pred_loss(kind):
        def run():
            pred = torch.randn(B, T * N, D, requires_grad=True)
            target = torch.randn(B, T * N, D) * 1.5 + 0.3
            fn = lambda p, backend: prediction_loss(p, target.to(p), kind=kind, backend=backend)  # noqa: E731
            return rows_of(run_three(fn, [pred], dtype), ["loss", "dpred"])
        return run

    def adaln():
        x = (torch.randn(B, T * N, D) * 2 + 0.5).requires_grad_()
        shift, scale = torch.randn(B, T, D).requires_grad_(), (0.3 * torch.randn(B, T, D)).requires_grad_()
        fn = lambda x, s, c, backend: frame_adaln_modulate(x, s, c, N, backend=backend)  # noqa: E731
        return rows_of(run_three(fn, [x, shift, scale], dtype), ["y", "dx", "dshift", "dscale"])

    def gated():
        x, br = torch.randn(B, T * N, D).requires_grad_(), torch.randn(B, T * N, D).requires_grad_()
        gate = torch.randn(B, T, D).requires_grad_()
        fn = lambda x, b, g, backend: frame_gated_residual(x, b, g, N, backend=backend)  # noqa: E731
        return rows_of(run_three(fn, [x, br, gate], dtype), ["out", "dx", "dbranch", "dgate"])

    def sparse(n):
        def run():
            z = (0.7 * torch.randn(n, 128) + 0.2 * torch.randn(128)).requires_grad_()
            fn = lambda z, backend: torch.stack(list(sparse_regularizer(z, l_l1=0.1, backend=backend).values()))  # noqa: E731
            return rows_of(run_three(fn, [z], dtype), ["terms", "dz"])
        return run

    def gaussian(n):
        def run():
            d, seed = 128, 1234
            eps = kernel_noise(n, d, seed)
            h = torch.randn(n, 2 * d)
            h[:, d:] *= 0.8

            def fn(h, backend):
                return gaussian_sample_kl_on_noise(*h.chunk(2, dim=-1), backend, seed=seed, noise=eps)
            rows = rows_of(run_three(fn, [h.requires_grad_()], dtype), ["z,kl", "dh"])
            fn_kl = lambda m, lv, backend: gaussian_kl(m, lv, backend=backend)  # noqa: E731
            mu, lv = torch.randn(n, d).requires_grad_(), (0.8 * torch.randn(n, d)).requires_grad_()
            return rows + rows_of(run_three(fn_kl, [mu, lv], dtype), ["kl", "dmu", "dlogvar"])
        return run

    def vq(n):
        def run():
            z, cb = torch.randn(n, 128).requires_grad_(), torch.randn(1024, 128).requires_grad_()

            def fn(z, codebook, backend):
                z_q, _, cb_loss, commit = vector_quantize(z, codebook, 0.25, backend=backend)
                return torch.cat([z_q.flatten(), cb_loss.reshape(1), commit.reshape(1)])
            return rows_of(run_three(fn, [z, cb], dtype), ["z_q,losses", "dz", "dcodebook"])
        return run

    small, large = sizes["latents"]
    return [("prediction_loss l1", pred_loss("l1")), ("prediction_loss l2", pred_loss("l2")),
            ("frame_adaln_modulate", adaln), ("frame_gated_residual", gated),
            (f"sparse_regularizer n={small}", sparse(small)), (f"gaussian n={small}", gaussian(small)),
            (f"vq n={small}", vq(small)), (f"sparse_regularizer n={large}", sparse(large)),
            (f"gaussian n={large}", gaussian(large)), (f"vq n={large}", vq(large))]


# ----------------------------------------------------------------------------- driver


def _att_case(att, dtype, F, D, rope, det):
    name = f"attention F={F} hd={D} rope={rope or 'none'} dq={'deterministic' if det else 'atomic'}"
    return ("attention", name, dtype, lambda: attention_case(att["B"], att["H"], att["T"], F, D, dtype, rope, det))


PARTS = ("all", "first", "rest")


def plan(dry_run: bool, part: str = "all"):
    """[(group, name, dtype, fn)] in order of importance; ``part`` (:data:`PARTS`): all of them,
    or the first dtype's head-dim-64, poisoned-buffer and fused-op cases, or the others."""
    if dry_run:  # one case of each kind is enough to prove the script runs; the unit tests cover the rest
        att = dict(B=1, H=2, T=3)
        plan_att = [(torch.float16, 16, 16, None, False), (torch.float32, 18, 16, "kernel", True)]
        poison, dtypes = [(torch.float32, 18, 16)], [torch.float16]
        sizes = dict(B=2, T=3, N=7, D=40, latents=(13, 61))
    else:
        att = dict(B=2, H=4, T=4)
        frames = [(256, 64), (258, 64), (256, 128), (258, 128)]
        combos = ((None, False), ("kernel", True), ("prepass", False))  # rope fusion, deterministic dQ
        dtypes = [torch.bfloat16, torch.float16]
        plan_att = [(dt_, F, D, rope, det) for dt_ in dtypes for F, D in frames for rope, det in combos]
        poison = [(dt_, 258, 64) for dt_ in dtypes]
        sizes = dict(B=2, T=7, N=256, D=1024, latents=(100, 8192))
    # Per dtype: head dim 64 (the paper's), the poisoned-buffer check, the fused ops, then head
    # dim 128, so a budget cut drops the least important cases.
    cases = []
    first_part_ends = None
    for dtype in dict.fromkeys([c[0] for c in plan_att] + dtypes):
        for dt_, F, D, rope, det in plan_att:
            if dt_ == dtype and D <= 64:
                cases.append(_att_case(att, dtype, F, D, rope, det))
        for dt_, F, D in poison:
            if dt_ == dtype:
                cases.append(("attention", f"attention poisoned buffers F={F} hd={D}", dtype,
                              lambda F=F, D=D, dtype=dtype: attention_poison_case(dtype, F, D)))
        if dtype in dtypes:
            cases += [("fused", name, dtype, fn) for name, fn in ops_cases(dtype, sizes)]
        if first_part_ends is None:
            first_part_ends = len(cases)
        for dt_, F, D, rope, det in plan_att:
            if dt_ == dtype and D > 64:
                cases.append(_att_case(att, dtype, F, D, rope, det))
    return {"all": cases, "first": cases[:first_part_ends], "rest": cases[first_part_ends:]}[part]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_correctness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks/results/gpu")),
                    help="folder for correctness.json / .csv (default: $OUT, else benchmarks/results/gpu)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S", 90)),
                    help="start no new case after this many seconds (default: $BENCH_BUDGET_S, else 90)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, fp32/fp16, Triton interpreter on CPU")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--part", choices=PARTS, default="all",
                    help="first: the first dtype's head-dim-64 and fused-op cases; rest: the others (default: all)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not CUDA and not args.dry_run:
        print("gpu_correctness: no CUDA device; --dry-run runs the tiny CPU version")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    meta = dict(device=torch.cuda.get_device_name() if CUDA else "cpu (Triton interpreter)",
                date=dt.datetime.now(dt.timezone.utc).isoformat(), commit=git_commit(), **versions(),
                rule="max|out-ref| <= 2 x max|pt-ref| + atol (3x for gradients), ref float64, non-finite fails",
                dry_run=args.dry_run, part=args.part)
    stem = "correctness_rest" if args.part == "rest" else "correctness"
    csv_path = args.out / f"{stem}.csv"
    csv_path.unlink(missing_ok=True)  # appended to case by case below
    rows = []

    def record(new_rows):
        rows.extend(new_rows)
        for r in new_rows:
            append_row_csv(csv_path, r, meta, CSV_FIELDS)
        write_json(args.out / f"{stem}.json", meta, rows)

    for group, name, dtype, fn in plan(args.dry_run, args.part):
        if args.only and args.only not in name:
            continue
        dname = str(dtype).replace("torch.", "")
        if rows and time.time() - t0 > args.budget_s:  # the first case always runs
            record([dict(group=group, case=name, dtype=dname, check="", ok=None, status="skipped: budget")])
            continue
        torch.manual_seed(len(rows))
        start = time.time()
        try:
            results = fn()
            status = "ok" if all(r["ok"] for r in results) else "FAIL"
        except Exception as exc:
            results = [dict(check="", ok=False, msg=f"{type(exc).__name__}: {str(exc)[:300]}")]
            status = "error"
            traceback.print_exc()
        record([dict(group=group, case=name, dtype=dname, status=status, seconds=round(time.time() - start, 2), **r)
                for r in results])
        print(f"{status:7s} {dname:9s} {name} ({time.time() - start:.1f} s)", flush=True)
    meta["elapsed_s"] = round(time.time() - t0, 1)
    write_json(args.out / f"{stem}.json", meta, rows)
    n_fail = sum(1 for r in rows if r.get("ok") is False)
    n_ok = sum(1 for r in rows if r.get("ok") is True)
    n_skip = sum(1 for r in rows if r.get("ok") is None)
    print(f"correctness: {n_ok} checks passed, {n_fail} failed, {n_skip} cases skipped (budget)")
    return 1 if n_fail else 0


CSV_FIELDS = ["group", "case", "dtype", "check", "status", "ok", "err", "torch_err", "seconds", "msg"]


def write_json(path: Path, meta: dict, rows: list) -> None:
    write_text_atomic(path, json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    sys.exit(main())
