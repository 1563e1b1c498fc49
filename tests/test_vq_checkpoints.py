"""The VQ family against vector-quantize-pytorch on day two (issue 27): peer checkpoints load into
fastlam's quantizers and go back, strict, with identical outputs; the peer's arguments mean what
they mean there (no silent change of behaviour); float64 through every module."""
import math

import pytest
import torch

from fastlam.nn import FSQ, LFQ, ResidualVQ, VectorQuantizer
from fastlam.nn.vq_checkpoints import from_peer_state_dict, to_peer_state_dict

vqp = pytest.importorskip("vector_quantize_pytorch")  # a dev dependency (setup.py extras)

D, K = 16, 32
PEER_VQ = {  # name: vector-quantize-pytorch VectorQuantize keyword arguments
    "learnable": dict(ema_update=False, learnable_codebook=True, rotation_trick=False, commitment_weight=0.25),
    "ema": dict(),  # the peer's defaults: EMA decay 0.8, rotation trick, commitment 1
    "ema_cosine": dict(use_cosine_sim=True, commitment_weight=0.5),
    "kmeans": dict(kmeans_init=True, decay=0.99, rotation_trick=False),
}


def _step(module, x, g, train: bool):
    """One forward (and backward in training): (z, indices, loss, input grad)."""
    module.train(train)
    x = x.clone().requires_grad_(train)
    out = module(x)
    z, idx, loss = out[0], out[1], out[2]
    if train:
        ((z * g).sum() + (loss.sum() if loss.requires_grad else 0)).backward()
    return z.detach(), idx.long(), loss.detach(), (x.grad if train else None)


def _assert_same_outputs(a, b, exact: bool):
    za, ia, la, ga = a
    zb, ib, lb, gb = b
    assert torch.equal(ia, ib)
    if exact:
        assert torch.equal(za, zb) and torch.equal(la.reshape(lb.shape), lb)
        assert (ga is None and gb is None) or torch.equal(ga, gb)
        return
    torch.testing.assert_close(za, zb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(la.reshape(lb.shape), lb, rtol=1e-5, atol=1e-7)
    if ga is not None:
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def _trained(make, steps=2, shape=(3, 6, D)):
    """A peer module after a few training steps (initialised, EMA statistics, learnable codes
    and projections moved)."""
    module = make()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5) if params else None
    for _ in range(steps):
        _step(module, 0.1 * torch.randn(*shape), torch.randn(*shape), train=True)
        if opt:
            opt.step()
            opt.zero_grad()
    return module


def _round_trip(make_peer, make_ours, shape=(3, 6, D)):
    """Peer state -> fastlam (strict) -> peer (strict): every copy gives the peer's outputs, in
    eval and for two training steps (EMA statistics, codebooks and initted tracking)."""
    torch.manual_seed(0)
    peer = _trained(make_peer, shape=shape)
    peer_state = {k: v.clone() for k, v in peer.state_dict().items()}
    ours = make_ours()
    ours.load_state_dict(peer_state, strict=True)
    back = make_peer()
    back.load_state_dict(to_peer_state_dict(ours), strict=True)
    written = to_peer_state_dict(ours)
    assert sorted(written) == sorted(peer_state)
    # a learnable (non-EMA) codebook's EMA statistics are written as the peer initialises them:
    # the peer never reads them then (tracked only for threshold_ema_dead_code, which fastlam
    # refuses for a learnable codebook)
    unread = {k for k in peer_state if k.endswith("_codebook.embed_avg")} if not _ema(ours) else set()
    changed = [k for k in peer_state if k not in unread and not torch.equal(written[k], peer_state[k])]
    assert not changed, f"the round trip changed {changed}"
    for train in (False, True, True):
        x, g = 0.1 * torch.randn(*shape), torch.randn(*shape)
        theirs = _step(peer, x, g, train)
        _assert_same_outputs(_step(ours, x, g, train), theirs, exact=False)
        _assert_same_outputs(_step(back, x, g, train), theirs, exact=True)
    return peer, ours


@pytest.mark.parametrize("name", list(PEER_VQ))
def test_vector_quantize_checkpoint_crosses_both_ways(name):
    kw = PEER_VQ[name]
    peer, ours = _round_trip(lambda: vqp.VectorQuantize(dim=D, codebook_size=K, **kw),
                             lambda: _torch_backend(VectorQuantizer.from_vector_quantize_kwargs(D, K, **kw)))
    torch.testing.assert_close(ours.codebook.weight.detach(), peer._codebook.embed[0].detach(), rtol=1e-5, atol=1e-6)
    if ours.ema:
        torch.testing.assert_close(ours.cluster_size, peer._codebook.cluster_size[0], rtol=1e-5, atol=1e-6)
    assert bool(ours.initted) and int(ours.usage.sum()) > 0  # the window restarted at the load and counts


def _ema(module) -> bool:
    return all(m.ema for m in module.modules() if isinstance(m, VectorQuantizer))


def _torch_backend(module):
    for m in module.modules():
        if isinstance(m, VectorQuantizer):
            m.backend = "torch"
    return module


@pytest.mark.parametrize("dim,codebook_size", [(8, None), (D, 256)])
def test_lfq_checkpoint_with_its_mask_crosses_both_ways(dim, codebook_size):
    kw = dict(dim=dim, codebook_size=codebook_size, entropy_loss_weight=0.1, commitment_loss_weight=0.25)
    _, ours = _round_trip(lambda: vqp.LFQ(**kw), lambda: LFQ(**kw), shape=(2, 5, dim))
    assert "mask" in ours.state_dict()


@pytest.mark.parametrize("dim", [None, D])
def test_fsq_checkpoint_crosses_both_ways(dim):
    levels = [8, 5, 5, 5]
    peer_dim = dim or len(levels)
    _round_trip(lambda: _FSQWithZeroLoss(vqp.FSQ(levels=levels, dim=dim)), lambda: _FSQWithZeroLoss(FSQ(levels, dim=dim)),
                shape=(2, 5, peer_dim))


class _FSQWithZeroLoss(torch.nn.Module):
    """FSQ returns (z, indices): a zero loss beside them lets the round trip compare all three."""

    def __init__(self, fsq):
        super().__init__()
        self.fsq = fsq

    def forward(self, x):
        z, idx = self.fsq(x)
        return z, idx, z.new_zeros(())


def test_residual_vq_checkpoint_crosses_both_ways():
    kw = dict(dim=D, num_quantizers=3, codebook_size=K, commitment_weight=0.5)
    _, ours = _round_trip(lambda: vqp.ResidualVQ(**kw), lambda: ResidualVQ(**kw, backend="torch"))
    assert len(ours.layers) == 3


def test_a_model_holding_a_quantizer_converts_at_any_depth():
    def model(vq):
        return torch.nn.ModuleDict({"proj": torch.nn.Linear(D, D), "heads": torch.nn.ModuleList([vq])})

    torch.manual_seed(0)
    peer = model(vqp.VectorQuantize(dim=D, codebook_size=K))
    ours = model(VectorQuantizer.from_vector_quantize_kwargs(D, K))
    converted = from_peer_state_dict(ours, peer.state_dict())
    assert "heads.0.codebook.weight" in converted and "heads.0._codebook.embed" not in converted
    ours.load_state_dict(converted, strict=True)
    back = model(vqp.VectorQuantize(dim=D, codebook_size=K))
    back.load_state_dict(to_peer_state_dict(ours), strict=True)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in peer.state_dict().items())


def test_peer_checkpoints_that_do_not_fit_name_their_keys():
    ours = VectorQuantizer.from_vector_quantize_kwargs(D, K)
    with pytest.raises(RuntimeError, match=r"_codebook\.embed: shape \(1, 64, 16\).*codebook_size=32"):
        ours.load_state_dict(vqp.VectorQuantize(dim=D, codebook_size=2 * K).state_dict())
    affine = vqp.VectorQuantize(dim=D, codebook_size=K, affine_param=True).state_dict()
    with pytest.raises(RuntimeError, match=r"no fastlam counterpart: \[.*'_codebook\.codebook_mean'"):
        ours.load_state_dict(affine)
    with pytest.raises(ValueError, match=r"_codebook\.codebook_mean"):
        from_peer_state_dict(ours, affine)
    lfq = LFQ(dim=8)
    with pytest.raises(RuntimeError, match="bit mask"):
        lfq.load_state_dict({"mask": torch.arange(8)})
    lfq.load_state_dict({})  # a fastlam checkpoint from before the mask was stored
    assert torch.equal(lfq.mask, vqp.LFQ(dim=8).mask)


def test_fastlam_checkpoint_of_a_trained_quantizer_restarts_only_its_window_in_the_peer_layout():
    vq = VectorQuantizer(K, D, ema=True, init="data", backend="torch")
    vq(torch.randn(40, D))
    peer_state = to_peer_state_dict(vq)
    assert not any(k in peer_state for k in ("usage", "seen_since_reset", "steps_since_reset", "initted",
                                               "cluster_size", "embed_avg", "codebook.weight"))
    again = VectorQuantizer(K, D, ema=True, init="data", backend="torch")
    again.load_state_dict(peer_state, strict=True)
    for key in ("codebook.weight", "cluster_size", "embed_avg", "initted"):
        assert torch.equal(again.state_dict()[key], vq.state_dict()[key]), key
    assert int(again.usage.sum()) == 0 and int(again.steps_since_reset) == 0


# ----------------------------------------------------------------------------- no silent change of behaviour

def test_reset_every_none_means_no_resets():
    vq = VectorQuantizer(8, 4, reset_every=None, backend="torch")
    assert vq.reset_every_steps is None and vq.reset_every is None
    before = vq.codebook.weight.detach().clone()
    x = vq.codebook.weight.detach()[:1].repeat(3, 1)  # only code 0 is ever chosen: 7 dead codes
    for _ in range(101):  # the old default reset them at call 100
        out = vq(x)
    assert "reg/codes_reset" not in out.metrics and torch.equal(vq.codebook.weight, before)
    assert VectorQuantizer(8, 4).reset_every_steps == 100  # nothing passed: fastlam's default stays
    assert VectorQuantizer(8, 4, reset_every=1000).reset_every_steps is None
    assert VectorQuantizer(8, 4, reset_every=None, reset_every_steps=5).reset_every_steps == 5


def test_residual_vq_from_the_peers_arguments_is_the_peers_quantizer():
    rvq = ResidualVQ(dim=D, num_quantizers=2, codebook_size=K, commitment_weight=0.5)  # was a TypeError
    for layer in rvq.layers:
        assert (layer.ema, layer.decay, layer.commitment, layer.codebook_weight) == (True, 0.8, 0.5, 0.5)
        assert layer.rotation_trick and layer.init == "kaiming" and layer.reset_every_steps is None
        assert layer.reset_every is None and not layer.eval_loss
        assert layer.codebook.weight.abs().max() > 1.0 / K  # kaiming, not U(-1/K, 1/K)
    learnable = ResidualVQ(dim=D, num_quantizers=2, codebook_size=K, learnable_codebook=True, ema_update=False)
    assert not any(layer.ema for layer in learnable.layers)
    ours = ResidualVQ(dim=D, num_quantizers=2, codebook_size=K, commitment=0.1, reset_every_steps=7)  # fastlam's win
    assert all((layer.commitment, layer.reset_every_steps, layer.ema) == (0.1, 7, True) for layer in ours.layers)
    with pytest.raises(TypeError, match="'commitment'.*'commitment_weight'"):
        ResidualVQ(dim=D, num_quantizers=2, codebook_size=K, commitment=0.1, commitment_weight=0.2)
    with pytest.raises(ValueError, match=r"does not support: \['quantize_dropout'\]"):
        ResidualVQ(dim=D, num_quantizers=2, codebook_size=K, quantize_dropout=True)
    resets = ResidualVQ(dim=D, num_quantizers=2, codebook_size=K, threshold_dead_code=2)  # fastlam's reset asked for
    assert all((layer.threshold_dead_code, layer.reset_every_steps) == (2, 100) for layer in resets.layers)


def test_from_vector_quantize_kwargs_starts_the_codebook_as_the_peer_does():
    for k, d in ((16, 8), (1024, 128)):
        torch.manual_seed(0)
        ours = VectorQuantizer.from_vector_quantize_kwargs(d, k).codebook.weight.detach()
        theirs = vqp.VectorQuantize(dim=d, codebook_size=k)._codebook.embed[0]
        bound = math.sqrt(6.0 / (k * d))
        for w in (ours, theirs):
            assert 0.95 * bound < w.abs().max() <= bound
        torch.testing.assert_close(ours.std(), theirs.std(), rtol=0.1, atol=0)  # U(-b, b): std b / sqrt(3)


def test_code_usage_is_counted_in_eval_without_touching_the_reset_window():
    torch.manual_seed(0)
    vq = VectorQuantizer(K, D, init="data", backend="torch")
    vq(torch.randn(64, D))  # training: init and count
    window = vq.usage.clone()
    vq.eval()
    out = vq(torch.randn(64, D))
    assert int(vq.stats()["codes_used"]) > 1 and float(out.metrics["reg/codes_used"]) == int(vq.stats()["codes_used"])
    assert torch.equal(vq.usage, window)  # eval never keeps a code alive at a reset
    vq.train()
    vq.eval()
    assert int(vq.stats()["codes_used"]) == 0  # a new evaluation counts afresh
    quiet = VectorQuantizer(K, D, backend="torch", count_usage_in_eval=False).eval()
    assert "reg/codes_used" not in quiet(torch.randn(8, D)).metrics and int(quiet.stats()["codes_used"]) == 0


def test_eval_loss_is_the_peers_when_built_from_its_arguments():
    torch.manual_seed(0)
    x = torch.randn(4, 6, D)
    peer = vqp.VectorQuantize(dim=D, codebook_size=K).eval()
    ours = VectorQuantizer.from_vector_quantize_kwargs(D, K).eval()
    ours.load_state_dict(peer.state_dict())
    assert float(peer(x)[2]) == 0.0 and float(ours(x).loss) == 0.0
    own = VectorQuantizer(K, D, backend="torch").eval()
    assert float(own(x).loss.detach()) > 0  # fastlam's own default: the validation loss (documented)
    assert float(VectorQuantizer(K, D, backend="torch", eval_loss=False).eval()(x).loss) == 0.0


def test_peer_expiry_of_a_learnable_codebook_is_an_error_that_says_what_to_pass():
    with pytest.raises(ValueError, match="threshold_dead_code=.*reset_every_steps="):
        VectorQuantizer.from_vector_quantize_kwargs(D, K, learnable_codebook=True, ema_update=False,
                                                    threshold_ema_dead_code=2)


def test_a_frozen_learnable_codebook_reads_the_peers_loss_and_gradients():
    kw = dict(ema_update=False, learnable_codebook=True, rotation_trick=False, commitment_weight=0.25)
    torch.manual_seed(0)
    peer = vqp.VectorQuantize(dim=D, codebook_size=K, **kw)
    ours = _torch_backend(VectorQuantizer.from_vector_quantize_kwargs(D, K, **kw))
    ours.load_state_dict(peer.state_dict())
    peer._codebook.embed.requires_grad_(False)
    ours.codebook.weight.requires_grad_(False)
    x, g = 0.1 * torch.randn(3, 6, D), torch.randn(3, 6, D)
    _assert_same_outputs(_step(ours, x, g, True), _step(peer, x, g, True), exact=False)


# ----------------------------------------------------------------------------- float64

VQ_FLOAT64 = {
    "plain": dict(),
    "ema": dict(ema=True),
    "ema_cosine_rotation": dict(ema=True, cosine=True, rotation_trick=True),
    "ema_expiry": dict(ema=True, threshold_ema_dead_code=0.5),
    "kmeans_resets": dict(init="kmeans", reset_every_steps=1),
    "data_ema_resets": dict(init="data", ema=True, reset_every_steps=1, threshold_dead_code=2),
}


@pytest.mark.parametrize("name", list(VQ_FLOAT64))
def test_vector_quantizer_runs_in_float64(name):
    torch.manual_seed(0)
    vq = VectorQuantizer(K, D, backend="torch", **VQ_FLOAT64[name]).double()
    if not vq.initted:  # the data / k-means init in fp64, before the search below reads the codes
        vq.init_codebook(torch.randn(50, D, dtype=torch.float64))
        assert vq.codebook.weight.dtype == torch.float64 and bool(vq.initted)
    for _ in range(3):  # EMA updates, expiries and resets all in fp64
        x = torch.randn(5, 7, D, dtype=torch.float64, requires_grad=True)
        before = vq.codes().detach().clone()
        z, idx, loss = vq(x)
        (z.pow(2).sum() + loss).backward()
        assert z.dtype == loss.dtype == x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()
        # the nearest code in fp64, against the codes the search saw
        xs = torch.nn.functional.normalize(x.detach(), dim=-1, eps=1e-6) if vq.cosine else x.detach()
        assert torch.equal(idx, torch.cdist(xs.reshape(-1, D), before).argmin(-1).reshape(5, 7))
        torch.testing.assert_close(z.detach(), before[idx], rtol=1e-12, atol=1e-12)
    state = vq.state_dict()
    assert all(v.dtype == torch.float64 for k, v in state.items() if v.is_floating_point())
    if vq.ema and not vq.threshold_ema_dead_code and vq.init != "data":
        smoothed = (vq.cluster_size + vq.eps) / (vq.cluster_size.sum() + K * vq.eps) * vq.cluster_size.sum()
        expected = vq.embed_avg / smoothed[:, None]
        torch.testing.assert_close(vq.codes().detach(), torch.nn.functional.normalize(expected, dim=-1, eps=1e-6)
                                   if vq.cosine else expected, rtol=1e-12, atol=1e-12)


def test_fsq_runs_in_float64_at_width_128():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5], dim=128).double()
    x = torch.randn(3, 9, 128, dtype=torch.float64, requires_grad=True)
    z, idx = fsq(x)
    z.pow(2).sum().backward()
    assert z.dtype == x.grad.dtype == torch.float64
    codes = fsq.indices_to_codes(idx)  # crashed at width 128 (fp32 codes into an fp64 projection)
    assert codes.dtype == torch.float64 and torch.equal(codes, z.detach())
    bare = FSQ([8, 5, 5, 5]).double()
    zb, ib = bare(torch.randn(4, 4, dtype=torch.float64))
    assert zb.dtype == torch.float64 and torch.equal(bare.indices_to_codes(ib).double(), zb)


@pytest.mark.parametrize("dim,codebook_size", [(8, None), (D, 256)])
def test_lfq_runs_in_float64(dim, codebook_size):
    torch.manual_seed(0)
    lfq = LFQ(dim=dim, codebook_size=codebook_size, commitment_loss_weight=0.25).double()
    x = torch.randn(2, 5, dim, dtype=torch.float64, requires_grad=True)
    z, idx, loss = lfq(x)
    (z.pow(2).sum() + loss).backward()
    assert z.dtype == loss.dtype == x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()
    lfq.eval()
    z_eval, idx_eval, _ = lfq(x.detach())
    assert torch.equal(idx_eval, idx) and torch.equal(lfq.indices_to_codes(idx), z_eval)


def test_residual_vq_runs_in_float64():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=D, num_quantizers=3, codebook_size=K, backend="torch").double()
    x = torch.randn(4, 6, D, dtype=torch.float64, requires_grad=True)
    for _ in range(2):
        z, idx, losses = rvq(x)
        (z.pow(2).sum() + losses.sum()).backward()
    assert z.dtype == losses.dtype == x.grad.dtype == torch.float64
    rvq.eval()
    z, idx, _ = rvq(x.detach())
    torch.testing.assert_close(rvq.get_output_from_indices(idx), z, rtol=1e-12, atol=1e-12)

