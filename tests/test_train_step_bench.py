"""CPU tier of benchmarks/bench_train_step.py and of the backend switch it relies on.

The tiny size runs the same training step (same weights, data and seed) on every backend
that can train on CPU and checks the losses agree:

- ``reference`` (SDPA with the dense mask, unfused ops) and ``fastlam_triton`` (fastlam's
  kernels under the Triton interpreter) must give the same first-step loss within rtol 1e-5
  (same weights and inputs, fp32; only the summation order differs), the same gradients of
  every parameter within 1e-4 relative (norm of the difference over the norm; measured
  ~1e-6) and the same second-step loss within rtol 5e-3 (after one Muon + AdamW update:
  Muon's Newton-Schulz iteration runs in bf16, which turns ~1e-6 gradient differences into
  1e-4..1e-3 relative differences of the next loss at the tiny size's large steps).
- ``flex_attention`` is not a training step on CPU (FlexAttention has no CPU backward): the
  benchmark must record it as skipped with that reason.
- ``reference_compiled`` is not run here: inductor's C++ compile of the blocks takes minutes on
  two cores, beyond this file's 90 s budget. It runs in the GPU suite.

Timings on CPU are printed (run with ``-s``), never asserted.
"""
import json
import os

import pytest
import torch

from benchmarks import bench_train_step as bench
from fastlam.ops import use_backend
from fastlam.ops.dispatch import use_triton
from fastlam.ops.attention import AttentionRequest, dense_mask, select_backend

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
CPU = torch.device("cpu")


def _req(mask="frame_causal"):
    return AttentionRequest(4, mask, None, 0.25, None, False, False)


# ----------------------------------------------------------------------------- use_backend


def test_use_backend_switches_auto_for_attention_and_ops_and_restores():
    q = torch.randn(1, 2, 8, 16)
    assert select_backend(q, _req()) == "torch"  # CPU "auto" never picks the interpreter
    assert use_triton("auto", q) is False
    with use_backend("math"):
        assert select_backend(q, _req()) == "math"
        assert use_triton("auto", q) is False
        with use_backend(attention="torch"):
            assert select_backend(q, _req()) == "torch"
        assert select_backend(q, _req()) == "math"
        # An explicit backend always wins over the switched default.
        assert select_backend(q, _req(), backend="torch") == "torch"
        assert use_triton("torch", q) is False
    assert select_backend(q, _req()) == "torch"
    if INTERPRETER:
        with use_backend("triton"):
            assert select_backend(q, _req()) == "triton"
            assert use_triton("auto", q) is True
        with use_backend(attention="flex", ops="triton"):
            assert select_backend(q, _req()) == "flex"
            assert use_triton("auto", q) is True
    assert use_triton("auto", q) is False


def test_use_backend_restores_after_an_error_and_rejects_bad_names():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="boom"):
        with use_backend("math"):
            raise RuntimeError("boom")
    assert select_backend(q, _req()) == "torch"
    with pytest.raises(ValueError, match="attention"):
        with use_backend("nope"):
            pass
    with pytest.raises(ValueError, match="ops"):
        with use_backend(ops="flex"):
            pass
    with pytest.raises(ValueError, match="pass a backend"):
        with use_backend():
            pass


def test_forced_backend_raises_instead_of_falling_back():
    q = torch.randn(1, 2, 8, 16, requires_grad=True)
    with use_backend(attention="flex"), pytest.raises(ValueError, match="no backward on CPU"):
        select_backend(q, _req())


# ----------------------------------------------------------------------------- the step and its count


def _tiny(regularizer="sparse"):
    return bench.Size("tiny", "lam", bench.tiny_config(regularizer), 2)


@pytest.mark.parametrize("mode", ["states", "video"])
def test_phased_step_is_the_models_loss(mode):
    """The benchmark writes the step out part by part (to time the parts): its loss must be
    model.forward's, and the parts must add up to the step."""
    size = _tiny()
    model = bench.build_model(size, CPU, 0)
    data = bench.make_batch(size, mode, 2, CPU, 0)
    with use_backend("torch"):
        with torch.no_grad():
            expected = model(**({"video": data} if mode == "video" else {"states": data})).loss
        opts = bench.build_optimizers(model, bench.OptimConfig())
        clock = bench.PhaseClock(CPU)
        loss = bench.lam_step(model, opts, [p for p in model.parameters() if p.requires_grad], data, mode, clock,
                              torch.autocast("cpu", enabled=False))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    marks = clock.times_ms()
    assert {"loss_bwd", "predictor_bwd", "reg_bwd"} <= set(marks)  # every gradient hook fired
    assert list(marks.values()) == sorted(marks.values())
    parts = bench.lam_phases(marks)
    assert all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(marks["optimizer"], rel=1e-9)
    # Parameters moved: the optimizer step is part of the timed step.
    assert all(p.grad is None for p in model.parameters())


def test_flop_count_matches_torch_flop_counter():
    """The analytic count (dense=True counts every query-key pair, as the explicit-softmax
    attention computes them) equals what torch's FlopCounterMode sees on the math backend."""
    from torch.utils.flop_counter import FlopCounterMode

    size = _tiny("noisy")  # no matmul in the regularizer (the sparse one has a covariance)
    model = bench.build_model(size, CPU, 0)
    video = bench.make_batch(size, "video", 3, CPU, 0)
    with use_backend("math"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(video=video)
    assert counter.get_total_flops() == pytest.approx(3 * sum(bench.lam_flops(model, dense=True).values()), rel=1e-12)
    # The masked count is smaller (the frame-causal predictor and encoder skip future frames).
    assert sum(bench.lam_flops(model).values()) < sum(bench.lam_flops(model, dense=True).values())

    cfg = bench.ACPredictorConfig(embed_dim=24, width=32, depth=2, heads=2, grid_size=2)
    ac = bench.ACPredictor(cfg)
    states, actions, proprio = torch.randn(2, 4, 4, 24), torch.randn(2, 3, 7), torch.randn(2, 4, 7)
    with use_backend("math"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        ac.loss(states, actions, proprio, rollout_steps=2)
    assert counter.get_total_flops() == pytest.approx(2 * bench.ac_flops(ac, 4, 2, dense=True), rel=1e-12)


def test_batch_from_peaks():
    gib = 2**30
    # 10 GiB fixed + 2 GiB per clip in 80 GiB: 0.9 * 80 = 72 -> 31 clips -> 24 (multiple of 8).
    assert bench.batch_from_peaks({2: 14 * gib, 4: 18 * gib}, 80 * gib) == (24, 10 * gib, 2 * gib)
    assert bench.batch_from_peaks({4: 18 * gib, 2: 14 * gib}, 30 * gib)[0] == 8  # 8.5 -> 8, below 16 kept
    assert bench.batch_from_peaks({2: 14 * gib, 4: 18 * gib}, 5 * gib)[0] == 1  # never below 1
    assert bench.batch_from_peaks({2: 2.0, 4: 4.0}, 1e12, cap=64)[0] == 64


def test_allowed_pairs_frame_causal():
    # 3 frames of 2 tokens: frame t sees (t + 1) frames -> 2 * 2 * (1 + 2 + 3) pairs.
    assert bench.allowed_pairs(3, 2, "frame_causal") == 24
    mask = dense_mask(6, 2, "frame_causal")
    assert int(mask.sum()) == 24
    with pytest.raises(ValueError, match="mask"):
        bench.allowed_pairs(3, 2, "causal")


# ----------------------------------------------------------------------------- the CPU tier


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_backends_run_the_same_step(tmp_path, capsys):
    backends = ["reference", "flex_attention"] + (["fastlam_triton"] if INTERPRETER else [])
    rc = bench.main(["--sizes", "tiny", "--out", str(tmp_path), "--backends", *backends,
                     "--steps", "2", "--warmup", "0", "--budget-s", "600"])
    assert rc == 0
    report = json.loads((tmp_path / "train_step.json").read_text())
    rows = {(r["mode"], r["backend"]): r for r in report["rows"]}
    assert report["meta"]["complete"] and report["meta"]["commit"]
    for mode in ("states", "video"):
        ref = rows[(mode, "reference")]
        assert ref["status"] == "ok" and ref["steps_timed"] == 2 and ref["step_ms"] > 0
        assert ref["tokens_per_clip"] == 3 * 4 and ref["train_flop_per_clip"] > 0
        assert ref["loss_last"] != ref["loss_first"]  # the optimizer stepped between them
        assert "no backward on CPU" in rows[(mode, "flex_attention")]["status"]
        if INTERPRETER:
            ours = rows[(mode, "fastlam_triton")]
            assert ours["status"] == "ok"
            assert ours["loss_first"] == pytest.approx(ref["loss_first"], rel=1e-5)
            assert ours["loss_last"] == pytest.approx(ref["loss_last"], rel=5e-3)
    # The encoder only runs (and is only timed) when it is part of the step.
    assert rows[("states", "reference")]["encoder_ms"] < 0.5 * rows[("video", "reference")]["step_ms"]
    csv_text = (tmp_path / "train_step.csv").read_text()
    assert csv_text.splitlines()[0].startswith("size,mode,backend,status") and "tiny,video,reference,ok" in csv_text
    assert (tmp_path / "train_step.png").stat().st_size > 0
    with capsys.disabled():
        print("\nCPU timings (reported, not asserted):")
        for r in report["rows"]:
            if r["status"] == "ok":
                print(f"  {r['mode']}/{r['backend']}: step {r['step_ms']:.0f} ms, loss {r['loss_first']:.6f} -> "
                      f"{r['loss_last']:.6f}")


@pytest.mark.skipif(not INTERPRETER, reason="the Triton backend needs CUDA or TRITON_INTERPRET=1")
def test_tiny_triton_gradients_match_reference():
    size = _tiny()
    init = bench.build_model(size, CPU, 0).state_dict()
    data = bench.make_batch(size, "states", 2, CPU, 0)
    grads = {}
    for backend in ("torch", "triton"):
        model = bench.build_model(size, CPU, 0, init)
        with use_backend(backend):
            model(states=data).loss.backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads["torch"].keys() == grads["triton"].keys() and len(grads["torch"]) > 30
    for name, ref in grads["torch"].items():
        ours = grads["triton"][name]
        assert ours is not None and ref is not None, name
        rel = ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        assert rel < 1e-4, f"{name}: relative gradient difference {rel:.2e}"


def test_ac_predictor_step_runs_the_same_on_every_cpu_backend():
    """The V-JEPA 2-AC step (teacher forcing + 2-step rollout, 2 prefix tokens per frame) at a
    tiny size: the path the ``ac`` GPU size takes."""
    cfg = bench.ACPredictorConfig(embed_dim=24, width=32, depth=1, heads=2, grid_size=2)
    size = bench.Size("ac_tiny", "ac", cfg, 2, modes=("states",), ac_frames=4)
    init = bench.build_model(size, CPU, 0).state_dict()
    data = bench.make_batch(size, "states", 2, CPU, 0)
    assert [tuple(t.shape) for t in data] == [(2, 4, 4, 24), (2, 3, 7), (2, 4, 7)]
    names = ["reference"] + (["fastlam_triton"] if INTERPRETER else [])
    runs = {n: bench.run_variant(size, "states", n, 2, data, CPU, init, steps=1, warmup=1) for n in names}
    ref = runs["reference"]
    assert ref.row["tokens_per_clip"] == 3 * (4 + 2) and ref.row["predictor_ms"] > 0
    assert ref.row["train_flop_per_clip"] == pytest.approx(
        bench.ac_flops(bench.build_model(size, CPU, 0), 4, 2, passes=(3.0, 3.5)), rel=1e-3)
    assert len(ref.losses) == 2 and ref.losses[0] != ref.losses[1]
    if INTERPRETER:
        assert runs["fastlam_triton"].losses[0] == pytest.approx(ref.losses[0], rel=1e-5)
        assert runs["fastlam_triton"].losses[1] == pytest.approx(ref.losses[1], rel=5e-3)


@pytest.mark.gpu
def test_tiny_step_on_cuda_times_parts_and_memory():
    """The CUDA path of the benchmark (events, bf16 autocast, peak memory, measured peak) at the
    tiny size, so the GPU suite's tests catch a broken benchmark before its long run."""
    size, dev = _tiny(), torch.device("cuda")
    init = {k: v.cpu() for k, v in bench.build_model(size, dev, 0).state_dict().items()}
    data = bench.make_batch(size, "video", 2, dev, 0)
    rows = {n: bench.run_variant(size, "video", n, 2, data, dev, init, steps=2, warmup=1).row
            for n in ("reference", "fastlam_triton")}
    for r in rows.values():
        assert r["status"] == "ok" and r["peak_mem_gb"] > 0 and r["step_ms"] > 0 and r["encoder_ms"] > 0
        assert all(r[f"{k}_ms"] >= 0 for k in ("idm", "predictor", "losses", "optimizer"))
    # bf16 autocast: the first (pre-update) losses agree to bf16 precision.
    assert rows["fastlam_triton"]["loss_first"] == pytest.approx(rows["reference"]["loss_first"], rel=2e-2)
    assert bench.measured_bf16_peak(n=2048, iters=5) > 1e12


@pytest.mark.skipif(not INTERPRETER, reason="the Triton backend needs CUDA or TRITON_INTERPRET=1")
def test_forced_triton_takes_the_gpu_dtype_mix():
    """On GPU the step runs under bf16 autocast (bf16 activations, fp32 states and LayerNorm
    outputs) with the paper's noisy regularizer: every fused op forced by use_backend("triton")
    must accept that mix rather than raise (CPU autocast reproduces the dtypes)."""
    size = _tiny("noisy")
    init = bench.build_model(size, CPU, 0).state_dict()
    data = bench.make_batch(size, "states", 2, CPU, 0)
    losses = {}
    for backend in ("torch", "triton"):
        model = bench.build_model(size, CPU, 0, init)
        params = [p for p in model.parameters() if p.requires_grad]
        with use_backend(backend):
            losses[backend] = bench.lam_step(model, bench.build_optimizers(model, bench.OptimConfig()), params, data,
                                             "states", bench.PhaseClock(CPU),
                                             torch.autocast("cpu", dtype=torch.bfloat16))
    # The noisy regularizer's draws differ per backend, but the zero-initialised AdaLN makes
    # the first loss independent of them; bf16 rounding sets the tolerance.
    assert float(losses["triton"]) == pytest.approx(float(losses["torch"]), rel=1e-2)


def test_gpu_sizes_skip_cleanly_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this checks the no-CUDA path")
    assert bench.main(["--out", str(tmp_path / "out")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "huge"])
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "tiny", "--steps", "0"])


def test_one_flop_model_for_the_training_log_and_the_benchmark():
    """fastlam.distributed's MFU (the training log) and this benchmark count the same FLOPs."""
    from fastlam import distributed as fdist
    from fastlam.flops import datasheet_bf16_peak

    model = bench.build_model(bench.SIZES["tiny"], torch.device("cpu"), 0)
    assert fdist.train_flops_per_clip(model) == bench.train_flops_per_clip(model, bench.SIZES["tiny"], "video")
    assert bench.train_flops_per_clip(model, bench.SIZES["tiny"], "states") < fdist.train_flops_per_clip(model)
    # By exact device name: a PCIe H100 is not an SXM one, and an unknown card gets no MFU.
    assert datasheet_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert datasheet_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert datasheet_bf16_peak("NVIDIA H100 NVL") == 835e12
    assert datasheet_bf16_peak("Some Future GPU H100X") is None
