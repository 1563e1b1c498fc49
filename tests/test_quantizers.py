"""The VQ family (fastlam.nn.quantizers): init, dead-code reset, EMA, stats, frozen codebooks,
old checkpoints, and equivalence with vector-quantize-pytorch (values, indices, gradients) in
the configurations LAM code uses."""
import re
import warnings

import pytest
import torch

from fastlam.nn import FSQ, LFQ, ResidualVQ, VectorQuantizer, kmeans_plus_plus

vqp = pytest.importorskip("vector_quantize_pytorch")  # a dev dependency (setup.py extras)


# ----------------------------------------------------------------------------- our semantics

def test_issue_reproduction_uses_hundreds_of_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(1024, 128, backend="torch")
    vq(0.1 * torch.randn(4096, 128))
    assert (vq.usage > 0).sum() > 900  # was 2 with the randn codebook (measured 977)
    assert vq.stats()["perplexity"] > 500


def test_small_latents_use_hundreds_of_codes():
    """The collapse of fastlam < 0.2 (a randn codebook kept 2 of 1024 codes for 0.1 * randn
    latents) is gone for every init (here on 1024 latents to stay fast)."""
    z = 0.1 * torch.randn(1024, 128, generator=torch.Generator().manual_seed(0))
    used = {}
    for init in ("uniform", "data", "kmeans", "randn"):
        torch.manual_seed(0)
        vq = VectorQuantizer(256, 128, init=init, kmeans_iters=2, backend="torch")
        vq(z)
        used[init] = int(vq.stats()["codes_used"])
    assert used["randn"] < 20  # the old init, kept as an option, still collapses
    for init in ("uniform", "data", "kmeans"):
        assert used[init] > 150, used


def test_data_and_kmeans_init_draw_codes_from_the_first_batch_only():
    torch.manual_seed(1)
    z = torch.randn(64, 6)
    for init in ("data", "kmeans"):
        vq = VectorQuantizer(16, 6, init=init, backend="torch")
        assert not bool(vq.initted)
        vq.eval()
        vq(z)  # eval never initialises
        assert not bool(vq.initted)
        vq.train()
        vq(z)
        assert bool(vq.initted)
        if init == "data":  # every code is one of the latents
            assert (vq.codebook.weight[:, None] == z[None]).all(-1).any(-1).all()
        before = vq.codebook.weight.clone()
        vq(torch.randn(64, 6) + 5)
        assert torch.equal(before, vq.codebook.weight)  # only once
    # fewer latents than codes: all of them, then distinct jittered copies
    vq = VectorQuantizer(16, 6, init="data", backend="torch")
    vq(z[:5])
    assert torch.unique(vq.codebook.weight, dim=0).shape[0] == 16


def test_kmeans_plus_plus_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(8, 4, generator=g)
    x = (centres[:, None] + 0.1 * torch.randn(8, 50, 4, generator=g)).reshape(-1, 4)
    torch.manual_seed(0)
    found = kmeans_plus_plus(x, 8, iters=5, backend="torch")
    err = (found[:, None] - centres[None]).norm(dim=-1).min(0).values
    assert err.max() < 0.2, err


def test_reset_every_steps_and_threshold():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, reset_every_steps=3, threshold_dead_code=2, backend="torch")
    with torch.no_grad():
        vq.codebook.weight[4:] = 100.0  # never chosen
    outs = [vq(torch.randn(10, 4)) for _ in range(3)]
    assert "reg/codes_reset" not in outs[0].metrics and "reg/codes_reset" not in outs[1].metrics
    assert outs[2].metrics["reg/codes_reset"].item() >= 4
    assert (vq.codebook.weight.abs() < 100).all() and int(vq.steps_since_reset) == 0 and int(vq.usage.sum()) == 0


def test_frozen_codebook_is_never_overwritten_unless_forced():
    torch.manual_seed(0)
    for kw in (dict(), dict(ema=True, freeze_codebook=True)):
        vq = VectorQuantizer(8, 4, init="data", reset_every_steps=1, threshold_ema_dead_code=5.0 if kw else 0.0,
                             backend="torch", **kw)
        if not kw:
            vq.codebook.weight.requires_grad_(False)
        before = vq.codebook.weight.clone()
        out = vq(torch.randn(10, 4))
        assert torch.equal(before, vq.codebook.weight)  # no data init, no EMA, no scheduled reset
        assert out.metrics["reg/codes_reset"].item() == 0
        assert vq.reset_dead_codes(torch.randn(10, 4)) == 0 and torch.equal(before, vq.codebook.weight)
        assert vq.reset_dead_codes(torch.randn(10, 4), force=True) == 8
        assert not torch.equal(before, vq.codebook.weight)


def test_ema_moves_codes_to_cluster_means_and_keeps_them_off_the_optimiser():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=True, decay=0.5, reset_every_steps=None, backend="torch")
    assert not vq.codebook.weight.requires_grad
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]))
        vq.embed_avg.copy_(vq.codebook.weight)
    target = torch.tensor([[3.0, 0], [-3, 0], [0, 3], [0, -3]])
    x = (target[:, None] + 0.01 * torch.randn(4, 25, 2)).reshape(-1, 2)
    for _ in range(30):
        out = vq(x)
    torch.testing.assert_close(vq.codebook.weight, x.reshape(4, 25, 2).mean(1), atol=1e-3, rtol=1e-3)
    assert torch.equal(out.indices, torch.arange(4).repeat_interleave(25))
    # the loss is the commitment term only: nothing to learn by gradient in the codebook
    torch.testing.assert_close(out.loss, out.metrics["reg/commitment"])


def test_ema_expires_codes_whose_cluster_size_falls_below_the_threshold():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, ema=True, decay=0.5, threshold_ema_dead_code=0.6, reset_every_steps=None, backend="torch")
    with torch.no_grad():
        vq.codebook.weight[4:] = 100.0
        vq.embed_avg.copy_(vq.codebook.weight)
    x = torch.randn(32, 4)
    out = vq(x)
    # unused codes: cluster size 0.5 * 1 + 0.5 * 0 < 0.6; used ones are >= 1
    assert out.metrics["reg/codes_expired"].item() == 4
    assert (vq.codebook.weight[4:, None] == x[None]).all(-1).any(-1).all()
    torch.testing.assert_close(vq.cluster_size[4:], torch.full((4,), 0.6))
    torch.testing.assert_close(vq.embed_avg[4:], 0.6 * vq.codebook.weight[4:])


def test_stats_perplexity_and_indices_api():
    vq = VectorQuantizer(8, 3, reset_every_steps=None, backend="torch")
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.eye(8, 3) * 10)
    z, idx, loss = vq(torch.eye(3).repeat(4, 1) * 10)  # codes 0, 1, 2, four times each
    st = vq.stats()
    assert int(st["codes_used"]) == 3 and abs(float(st["perplexity"]) - 3.0) < 1e-4
    assert torch.equal(vq.codebook(idx), z) and torch.equal(vq.get_codes_from_indices(idx), z)
    assert idx.dtype == torch.long and loss.dim() == 0


def test_old_checkpoint_loads_and_bad_shape_errors():
    vq = VectorQuantizer(8, 4, backend="torch")
    old = {"codebook": torch.randn(8, 4), "usage": torch.zeros(8, dtype=torch.long),
           "seen_since_reset": torch.zeros((), dtype=torch.long)}  # fastlam < 0.2 layout
    fresh = VectorQuantizer(8, 4, init="kmeans", backend="torch")
    fresh.load_state_dict(old)
    assert torch.equal(fresh.codebook.weight, old["codebook"]) and bool(fresh.initted)
    with pytest.raises(RuntimeError, match=r"expects \(8, 4\)"):
        vq.load_state_dict({**old, "codebook": torch.randn(16, 4)})


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="init: expected one of"):
        VectorQuantizer(8, 4, init="zeros")
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 4, decay=1.0)
    with pytest.raises(ValueError, match=r"h: expected shape \(\.\.\., 4\)"):
        VectorQuantizer(8, 4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="levels"):
        FSQ([2, 5])
    with pytest.raises(ValueError, match="power of 2"):
        LFQ(codebook_size=100)


def test_the_family_takes_the_peers_argument_names_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vq = VectorQuantizer(codebook_size=16, dim=8, threshold_dead_code=2, ema=True, threshold_ema_dead_code=0.5)
        rvq = ResidualVQ(dim=8, num_quantizers=2, codebook_size=16, threshold_dead_code=2)
        lfq = LFQ(dim=8, codebook_size=16)
        assert VectorQuantizer(16, 8).codebook.weight.shape == (16, 8)  # positional: K, D as before
    assert (vq.codebook_size, vq.dim, vq.threshold_dead_code, vq.threshold_ema_dead_code) == (16, 8, 2, 0.5)
    assert all((q.codebook_size, q.dim, q.threshold_dead_code) == (16, 8, 2) for q in rvq.layers)
    assert (rvq.codebook_size, rvq.dim, lfq.codebook_size, lfq.dim) == (16, 8, 16, 8)


def _train_and_run(vq, seed=0):
    torch.manual_seed(seed)
    outs = [vq(torch.randn(6, 4)) for _ in range(3)]  # a data init and two dead-code resets
    return [(o.z, o.indices, o.loss) for o in outs], vq.state_dict()


@pytest.mark.parametrize("old,new", [
    (dict(num_codes=8, action_dim=4, dead_code_threshold=2), dict(codebook_size=8, dim=4, threshold_dead_code=2)),
    (dict(action_dim=4), dict(dim=4)),  # K positionally, D by its old name
])
def test_old_argument_names_warn_and_build_the_same_module(old, new):
    args = (8,) if "num_codes" not in old else ()
    common = dict(init="data", reset_every_steps=1, backend="torch")
    with pytest.warns(DeprecationWarning) as caught:
        torch.manual_seed(0)
        old_vq = VectorQuantizer(*args, **old, **common)
    said = [str(w.message) for w in caught]
    assert len(said) == len(old) and all(w.filename == __file__ for w in caught)  # points at the caller
    for name, renamed in zip(old, new):
        assert any(f"{name}=" in s and f"use {renamed}=" in s for s in said), said
    torch.manual_seed(0)
    new_vq = VectorQuantizer(*args, **new, **common)
    old_outs, old_state = _train_and_run(old_vq)
    new_outs, new_state = _train_and_run(new_vq)
    assert list(old_state) == list(new_state)
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    for a, b in zip(old_outs, new_outs):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_old_and_new_argument_names_together_are_a_type_error():
    for make in (lambda: VectorQuantizer(codebook_size=8, num_codes=8),
                 lambda: VectorQuantizer(8, 4, action_dim=4),  # the new one positionally
                 lambda: VectorQuantizer(8, 4, dead_code_threshold=1, threshold_dead_code=1),
                 lambda: ResidualVQ(dim=4, num_quantizers=2, codebook_size=8, dead_code_threshold=1, threshold_dead_code=1)):
        with pytest.raises(TypeError) as err:
            make()
        old, new = re.findall(r"'(\w+)'", str(err.value))[:2]
        assert {old, new} in ({"num_codes", "codebook_size"}, {"action_dim", "dim"},
                              {"dead_code_threshold", "threshold_dead_code"}), str(err.value)


def test_old_names_still_work_for_attributes_and_residual_vq():
    with pytest.warns(DeprecationWarning, match=r"ResidualVQ\(dead_code_threshold=\.\.\.\).*threshold_dead_code=") as caught:
        rvq = ResidualVQ(dim=4, num_quantizers=3, codebook_size=8, dead_code_threshold=3)
    assert len(caught) == 1 and all(q.threshold_dead_code == 3 for q in rvq.layers)
    vq = VectorQuantizer(8, 4)
    with pytest.warns(DeprecationWarning, match=r"num_codes is deprecated: use \.codebook_size"):
        assert vq.num_codes == 8
    with pytest.warns(DeprecationWarning, match=r"action_dim is deprecated: use \.dim"):
        assert vq.action_dim == 4
    with pytest.warns(DeprecationWarning, match="dead_code_threshold"):
        vq.dead_code_threshold = 5
    assert vq.threshold_dead_code == 5 and "dead_code_threshold" not in vars(vq)


def test_fused_and_torch_modules_agree_with_ema_and_cosine():
    h = torch.randn(3, 5, 16)
    for kw in (dict(ema=True), dict(cosine=True), dict(init="data", reset_every_steps=1)):
        outs, books = [], []
        for backend in ("torch", "triton"):
            torch.manual_seed(0)
            vq = VectorQuantizer(24, 16, backend=backend, **kw)
            x = h.clone().requires_grad_()
            out = vq(x)
            (out.z.sum() + out.loss).backward()
            outs.append((out.z.detach(), out.indices, out.loss.detach(), x.grad))
            books.append(vq.codebook.weight.detach().clone())
        (za, ia, la, ga), (zb, ib, lb, gb) = outs
        assert torch.equal(ia, ib)
        torch.testing.assert_close(za, zb)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(books[0], books[1], rtol=1e-5, atol=1e-6)


def test_lam_discrete_config_keys_train_and_validate():
    from fastlam.models import EncoderConfig, LatentActionWorldModel, ModelConfig
    from fastlam.models.lam import RegularizerConfig, TransformerConfig
    from fastlam.nn import regularizer_from_config

    reg = RegularizerConfig(kind="discrete", num_codes=8, codebook_init="data", ema=True, reset_every_steps=2, cosine=True)
    cfg = ModelConfig(image_size=32, frames=8, action_dim=16, regularizer=reg,
                      encoder=EncoderConfig(size="tiny", patch_size=8, width=32, heads=2),
                      idm=TransformerConfig(width=32, depth=1, heads=2), predictor=TransformerConfig(width=48, depth=2, heads=4))
    model = LatentActionWorldModel(cfg).train()
    vq = model.regularizer
    assert vq.ema and vq.cosine and vq.init == "data" and vq.reset_every_steps == 2 and vq.reset_every is None
    video = torch.rand(3, 3, 8, 32, 32)
    for _ in range(2):
        out = model(video)
        out.loss.backward()
    assert bool(vq.initted) and "reg/perplexity" in out.metrics and "reg/codes_reset" in out.metrics
    assert all(p is not vq.codebook.weight for p in model.parameters() if p.requires_grad)  # EMA: not optimised
    paper = regularizer_from_config(RegularizerConfig(kind="discrete", reset_every_videos=300_000, reset_every_steps=0), 16, 7)
    assert paper.reset_every == 2_100_000 and paper.reset_every_steps is None
    for bad, match in ((dict(codebook_init="zeros"), "codebook_init"), (dict(reset_every_steps=-1), "reset_every_steps"),
                       (dict(ema_decay=1.5), "ema_decay")):
        with pytest.raises(ValueError, match=f"model.regularizer.{match}"):
            regularizer_from_config(RegularizerConfig(kind="discrete", **bad), 16, 7)


# ----------------------------------------------------------------------------- vector-quantize-pytorch

def _copy_vq(ours: VectorQuantizer, theirs) -> None:
    with torch.no_grad():
        ours.codebook.weight.copy_(theirs._codebook.embed[0])
        if ours.ema:
            ours.embed_avg.copy_(theirs._codebook.embed_avg[0])
            ours.cluster_size.copy_(theirs._codebook.cluster_size[0])


def _run(module, x, g):
    x = x.clone().requires_grad_()
    out = module(x)
    z, idx, loss = out[0], out[1], out[2]
    ((z * g).sum() + (loss.sum() if loss.requires_grad else 0)).backward()
    return z.detach(), idx, loss.detach(), x.grad


def _assert_same_codes(x, codes, ours, theirs, cosine=False):
    """Indices equal, except where two codes tie to fp32 precision: the library computes
    ``||x||^2 + ||e||^2 - 2 x.e`` in fp32 (losing the low bits to ||x||^2), fastlam drops the
    constant ``||x||^2``. At a mismatch fastlam's code must be at least as near in fp64."""
    x, codes = x.detach().double().reshape(-1, codes.shape[-1]), codes.detach().double()
    if cosine:
        x, codes = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(codes, dim=-1)
    ours, theirs = ours.reshape(-1), theirs.reshape(-1)
    bad = ours != theirs
    assert int(bad.sum()) <= 1, f"{int(bad.sum())} indices differ"
    if bad.any():
        d_ours = (x[bad] - codes[ours[bad]]).pow(2).sum(-1)
        d_theirs = (x[bad] - codes[theirs[bad]]).pow(2).sum(-1)
        assert (d_ours <= d_theirs + 1e-6 * x[bad].pow(2).sum(-1)).all()
    return ~bad


VQ_CONFIGS = {  # name: (their kwargs, ours built from them)
    "plain": dict(ema_update=False, learnable_codebook=True, rotation_trick=False, commitment_weight=0.25),
    "ema": dict(),  # the library's defaults: EMA decay 0.8, rotation trick, commitment 1
    "ema_cosine": dict(use_cosine_sim=True, commitment_weight=0.25),
    "ema_straight_through": dict(decay=0.99, rotation_trick=False),
}


@pytest.mark.parametrize("name", list(VQ_CONFIGS))
@pytest.mark.parametrize("k", [16, 1024])
def test_vector_quantize_matches_vector_quantize_pytorch(name, k):
    kw = VQ_CONFIGS[name]
    torch.manual_seed(k)
    theirs = vqp.VectorQuantize(dim=128, codebook_size=k, **kw)
    ours = VectorQuantizer.from_vector_quantize_kwargs(128, k, **kw)
    ours.backend = "torch"
    _copy_vq(ours, theirs)
    for step in range(3):  # EMA state must track too
        x, g = 0.1 * torch.randn(4, 7, 128), torch.randn(4, 7, 128)  # IDM-output scale
        zt, it, lt, gt = _run(theirs, x, g)
        zo, io, lo, go = _run(ours, x, g)
        assert torch.equal(it, io), f"step {step}"  # training steps: exact (a tie would fork the EMA)
        torch.testing.assert_close(zo, zt, rtol=1e-5, atol=1e-5)
        # their learnable-codebook loss is one term with gradients to both sides; ours built from
        # their arguments reads the same value (peer_loss_value) with the same gradients
        torch.testing.assert_close(lo, lt, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(go, gt, rtol=1e-4, atol=1e-6)
        if name == "plain":
            torch.testing.assert_close(ours.codebook.weight.grad, theirs._codebook.embed.grad[0], rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(ours.codebook.weight, theirs._codebook.embed[0].detach(), rtol=1e-5, atol=1e-6)
    theirs.eval(), ours.eval()
    x = torch.randn(64, 5, 128)
    zt, it, _ = theirs(x)
    zo, io, _ = ours(x)
    same = _assert_same_codes(x, ours.codebook.weight, io, it, cosine=ours.cosine)
    torch.testing.assert_close(zo.reshape(-1, 128)[same], zt.reshape(-1, 128)[same])


@pytest.mark.parametrize("dim", [4, 128])
def test_fsq_matches_vector_quantize_pytorch(dim):
    torch.manual_seed(dim)
    theirs = vqp.FSQ(levels=[8, 5, 5, 5], dim=dim)
    ours = FSQ([8, 5, 5, 5], dim=dim)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # the same layout (LFQ: its mask too)
    x, g = 2 * torch.randn(3, 9, dim), torch.randn(3, 9, dim)
    xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    zt, it = theirs(xt)
    zo, io = ours(xo)
    assert torch.equal(it.long(), io)
    torch.testing.assert_close(zo, zt, rtol=1e-6, atol=1e-6)
    (zt * g).sum().backward()
    (zo * g).sum().backward()
    torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.indices_to_codes(io), theirs.indices_to_codes(it), rtol=1e-6, atol=1e-6)
    assert ours.codebook_size == 1000


@pytest.mark.parametrize("dim,codebook_size", [(8, None), (16, None), (32, 256)])
def test_lfq_matches_vector_quantize_pytorch(dim, codebook_size):
    torch.manual_seed(dim)
    theirs = vqp.LFQ(dim=dim, codebook_size=codebook_size, entropy_loss_weight=0.1, commitment_loss_weight=0.25)
    ours = LFQ(dim=dim, codebook_size=codebook_size, entropy_loss_weight=0.1, commitment_loss_weight=0.25)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # the same layout (LFQ: its mask too)
    x, g = 0.05 * torch.randn(2, 5, dim), torch.randn(2, 5, dim)
    zt, it, lt, gt = _run(theirs, x, g)
    zo, io, lo, go = _run(ours, x, g)
    assert torch.equal(it.long(), io)
    torch.testing.assert_close(zo, zt, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lo, lt, rtol=1e-5, atol=1e-6)
    # the entropy gradient sums over all 2^dim codes: fp32 summation order shows at ~1e-6
    torch.testing.assert_close(go, gt, rtol=1e-4, atol=1e-5)
    theirs.eval(), ours.eval()
    assert torch.equal(ours(x).z, theirs(x)[0])


@pytest.mark.parametrize("q", [2, 4])
def test_residual_vq_matches_vector_quantize_pytorch(q):
    torch.manual_seed(q)
    theirs = vqp.ResidualVQ(dim=128, num_quantizers=q, codebook_size=64, commitment_weight=0.25)
    ours = ResidualVQ(dim=128, num_quantizers=q, codebook_size=64, commitment=0.25, codebook_weight=0.25, ema=True,
                      decay=0.8, rotation_trick=True, reset_every_steps=None, backend="torch")
    for a, b in zip(ours.layers, theirs.layers):
        _copy_vq(a, b)
    for _ in range(2):
        x, g = 0.1 * torch.randn(3, 6, 128), torch.randn(3, 6, 128)
        zt, it, lt, gt = _run(theirs, x, g)
        zo, io, lo, go = _run(ours, x, g)
        assert io.shape == (3, 6, q) and torch.equal(it, io)
        torch.testing.assert_close(zo, zt, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lo, lt, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(go, gt, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.codebooks, theirs.codebooks, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.get_output_from_indices(io), theirs.get_output_from_indices(it), rtol=1e-5, atol=1e-5)
