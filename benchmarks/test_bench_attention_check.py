"""CPU tier of benchmarks/bench_attention.py: which runners run here and why the others do not,
the output check every runner passes before it is timed (a wrong runner is reported failing and
never timed), the timed batch and the FLOP accounting (one backward factor, fastlam.flops')."""
import json
import os

import pytest
import torch

from benchmarks import attention_check, bench_attention
from benchmarks.attention_baselines import Runner, make_runners
from fastlam.flops import ATTENTION_BACKWARD_FACTOR
from fastlam.ops import st_attention

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
SHAPE = (1, 2, 3, 18, 16)  # B, H, frames, frame_len (2 prefix tokens, as 258), head_dim: the dry run's
F = SHAPE[3]


def _runners(mask):
    return {r.name: r for r in make_runners(mask, F, "cpu", torch.float32, SHAPE[-1])}


def _check_then_time(runners, mask, monkeypatch, deadline=float("inf")):
    """bench_attention.check_then_time on CPU, recording which runners reach the timing (and
    that the rows so far are handed on after each one: what the bench writes incrementally)."""
    timed, written = [], []

    def bench_one_cpu(fn, q, k, v, do, repeats=1):
        timed.append(fn)
        fn(q, k, v).backward(do)
        return 1.0, 3.0, 0

    monkeypatch.setattr(bench_attention, "bench_one_cpu", bench_one_cpu)
    rows, statuses = bench_attention.check_then_time(
        runners, SHAPE, mask, torch.float32, "cpu", quick=True, deadline=deadline, peak_flops=1e12,
        on_row=lambda done, now: written.append([row["backend"] for row in done]))
    assert written == [[row["backend"] for row in rows[:i + 1]] for i in range(len(rows))]
    return rows, {s["backend"]: s for s in statuses}, timed


@pytest.mark.parametrize("mask", ["frame_causal", "frame_local"])
def test_every_runner_runs_or_says_why_not_on_cpu(mask):
    runners = _runners(mask)
    for r in runners.values():
        assert (r.fn is None) == bool(r.skipped), r
    on_cuda_only = (["cudnn_sdpa_causal", "fastlam_triton_det", "fastlam_triton_rope_kernel", "flex_rope"]
                    if mask == "frame_causal" else ["cudnn_sdpa_reshaped", "sdpa_efficient_reshaped"])
    for name in on_cuda_only + ["flex", "sdpa_dense_mask_efficient"]:
        assert runners[name].fn is None and runners[name].skipped, name
    assert "CUDA" in runners["flex"].skipped and "cpu" in runners["sdpa_dense_mask_efficient"].skipped
    lib = "flash_attn_causal" if mask == "frame_causal" else "flash_attn_reshaped"
    assert runners[lib].fn is None  # flash-attn has no CPU kernels, installed or not
    assert runners["sdpa_dense_mask_math"].fn is not None
    # The causal bounds compute causal attention: their check and FLOPs follow that mask.
    if mask == "frame_causal":
        assert runners["sdpa_flash_causal"].computes == "causal" and runners[lib].computes == "causal"
    else:
        assert runners["sdpa_math_reshaped"].fn is not None and runners["sdpa_math_reshaped"].computes == mask
    assert (runners["fastlam_triton"].fn is not None) == INTERPRETER


@pytest.mark.parametrize("mask", ["frame_causal", "frame_local"])
def test_runnable_runners_pass_the_check_and_are_timed(mask, monkeypatch):
    runners = [r for r in _runners(mask).values() if r.fn is not None]
    rows, status, timed = _check_then_time(runners, mask, monkeypatch)
    assert all(status[r.name]["status"] == "ok" for r in runners), status
    assert [row["backend"] for row in rows] == [r.name for r in runners] and len(timed) == len(runners)
    for r in runners:
        assert set(status[r.name]["check_errors"]) == {"out", "dq", "dk", "dv"}
        assert all(err <= bound for err, bound in status[r.name]["check_errors"].values())


def _attend(q, k, v):
    return st_attention(q, k, v, frame_len=F, mask="frame_causal", backend="math")


def _wrong_gradient(q, k, v):
    o = _attend(q, k, v)
    return o + 0.5 * (o - o.detach())  # the right output, gradients 1.5 x


WRONG = {
    "wrong_mask": lambda q, k, v: st_attention(q, k, v, frame_len=F, mask="full", backend="math"),
    "wrong_gradient": _wrong_gradient,
    "unwritten_row": lambda q, k, v: torch.cat([_attend(q, k, v)[:, :, :-1],
                                                torch.full_like(q[:, :, -1:], float("nan"))], 2),
    "no_gradient_for_k": lambda q, k, v: _attend(q, k.detach(), v),
    "raises": lambda q, k, v: (_ for _ in ()).throw(RuntimeError("kernel launch failed")),
}


def test_a_wrong_runner_is_reported_failing_and_not_timed(monkeypatch):
    right = Runner("right", _attend, "frame_causal")
    wrong = [Runner(name, fn, "frame_causal") for name, fn in WRONG.items()]
    rows, status, timed = _check_then_time([right] + wrong, "frame_causal", monkeypatch)
    assert timed == [_attend] and [row["backend"] for row in rows] == ["right"]
    assert status["right"]["status"] == "ok"
    for r in wrong:
        assert status[r.name]["status"].startswith("failed check: "), status[r.name]
    assert "out" in status["wrong_mask"]["status"] and "dq" in status["wrong_gradient"]["status"]
    assert "non-finite" in status["unwritten_row"]["status"]
    assert "dk: no gradient" in status["no_gradient_for_k"]["status"]
    assert "kernel launch failed" in status["raises"]["status"]
    # Skipped runners keep their reason and are not timed either.
    rows, status, timed = _check_then_time([Runner("absent", None, "frame_causal", skipped="not installed")],
                                           "frame_causal", monkeypatch)
    assert rows == [] and timed == [] and status["absent"]["status"] == "skipped: not installed"


def test_the_check_applies_the_runner_s_rope_to_its_reference(monkeypatch):
    """RoPE runners are judged against the rotated reference: one that rotates passes, one that
    forgets the rotation fails and is not timed."""
    from benchmarks.attention_baselines import rope_for

    rope = rope_for(F)

    def rotated(q, k, v):
        return st_attention(q, k, v, frame_len=F, mask="frame_causal", rope=rope, backend="math")

    runners = [Runner("rotated", rotated, "frame_causal", rope), Runner("not_rotated", _attend, "frame_causal", rope)]
    rows, status, timed = _check_then_time(runners, "frame_causal", monkeypatch)
    assert timed == [rotated] and status["rotated"]["status"] == "ok"
    assert status["not_rotated"]["status"].startswith("failed check: out")


def test_past_the_deadline_nothing_is_checked_or_timed(monkeypatch):
    rows, status, timed = _check_then_time([Runner("right", _attend, "frame_causal")], "frame_causal", monkeypatch,
                                           deadline=0.0)
    assert rows == [] and timed == [] and status["right"]["status"] == "skipped: time budget"


def test_check_shape_is_batch_one_and_whole_frames():
    assert attention_check.check_shape(64, 16, 8, 256, 64) == (1, 16, 8, 256, 64)
    assert attention_check.check_shape(1, 16, 32, 576, 64) == (1, 16, 7, 576, 64)  # 4032 <= 4096 tokens
    assert attention_check.check_shape(1, 2, 3, 8192, 16) == (1, 2, 1, 8192, 16)


def test_timed_batch_leaves_launch_overhead_out_of_the_measurement():
    # The paper's predictor: 9.7 GFLOP per sample forward -> 64 samples (0.62 TFLOP).
    B = bench_attention.timed_batch(4, 16, 2048, 256, 64, "frame_causal")
    assert B == 64 and bench_attention.forward_flops(B, 16, 2048, 256, 64, "frame_causal") >= 0.5e12
    assert bench_attention.forward_flops(B // 2, 16, 2048, 256, 64, "frame_causal") < 0.5e12
    # frame_local computes 8x fewer pairs: 256 samples (1 GiB per tensor).
    assert bench_attention.timed_batch(4, 16, 2048, 256, 64, "frame_local") == 256
    # Where the FLOPs would need more, the tensor cap (2 GiB each) stops the doubling.
    B = bench_attention.timed_batch(1, 1, 16, 16, 8, "frame_local")
    assert B * 16 * 8 * 2 <= bench_attention.MAX_TIMED_TENSOR_BYTES < 2 * B * 16 * 8 * 2
    assert bench_attention.timed_batch(1, 16, 18432, 576, 64, "frame_causal") == 1  # 0.72 TFLOP already


def test_flops_count_the_backward_as_fastlam_flops_does():
    B, H, T, Fl, D = 2, 4, 3, 8, 16
    row = bench_attention.timing_row(Runner("x", None, "frame_causal"), "frame_causal", (B, H, T, Fl, D),
                                     torch.bfloat16, (1.0, 4.0, 0), peak_flops=1e12)
    fwd = 4.0 * B * H * D * Fl * Fl * (1 + 2 + 3)  # frame t of 3 sees t + 1 frames
    assert row["fwd_tflops"] == pytest.approx(round(fwd / 1e-3 / 1e12, 1))
    assert row["fwd_bwd_tflops"] == pytest.approx(round((1 + ATTENTION_BACKWARD_FACTOR) * fwd / 4e-3 / 1e12, 1))
    assert row["bwd_tflops"] == pytest.approx(round(ATTENTION_BACKWARD_FACTOR * fwd / 3e-3 / 1e12, 1))
    assert row["fwd_peak_share"] == pytest.approx(round(fwd / 1e-3 / 1e12, 3))
    causal = bench_attention.timing_row(Runner("c", None, "causal"), "frame_causal", (B, H, T, Fl, D),
                                        torch.bfloat16, (1.0, 4.0, 0), peak_flops=1e12)
    assert causal["computes"] == "causal" and causal["mask"] == "frame_causal"
    assert causal["unmasked_fraction"] == pytest.approx(round((24 * 25 / 2) / 24**2, 4))


def test_the_matmul_peak_is_not_measured_on_cpu():
    """A CPU matmul rate is no GPU peak: the dry run reports the shares as not measured (None),
    not as a share of some CPU figure."""
    assert bench_attention.matmul_peak("cpu") is None
    row = bench_attention.timing_row(Runner("x", None, "frame_local"), "frame_local", (1, 2, 3, 8, 16),
                                     torch.float32, (1.0, 4.0, 0), peak_flops=None)
    assert row["fwd_peak_share"] is None and row["fwd_bwd_peak_share"] is None and row["fwd_tflops"] >= 0


@pytest.mark.slow
def test_dry_run_writes_every_runner_with_its_status(tmp_path):
    """The CLI end to end on CPU (the GPU suite's dry run runs the same): every runner of each
    mask is in attention.json, timed or with its reason, and the matmul peak is recorded."""
    assert bench_attention.main(["--dry-run", "--quick", "--out", str(tmp_path), "--masks", "frame_local"]) == 0
    result = json.loads((tmp_path / "attention.json").read_text())
    names = [s["backend"] for s in result["runners"]]
    assert names == [r.name for r in make_runners("frame_local", F, "cpu", torch.float32, SHAPE[-1])]
    assert all(s["status"] == "ok" or s["status"].startswith("skipped: ") for s in result["runners"])
    assert {r["backend"] for r in result["rows"]} == {s["backend"] for s in result["runners"] if s["status"] == "ok"}
    assert result["meta"]["matmul_peak_tflops"] is None and "not measured" in result["meta"]["matmul_peak"]
    assert "2.5x" in result["meta"]["flops_rule"] and result["meta"]["complete"]
    assert result["rows"] and all(r["fwd_bwd_peak_share"] is None for r in result["rows"])
    # The CSV holds the same timed rows (written after each one, so a run cut off keeps them).
    assert len((tmp_path / "attention.csv").read_text().splitlines()) == 1 + len(result["rows"])
