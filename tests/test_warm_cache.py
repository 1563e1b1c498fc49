"""benchmarks/warm_cache.py, the GPU suite's first step: it plans one job per specialization the
later steps launch (in their order of value), and runs the jobs at once in spawned worker
processes, writing a row per job as it ends."""
import csv
import itertools
import multiprocessing as mp
import os

import pytest

from benchmarks import bench_attention, gpu_correctness, warm_cache


def _two_runners(mask, frame_len, head_dim, dry_run):
    """Stands in for the runner list, which on a CPU cannot be probed for the CUDA device."""
    return ["flex", "fastlam_triton"]


def test_quick_plan_covers_every_specialization_in_the_order_of_value():
    jobs = warm_cache.job_list(quick=True, dry_run=False, names_of=_two_runners)
    kinds = [job[0] for job in jobs]
    first = [job[3] for job in jobs if job[:2] == ("correctness", "first")]
    rest = [job[3] for job in jobs if job[:2] == ("correctness", "rest")]
    assert first == [name for _, name, _, _ in gpu_correctness.plan(False, "first")]
    assert rest == [name for _, name, _, _ in gpu_correctness.plan(False, "rest")]
    # The first correctness part (bf16 hd64 at 256 and 258 tokens, the fused ops), then the timed
    # attention, then the training step where there is a GPU, then head dim 128 / fp16.
    order = [kind for kind, _ in itertools.groupby(kinds)]
    assert order == ["correctness", "attention"] + (["train_step"] if "train_step" in kinds else []) + ["correctness"]
    assert kinds.index("attention") == len(first) and kinds[-len(rest):] == ["correctness"] * len(rest)

    attention = [job for job in jobs if job[0] == "attention"]
    expected = set()
    for B, H, T, F, D in bench_attention.QUICK_SHAPES:
        for mask in ("frame_causal", "frame_local"):
            timed = bench_attention.timed_batch(B, H, T * F, F, D, mask, 2)
            for shape in (bench_attention.check_shape(B, H, T, F, D),
                          (warm_cache.same_specialization_batch(timed), H, T, F, D)):
                expected |= {(shape, mask, name) for name in ("fastlam_triton", "flex")}
    assert {job[1:4] for job in attention} == expected and len(attention) == len(expected)
    assert {job[1][3] for job in attention} == {256, 258}  # both frame lengths compile separately
    # fastlam's kernels before FlexAttention's, whatever order the runner list has.
    names = [job[3] for job in attention]
    assert names == sorted(names, key=lambda n: n != "fastlam_triton")


@pytest.mark.parametrize("batch", [1, 2, 4, 15, 16, 17, 32, 33, 64, 96, 128, 130, 1024])
def test_warm_up_batch_keeps_the_timed_batch_specialization(batch):
    small = warm_cache.same_specialization_batch(batch)
    assert small <= 32
    assert small % 16 == batch % 16 and (small == 1) == (batch == 1)
    assert small == batch or batch > 32


def _meet(job):
    """A job that ends only when ``parties`` jobs wait at the barrier together: proof that the
    pool runs them at once (in one process after the other it would break at its timeout)."""
    barrier, index = job
    start_pid = os.getpid()
    barrier.wait(timeout=600)
    return dict(job=f"meet {index}", status="ok", worker_pid=start_pid)


@pytest.mark.slow
def test_pool_runs_jobs_at_once_in_worker_processes():
    with mp.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(2)
        rows = []
        done = warm_cache.run_in_pool([(barrier, 0), (barrier, 1)], _meet, lambda job: f"meet {job[1]}", workers=2,
                                      budget_s=float("inf"), on_row=rows.append, wait_for_first=False)
    assert done == 2
    assert sorted(r["status"] for r in rows) == ["ok", "ok"], rows
    pids = {r["worker_pid"] for r in rows}
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.slow
def test_dry_run_compiles_in_worker_processes_and_writes_a_row_per_job(tmp_path):
    planned = warm_cache.job_list(quick=True, dry_run=True)
    assert warm_cache.main(["--out", str(tmp_path), "--dry-run", "--workers", "2", "--max-jobs", "2",
                            "--budget-s", "1e9"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "warmup.csv")))
    assert sorted(r["job"] for r in rows) == sorted(warm_cache.job_label(job) for job in planned[:2])
    assert all(r["status"] == "ok" for r in rows), rows
    assert str(os.getpid()) not in {r["worker_pid"] for r in rows}
