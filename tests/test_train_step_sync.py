"""A training step without host stalls (issue 16, item 4): metrics stay on the device until
log time, a non-finite loss is still caught before any checkpoint, the batch sampler draws one
permutation per epoch, and checkpoints record the frozen encoder instead of carrying it."""
import json

import pytest
import torch

from fastlam.models import LatentActionWorldModel
from fastlam.train import ResumableBatches, train

from test_train import cfg_for, read_metrics


def test_resumable_batches_keep_the_per_epoch_permutation_order():
    # The order must be what it was when every batch redrew randperm(n) from (seed, epoch).
    n, bs, seed = 37, 6, 5
    it = iter(ResumableBatches(n, bs, seed, position=2))
    for pos in range(2, 2 + 3 * (n // bs) + 1):  # crosses epoch boundaries
        epoch, b = divmod(pos, n // bs)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        assert next(it) == [(epoch, int(i)) for i in perm[b * bs:(b + 1) * bs]]


def test_resumable_batches_draw_one_permutation_per_epoch(monkeypatch):
    calls = {"n": 0}
    real = torch.randperm

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(torch, "randperm", counting)
    it = iter(ResumableBatches(100, 10, seed=0))
    for _ in range(25):  # 2.5 epochs of 10 batches
        next(it)
    assert calls["n"] == 3


def test_non_finite_loss_is_caught_at_log_time_before_any_checkpoint(tmp_path, monkeypatch):
    real_forward = LatentActionWorldModel.forward
    calls = {"n": 0}

    def nan_at_step_5(self, *args, **kwargs):
        calls["n"] += 1
        out = real_forward(self, *args, **kwargs)
        return out._replace(loss=out.loss * float("nan")) if calls["n"] == 5 else out

    monkeypatch.setattr(LatentActionWorldModel, "forward", nan_at_step_5)
    with pytest.raises(FloatingPointError, match="between steps 4 and 6"):
        train(cfg_for(tmp_path, "steps=9", "ckpt_every=3", "log_every=3"))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert ckpts == ["step_0000003.pt"], "the diverged state must not be checkpointed"
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]  # step 1 is always logged


def test_checkpoints_record_the_encoder_instead_of_its_weights(tmp_path):
    train(cfg_for(tmp_path, "steps=2", "ckpt_every=1", "model.encoder.kind=vit"))
    latest = tmp_path / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    assert not any(k.startswith("encoder.") for k in state["model"])
    rec = state["encoder"]
    assert rec["kind"] == "random" and rec["seed"] == 0 and len(rec["sha256"]) == 64
    assert latest.read_bytes() == (tmp_path / "checkpoints" / "step_0000002.pt").read_bytes()
    # from_checkpoint rebuilds the encoder and verifies it.
    model = LatentActionWorldModel.from_checkpoint(latest)
    final = LatentActionWorldModel.from_checkpoint(tmp_path / "final")
    for k, v in final.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    # A different encoder (another seed) is refused on resume and by from_checkpoint.
    with pytest.raises(ValueError, match="frozen encoder differs"):
        train(cfg_for(tmp_path, "steps=3", "seed=1", "model.encoder.kind=vit"), resume=True)
    state["encoder"] = dict(rec, seed=1)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="frozen encoder differs"):
        LatentActionWorldModel.from_checkpoint(tmp_path / "other.pt")
    # The same config resumes.
    assert train(cfg_for(tmp_path, "steps=3", "model.encoder.kind=vit"), resume=True)["steps"] == 3


@pytest.mark.parametrize("regularizer", ["noisy"])
def test_full_lam_training_step_traces_without_graph_breaks(regularizer):
    """dynamo.explain of forward + loss of the whole LAM (frozen encoder, IDM, regularizer,
    frame-causal predictor) on fastlam's Triton ops: one graph, no break (the noisy
    regularizer's seed used to be read with .item(): 2 breaks; the first call's lazy import of a
    kernel module traced importlib: 1 break per op)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_train_step import tiny_config
    from fastlam.ops import use_backend

    torch.manual_seed(0)
    model = LatentActionWorldModel(tiny_config(regularizer)).train()
    model.check_video_range = False  # as fastlam.train sets it: the [0, 1] check reads a value on the host
    video = torch.rand(2, 3, 6, 16, 16)
    torch._dynamo.reset()
    with use_backend("triton"):
        ex = torch._dynamo.explain(lambda v: model(v).loss)(video)
    assert ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]
    assert ex.graph_count == 1
