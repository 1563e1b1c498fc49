"""``compile: true``: a steady-state training forward is one graph (no break on any
regularizer, on the torch and the Triton paths), the VQ's codebook edits run outside it with
the eager forward's results, and the compiled run trains with eager's losses."""
import json
import os

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from fastlam.config import ConfigError, load_config
from fastlam.models import LatentActionWorldModel
from fastlam.nn import VectorQuantizer
from fastlam.train import TrainConfig, train
from simulated_crash import crash_in_forward

SMALL = ["data.source=synthetic", "data.synthetic_clips=64", "model.image_size=32", "model.frames=8",
         "model.encoder.patch_size=8", "model.idm.width=32", "model.predictor.width=32", "batch_size=4",
         "progress=false", "log_every=1", "diagnostics_clips=0"]
# Every regularizer with something to break a graph: noisy draws noise (a seed on the Triton
# path), discrete initialises by k-means, counts codes, updates EMAs, expires and resets codes.
REGULARIZERS = {
    "noisy": ["model.regularizer.kind=noisy"],
    "sparse": ["model.regularizer.kind=sparse"],
    "discrete": ["model.regularizer.kind=discrete", "model.regularizer.num_codes=16",
                 "model.regularizer.reset_every_steps=2"],
    "discrete_ema": ["model.regularizer.kind=discrete", "model.regularizer.num_codes=16",
                     "model.regularizer.reset_every_steps=2", "model.regularizer.ema=true"],
}
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def small_cfg(*extra) -> TrainConfig:
    return load_config(TrainConfig, "configs/tiny_cpu.yaml", SMALL + list(extra))


def steady_model(kind: str, backend: str) -> tuple[LatentActionWorldModel, torch.Tensor]:
    """A model in training mode, as ``compile: true`` sets it up, after two training steps (the
    VQ initialised, a dead-code reset made), and a batch for the next one."""
    model = LatentActionWorldModel(small_cfg(*REGULARIZERS[kind]).model).train()
    model.check_video_range = False  # as the trainer runs it
    model.regularizer.backend = backend
    model.defer_codebook_edits()
    video = torch.rand(4, 3, 8, 32, 32)
    for _ in range(2):
        out = model(video)
        model.apply_codebook_edits()
        out.loss.backward()
    return model, video


def graph_breaks(model, video) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(model)(video)
    finally:
        torch._dynamo.reset()
        model.apply_codebook_edits()
    return explained.graph_break_count, [str(b.reason).splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=[pytest.mark.slow, pytest.mark.skipif(
    not INTERPRETER, reason="CPU tensors on the Triton path need the interpreter")])])
@pytest.mark.parametrize("kind", list(REGULARIZERS))
def test_steady_state_training_forward_has_no_graph_break(kind, backend):
    model, video = steady_model(kind, backend)
    if kind.startswith("discrete"):
        assert bool(model.regularizer.initted) and int(model.regularizer.steps_since_reset) == 0  # a reset was made
    count, reasons = graph_breaks(model, video)
    assert count == 0, reasons


def test_the_graph_break_check_sees_codebook_edits_left_in_the_forward():
    """The check above would fail: with its edits in the forward, the VQ breaks the graph
    (nonzero, .item() and data-dependent branches)."""
    model, video = steady_model("discrete_ema", "torch")
    model.defer_codebook_edits(False)
    count, reasons = graph_breaks(model, video)
    assert count > 0 and any("item" in r or "nonzero" in r or "dynamic" in r.lower() for r in reasons), reasons


@pytest.mark.parametrize("kw", [
    dict(init="kmeans", kmeans_iters=2, ema=True, threshold_ema_dead_code=0.5, reset_every_steps=2),
    dict(init="data", reset_every_steps=2, threshold_dead_code=2.0),
    dict(init="data", reset_every=60, cosine=True, rotation_trick=True),
])
def test_deferred_codebook_edits_match_the_eager_forward(kw):
    """Deferred edits (made by apply_codebook_edits between forward and backward, as the
    compiled step does) leave the codebook, its statistics, the metrics and the gradients
    exactly as the eager forward's own edits do, resets and expiries included."""
    eager = VectorQuantizer(16, 8, backend="torch", **kw)
    deferred = VectorQuantizer(16, 8, backend="torch", **kw)
    deferred.load_state_dict(eager.state_dict())
    deferred.defer_codebook_edits = True
    resets = 0
    for step in range(5):
        h = (torch.randn(24, 8) + 3.0 * (step % 2)).requires_grad_()
        h2 = h.detach().clone().requires_grad_()
        torch.manual_seed(step)
        a = eager(h)
        torch.manual_seed(step)
        b = deferred(h2)
        b.metrics.update(deferred.apply_codebook_edits())
        assert deferred.apply_codebook_edits() == {}  # applied once
        (a.z.square().sum() + a.loss).backward()
        (b.z.square().sum() + b.loss).backward()
        assert torch.equal(a.indices, b.indices)
        assert a.metrics.keys() == b.metrics.keys()
        resets += "reg/codes_reset" in a.metrics or "reg/codes_expired" in a.metrics
        for k in a.metrics:
            torch.testing.assert_close(a.metrics[k], b.metrics[k], rtol=0, atol=0)
        torch.testing.assert_close(h.grad, h2.grad, rtol=0, atol=0)
        for (name, x), (_, y) in zip(eager.state_dict().items(), deferred.state_dict().items()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
        if eager.codebook.weight.grad is not None:
            torch.testing.assert_close(eager.codebook.weight.grad, deferred.codebook.weight.grad, rtol=0, atol=0)
    assert resets > 0  # the edits that leave the forward did happen


def test_deferred_edits_refuse_non_finite_latents_before_the_backward():
    vq = VectorQuantizer(16, 8, backend="torch", init="data")
    vq.defer_codebook_edits = True
    vq(torch.randn(10, 8))
    vq.apply_codebook_edits()
    h = torch.randn(10, 8)
    h[3, 1] = float("nan")
    before = vq.codebook.weight.detach().clone()
    vq(h)
    with pytest.raises(ValueError, match="1 of 10 latents contain NaN or Inf"):
        vq.apply_codebook_edits()
    assert torch.equal(vq.codebook.weight, before)


def test_compile_config_keys():
    assert small_cfg().compile is False and small_cfg().compile_backend == "inductor"
    small_cfg("compile=true", "compile_backend=aot_eager").check()
    with pytest.raises(ConfigError, match="compile_backend"):
        small_cfg("compile=true", "compile_backend=cudagraphs").check()
    with pytest.raises(ConfigError, match="DeepSpeed"):
        small_cfg("compile=true", "distributed.backend=deepspeed",
                  "distributed.deepspeed_config=configs/deepspeed/zero2.json").check()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["noisy", "sparse", "discrete_ema", "discrete"])
def test_compiled_training_matches_eager(tmp_path, kind):
    """The tiny config on CPU, from one seed, eager and ``compile: true`` (aot_eager: the
    graphs dynamo and AOTAutograd capture, run by torch's kernels; Inductor's C++ code
    generation takes minutes on a 2-core machine): the same losses and regularizer statistics
    at every step, through the VQ's k-means initialisation and its dead-code resets."""
    losses = {}
    for mode in ("eager", "compiled"):
        flags = ["compile=true", "compile_backend=aot_eager"] if mode == "compiled" else []
        torch._dynamo.reset()
        counters.clear()
        summary = train(small_cfg(*REGULARIZERS[kind], "steps=5", f"out_dir={tmp_path / mode}", *flags))
        assert summary["steps"] == 5 and summary["muon_flops_per_step"] > 0
        # The compiled run went through dynamo and AOTAutograd (a forward and a backward graph);
        # the eager one did not.
        assert (counters["aot_autograd"]["total"] > 0) == (mode == "compiled"), dict(counters)
        losses[mode] = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    torch._dynamo.reset()
    eager, compiled = losses["eager"], losses["compiled"]
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == [1, 2, 3, 4, 5]
    keys = ["loss", "pred_loss", "reg_loss", "grad_norm"] + sorted(k for k in eager[0] if k.startswith("reg/"))
    for e, c in zip(eager, compiled):
        assert set(k for k in e if k.startswith("reg/")) == set(k for k in c if k.startswith("reg/"))
        for k in keys:
            assert c[k] == pytest.approx(e[k], rel=1e-4, abs=1e-6), (e["step"], k)
    if kind.startswith("discrete"):
        assert any("reg/codes_reset" in r for r in compiled)


@pytest.mark.slow
def test_compiled_run_resumes_as_the_uninterrupted_one(tmp_path, monkeypatch):
    """A compiled discrete run that dies in step 4 and resumes from its step-3 checkpoint (a
    fresh compile, the VQ initialised by the checkpoint, not by k-means) logs the losses of the
    compiled run that never stopped."""
    flags = [*REGULARIZERS["discrete"], "compile=true", "compile_backend=aot_eager", "steps=6", "ckpt_every=3"]
    torch._dynamo.reset()
    train(small_cfg(*flags, f"out_dir={tmp_path / 'full'}"))
    torch._dynamo.reset()
    crash_in_forward(lambda: train(small_cfg(*flags, f"out_dir={tmp_path / 'part'}")), 4, monkeypatch)
    torch._dynamo.reset()
    train(small_cfg(*flags, f"out_dir={tmp_path / 'part'}"), resume=True)
    torch._dynamo.reset()
    rows = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("full", "part")}
    assert [(r["step"], r["loss"]) for r in rows["part"]] == [(r["step"], r["loss"]) for r in rows["full"]]
