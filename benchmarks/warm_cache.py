"""Step 0 of the GPU suite: compile first, in parallel, then measure.

Triton compiles a kernel once per specialization (constexprs such as the mask kind, head dim,
RoPE flag and tile; the dtypes; integers divisible by 16 or equal to 1, so 256- and 258-token
frames differ) and caches the result on disk (``TRITON_CACHE_DIR``, by default
``~/.triton/cache``). Serially, inside each step's budget, that costs 4.6-9.5 s per attention
specialization on sm_90 (issue 25). This step runs every launch the later steps make, once, at
their exact shapes and dtypes, in a pool of one process per CPU core that share that cache: the
correctness cases (:func:`benchmarks.gpu_correctness.plan`), fastlam's attention runners and
FlexAttention at the check and timed shapes of :mod:`benchmarks.bench_attention` (Inductor
keeps Flex's compiled graphs in its own on-disk caches, shared the same way) and, on a GPU, one
paper-size training step on the Triton path (:mod:`benchmarks.bench_train_step`). Each later
step then loads its kernels from the cache instead of compiling them. Jobs are listed in the
suite's order of value (the first correctness part, the timed attention, the training step, the
other correctness cases), so a budget cut drops the least useful ones; ``warmup.csv`` gets a
line per job as it ends (``ok`` means it compiled and ran, whatever its numbers), and jobs not
finished at the budget are listed as such.

Not warmed: tune_tiles' candidate tiles (their compile time is part of what it reports) and
the training step's ``torch.compile`` backends (their compile is a cost bench_train_step
budgets for and reports).

``--dry-run`` (CPU): the same jobs at the tiny shapes under the Triton interpreter, which
compiles nothing but runs every job through the pool; the first job to end always counts, so
a tiny budget still proves the path.

    python -m benchmarks.warm_cache --out DIR [--quick] [--dry-run] [--budget-s S] [--workers N] [--max-jobs N]
"""
from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import git_commit
from benchmarks.result_files import append_row_csv

FIELDS = ["job", "status", "seconds", "worker_pid"]


def same_specialization_batch(batch: int) -> int:
    """A batch no larger than 32 that Triton specializes like ``batch``: the same residue mod 16
    (so every integer argument that is a multiple of the batch keeps its divisibility by 16) and
    1 only when ``batch`` is 1. The timed batches reach gigabytes per tensor; the warm-up runs
    many jobs on the GPU at once."""
    return batch if batch <= 32 else 16 + batch % 16


# Runners of bench_attention whose kernels are compiled here: fastlam's own (Triton), then
# FlexAttention (Inductor-generated Triton, kept in Inductor's on-disk caches), in this order.
WARMED_RUNNER_PREFIXES = ("fastlam", "flex")


def runnable_names(mask: str, frame_len: int, head_dim: int, dry_run: bool) -> list[str]:
    """The runners bench_attention will check and time for ``mask`` at these sizes, on the run's
    device (the ones that cannot run there carry a reason and are left out)."""
    from benchmarks import bench_attention as ba

    device = "cpu" if dry_run else "cuda"
    runners = ba.make_runners(mask, frame_len, device, _attention_dtype(dry_run), head_dim, with_rope=not dry_run)
    return [r.name for r in runners if r.fn is not None and r.name.startswith(WARMED_RUNNER_PREFIXES)]


def attention_jobs(quick: bool, dry_run: bool, names_of=runnable_names) -> list[tuple]:
    """("attention", shape, mask, runner, dry_run) for every warmed runner bench_attention checks
    (at its check shape) and times (at its timed batch), per timed shape and mask; fastlam's
    runners for every shape first, FlexAttention's after. ``names_of(mask, F, D, dry_run)``
    lists the runners (default: :func:`runnable_names`)."""
    from benchmarks import bench_attention as ba

    shapes = ba.DRY_SHAPES if dry_run else ba.QUICK_SHAPES if quick else ba.SHAPES
    masks = ["frame_causal", "frame_local"] + ([] if quick or dry_run else ["full"])
    itemsize = _attention_dtype(dry_run).itemsize
    jobs = []
    for B, H, T, F, D in shapes:
        for mask in masks:
            timed = B if dry_run else ba.timed_batch(B, H, T * F, F, D, mask, itemsize)
            run_shapes = dict.fromkeys([ba.check_shape(B, H, T, F, D), (same_specialization_batch(timed), H, T, F, D)])
            jobs += [("attention", shape, mask, name, dry_run)
                     for name in names_of(mask, F, D, dry_run) for shape in run_shapes]
    return sorted(jobs, key=lambda job: not job[3].startswith(WARMED_RUNNER_PREFIXES[0]))  # stable


def _attention_dtype(dry_run: bool):
    return torch.float32 if dry_run else torch.bfloat16  # as bench_attention checks and times them


def job_list(quick: bool, dry_run: bool, names_of=runnable_names) -> list[tuple]:
    """Every warm-up job, in the suite's order of value: the first correctness part (bf16 head
    dim 64 at 256 and 258 tokens, then the fused ops), the timed attention runners, the
    training step (on a GPU), then the other correctness cases (head dim 128, fp16)."""
    from benchmarks import gpu_correctness

    def correctness(part):
        return [("correctness", part, i, name, dry_run)
                for i, (_, name, _, _) in enumerate(gpu_correctness.plan(dry_run, part))]

    train = [("train_step", quick)] if torch.cuda.is_available() and not dry_run else []
    return correctness("first") + attention_jobs(quick, dry_run, names_of) + train + correctness("rest")


def job_label(job: tuple) -> str:
    if job[0] == "correctness":
        return f"correctness/{job[1]} {job[3]}"
    if job[0] == "attention":
        B, H, T, F, D = job[1]
        return f"attention B={B} H={H} T={T} F={F} D={D} {job[2]} {job[3]}"
    return "train_step paper/states fastlam_triton"


def run_job(job: tuple) -> dict:
    """In a pool worker: make the launches of ``job`` once (compiling what the cache lacks)."""
    start = time.time()
    try:
        if job[0] == "correctness":
            from benchmarks import gpu_correctness

            _, part, index, _, dry_run = job
            gpu_correctness.plan(dry_run, part)[index][3]()
        elif job[0] == "attention":
            _run_attention(*job[1:])
        else:
            _run_train_step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        status = "ok"
    except Exception as exc:  # a job that fails here fails again in its step, which reports it
        status = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return dict(job=job_label(job), status=status, seconds=round(time.time() - start, 2), worker_pid=os.getpid())


def _run_attention(shape, mask, name, dry_run):
    from benchmarks import bench_attention as ba

    B, H, T, F, D = shape
    device = "cpu" if dry_run else "cuda"
    dtype = _attention_dtype(dry_run)
    runner = next(r for r in ba.make_runners(mask, F, device, dtype, D, with_rope=not dry_run) if r.name == name)
    q, k, v = (torch.randn(B, H, T * F, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    runner.fn(q, k, v).backward(torch.randn_like(q))


def _run_train_step():
    from benchmarks import bench_train_step

    # The quick suite's training step (same size, mode and batch: the same specializations),
    # one untimed-quality step on the Triton path.
    with tempfile.TemporaryDirectory() as scratch:
        bench_train_step.main(["--out", scratch, "--sizes", "paper", "--modes", "states", "--batch", "8",
                               "--steps", "1", "--warmup", "0", "--no-plot", "--backends", "fastlam_triton"])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.warm_cache", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for warmup.csv")
    ap.add_argument("--quick", action="store_true", help="the quick suite's shapes")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S", 60)),
                    help="stop waiting for jobs after this many seconds (default: $BENCH_BUDGET_S, else 60)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="processes compiling at once (default: the CPU cores this process may use)")
    ap.add_argument("--max-jobs", type=int, default=None, help="only the first N jobs in order of value")
    return ap


def run_in_pool(jobs: list, job_fn, label_fn, workers: int, budget_s: float, on_row, wait_for_first: bool) -> int:
    """Run ``job_fn(job)`` (a dict row) for every job on ``workers`` spawned processes, in list
    order; ``on_row(row)`` as each ends, and for each job not ended at ``budget_s`` (a row
    saying so; then the pool is cut off). ``wait_for_first``: the budget counts only once a job
    has ended. Returns how many jobs ended."""
    t0 = time.time()
    done = 0
    # spawn: CUDA cannot be used in a forked child; each worker imports torch and fastlam afresh.
    pool = mp.get_context("spawn").Pool(workers)
    try:
        pending = {pool.apply_async(job_fn, (job,)): job for job in jobs}
        while pending:
            for res in [r for r in pending if r.ready()]:
                job = pending.pop(res)
                try:
                    row = res.get()
                except Exception as exc:  # the job could not be sent or its result not returned
                    row = dict(job=label_fn(job), status=f"error: {type(exc).__name__}: {exc}"[:200])
                on_row(row)
                done += 1
            if pending and time.time() - t0 > budget_s and (done or not wait_for_first):
                for job in pending.values():
                    on_row(dict(job=label_fn(job), status="not finished: budget"))
                break
            time.sleep(0.2)
    finally:
        pool.terminate()  # jobs still compiling are cut off; what they cached so far stays
        pool.join()
    return done


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("warm_cache: no CUDA device; --dry-run runs the tiny CPU version")
        return 0
    if args.dry_run:  # inherited by the spawned workers
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # Each worker is already one of the pool's parallel compiles: Inductor (FlexAttention) must
    # not start a compile pool of its own in every worker on top (workers x cores processes).
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "warmup.csv"
    csv_path.unlink(missing_ok=True)
    meta = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)",
                date=dt.datetime.now(dt.timezone.utc).isoformat(), commit=git_commit())
    t0 = time.time()
    jobs = job_list(args.quick, args.dry_run)[:args.max_jobs]
    workers = max(1, min(args.workers, len(jobs)))
    print(f"warm-up: {len(jobs)} jobs on {workers} processes, budget {args.budget_s:.0f} s "
          f"(cache: {os.environ.get('TRITON_CACHE_DIR', '~/.triton/cache')})", flush=True)

    def on_row(row):
        append_row_csv(csv_path, row, meta, FIELDS)
        print(f"{row['status'][:60]:60s} {row.get('seconds', '-')!s:>7} s  {row['job']}", flush=True)

    # A GPU run stops at the budget; a dry run first waits for one job, so it proves the path.
    done = run_in_pool(jobs, run_job, job_label, workers, args.budget_s, on_row, wait_for_first=args.dry_run)
    if done < len(jobs):
        print(f"warm-up: budget reached, {len(jobs) - done} jobs not finished", flush=True)
    print(f"warm-up: {done} of {len(jobs)} jobs ended in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
