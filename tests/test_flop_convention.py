"""One backward FLOP convention for every FLOP figure fastlam prints: linear layers count their
backward as 2 x the forward, attention as 2.5 x (FlashAttention's count: 5 matmuls against 2),
in the training-step MFU (fastlam.flops) and in the attention benchmark alike."""
import pytest
import torch

from benchmarks import bench_attention
from benchmarks import bench_train_step as bench
from fastlam import flops


def test_the_factors_are_named_once():
    assert flops.LINEAR_BACKWARD_FACTOR == 2.0
    assert flops.ATTENTION_BACKWARD_FACTOR == 2.5
    assert flops.FORWARD_BACKWARD == (3.0, 3.5)
    # The attention bench counts with the same factor (it used to name its own 2.5 / 3.5).
    assert bench_attention.FWD_BWD_FACTOR == 1.0 + flops.ATTENTION_BACKWARD_FACTOR


def test_training_step_counts_attention_backward_at_2_5x_and_linear_at_2x():
    """A training clip = frozen encoder forward + 3 x the IDM and predictor linear FLOPs + 3.5 x
    their attention FLOPs (it was 3 x everything, so attention's backward was under-counted
    against the attention bench's 2.5 x)."""
    model = bench.build_model(bench.SIZES["tiny"], torch.device("cpu"), 0)
    fwd = flops.lam_flops(model)
    linear = flops.lam_flops(model, passes=(1.0, 0.0))
    attention = flops.lam_flops(model, passes=(0.0, 1.0))
    trainable = ("idm", "predictor")
    for part in trainable:
        assert attention[part] > 0 and linear[part] > 0
        assert linear[part] + attention[part] == pytest.approx(fwd[part], rel=1e-12)
    expected = fwd["encoder"] + sum(3.0 * linear[p] + 3.5 * attention[p] for p in trainable)
    assert flops.lam_train_flops_per_clip(model) == pytest.approx(expected, rel=1e-12)
    assert flops.lam_train_flops_per_clip(model, with_encoder=False) == pytest.approx(
        expected - fwd["encoder"], rel=1e-12)
    # More than the old 3 x forward by exactly half the attention forward.
    old = fwd["encoder"] + 3.0 * (fwd["idm"] + fwd["predictor"])
    assert flops.lam_train_flops_per_clip(model) - old == pytest.approx(
        0.5 * (attention["idm"] + attention["predictor"]), rel=1e-9)


@pytest.mark.parametrize("mask", ["frame_causal", "full"])
def test_the_attention_bench_counts_a_block_s_attention_as_the_training_mfu_does(mask):
    """The attention bench's forward + backward count of (B, H, T frames of F tokens, D) is the
    attention term fastlam.flops adds for one block over B sequences of width H x D."""
    B, H, T, Fl, D = 3, 4, 5, 8, 16
    bench_fwd = bench_attention.forward_flops(B, H, T * Fl, Fl, D, mask)
    mfu_fwd = flops.attention_flops(B, flops.allowed_pairs(T, Fl, mask), H * D)
    assert bench_fwd == mfu_fwd
    assert bench_attention.FWD_BWD_FACTOR * bench_fwd == flops.FORWARD_BACKWARD[1] * mfu_fwd
    row = bench_attention.timing_row(bench_attention.Runner("x", None, mask), mask, (B, H, T, Fl, D),
                                     torch.bfloat16, (2.0, 7.0, 0), peak_flops=mfu_fwd / 1e-3)
    # fwd at 2 ms and fwd + bwd (3.5 x the work) at 7 ms: the same rate, half the "peak" each.
    assert row["fwd_peak_share"] == row["fwd_bwd_peak_share"] == 0.5


def test_the_training_log_s_mfu_and_the_step_bench_use_this_count():
    """Throughput (the trainer's clips/s and MFU) and bench_train_step count a clip with
    lam_train_flops_per_clip; the V-JEPA 2-AC step in the bench with the same factors."""
    from fastlam.distributed import Throughput

    model = bench.build_model(bench.SIZES["tiny"], torch.device("cpu"), 0)
    speed = Throughput(model, torch.device("cpu"), world_size=1)
    assert speed.flops_per_clip == flops.lam_train_flops_per_clip(model, with_encoder=True)
    assert bench.train_flops_per_clip(model, bench.SIZES["tiny"], "video") == speed.flops_per_clip

    cfg = bench.ACPredictorConfig(embed_dim=24, width=32, depth=2, heads=2, grid_size=2)
    size = bench.Size("ac_tiny", "ac", cfg, 2, modes=("states",), ac_frames=4)
    ac = bench.build_model(size, torch.device("cpu"), 0)
    linear = bench.ac_flops(ac, 4, size.ac_rollout, passes=(1.0, 0.0))
    attention = bench.ac_flops(ac, 4, size.ac_rollout, passes=(0.0, 1.0))
    assert linear > 0 and attention > 0
    assert linear + attention == pytest.approx(bench.ac_flops(ac, 4, size.ac_rollout), rel=1e-12)
    assert bench.train_flops_per_clip(ac, size, "states") == pytest.approx(3.0 * linear + 3.5 * attention, rel=1e-12)
