"""The plain-PyTorch reference ops (CPU path and test oracle of the fused kernels):
hand-computed values, float64 gradcheck, and the VQ module's straight-through / dead-code logic."""
from __future__ import annotations

import math

import pytest
import torch

from fastlam.nn import GaussianLatentRegularizer, VectorQuantizer
from fastlam.ops import (
    frame_adaln_modulate,
    frame_gated_residual,
    gaussian_kl,
    prediction_loss,
    sparse_energy,
    sparse_regularizer,
    vcm_terms,
    vector_quantize,
)

F64 = dict(dtype=torch.float64)


def test_sparse_energy_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, -0.5]])
    # row 0: ||z||^2 = 1, hinge sqrt(2) - 1, L1 1;  row 1: ||z||^2 = 0.25, hinge sqrt(2) - 0.25, L1 0.5
    want = ((math.sqrt(2) - 1) + 0.3 * 1.0 + (math.sqrt(2) - 0.25) + 0.3 * 0.5) / 2
    assert sparse_energy(z, l_l1=0.3, backend="torch").item() == pytest.approx(want, rel=1e-6)
    big = torch.full((3, 4), 2.0)  # ||z||^2 = 16 > sqrt(4): no hinge, L1 = 8
    assert sparse_energy(big, l_l1=0.1, backend="torch").item() == pytest.approx(0.8, rel=1e-6)


def test_vcm_terms_by_hand():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # mean (2, 3); centred rows (-1, -1), (1, 1); unbiased var 2, cov 2
    var, cov, mean = vcm_terms(z, eps=0.0, backend="torch")
    assert var.item() == pytest.approx(0.0)  # sqrt(2) > 1: no variance hinge
    assert cov.item() == pytest.approx(2 * 2.0**2 / (2 * 1))
    assert mean.item() == pytest.approx(2.5)
    _, _, mabs = vcm_terms(z, mean_term="abs", backend="torch")
    _, _, msq = vcm_terms(z, mean_term="squared", backend="torch")
    assert mabs.item() == pytest.approx(2.5) and msq.item() == pytest.approx((4 + 9) / 2)
    small = 0.1 * torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])  # var 0.01 each
    v, _, _ = vcm_terms(small, eps=0.0, backend="torch")
    assert v.item() == pytest.approx(1 - 0.1, rel=1e-5)
    t = sparse_regularizer(z, l_l1=0.0, backend="torch")
    assert t["loss"].item() == pytest.approx(t["energy"].item() + 0.001 * 4.0 + 0.1 * 2.5, rel=1e-6)


def test_gaussian_kl_by_hand():
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5), backend="torch").item() == 0.0
    # KL per dim = 0.5 (mu^2 + e^lv - 1 - lv): mu = 1, lv = 0 -> 0.5; three dims
    assert gaussian_kl(torch.ones(2, 3), torch.zeros(2, 3), backend="torch").item() == pytest.approx(1.5)
    lv = torch.full((1, 1), math.log(2.0))
    assert gaussian_kl(torch.zeros(1, 1), lv, backend="torch").item() == pytest.approx(0.5 * (2 - 1 - math.log(2)))


def test_prediction_loss_by_hand():
    pred = torch.tensor([[[1.0, -1.0, 3.0]]])
    target = torch.tensor([[[0.0, 0.0, 0.0]]])
    assert prediction_loss(pred, target, backend="torch").item() == pytest.approx(5 / 3)
    assert prediction_loss(pred, target, kind="l2", backend="torch").item() == pytest.approx(11 / 3)
    # a normalised target is zero-mean unit-variance: against itself the loss is 0
    tgt = torch.tensor([[[1.0, 2.0, 6.0]]])
    normed = (tgt - tgt.mean()) / tgt.var(unbiased=False).add(1e-6).sqrt()
    assert prediction_loss(normed, tgt, normalize_target=True, backend="torch").item() == pytest.approx(0, abs=1e-6)


def test_frame_adaln_by_hand():
    x = torch.randn(2, 6, 8)
    zeros = torch.zeros(2, 3, 8)
    ln = torch.nn.functional.layer_norm(x, (8,), eps=1e-6)
    torch.testing.assert_close(frame_adaln_modulate(x, zeros, zeros, 2, backend="torch"), ln)
    scale = torch.zeros(2, 3, 8)
    scale[:, 1] = 1.0  # frame 1 (tokens 2, 3) doubled, the others untouched
    shift = torch.zeros(2, 3, 8)
    shift[:, 2] = 5.0  # frame 2 (tokens 4, 5) shifted
    y = frame_adaln_modulate(x, shift, scale, 2, backend="torch")
    torch.testing.assert_close(y[:, :2], ln[:, :2])
    torch.testing.assert_close(y[:, 2:4], 2 * ln[:, 2:4])
    torch.testing.assert_close(y[:, 4:], ln[:, 4:] + 5)
    gate = torch.zeros(2, 3, 8)
    gate[:, 0] = 1.0
    br = torch.randn_like(x)
    out = frame_gated_residual(x, br, gate, 2, backend="torch")
    torch.testing.assert_close(out[:, :2], x[:, :2] + br[:, :2])
    torch.testing.assert_close(out[:, 2:], x[:, 2:])


def test_gradcheck_float64_references():
    z = torch.randn(7, 5, **F64).requires_grad_()
    for mean_term in ("signed", "abs", "squared"):
        assert torch.autograd.gradcheck(
            lambda z: sparse_regularizer(z, l_l1=0.1, mean_term=mean_term, backend="torch")["loss"], (z,))
    mu = torch.randn(4, 3, **F64).requires_grad_()
    lv = torch.randn(4, 3, **F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, v: gaussian_kl(m, v, backend="torch"), (mu, lv))
    x = torch.randn(2, 6, 5, **F64).requires_grad_()
    sh = torch.randn(2, 3, 5, **F64).requires_grad_()
    sc = torch.randn(2, 3, 5, **F64).requires_grad_()
    w = torch.randn(5, **F64).requires_grad_()
    b = torch.randn(5, **F64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: frame_adaln_modulate(a[0], a[1], a[2], 2, a[3], a[4], backend="torch"), (x, sh, sc, w, b))
    br = torch.randn(2, 6, 5, **F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, br, g: frame_gated_residual(x, br, g, 2, backend="torch"), (x, br, sh))
    t = torch.randn(2, 6, 5, **F64)
    assert torch.autograd.gradcheck(
        lambda p: prediction_loss(p, t, kind="l2", normalize_target=True, backend="torch"), (x,))


def test_vq_straight_through_gradient_reference():
    codebook = torch.randn(16, 4, requires_grad=True)
    z = torch.randn(10, 4, requires_grad=True)
    z_q, idx, cb_loss, commit_loss = vector_quantize(z, codebook, 0.25, backend="torch")
    assert torch.equal(z_q, codebook[idx].detach())
    g = torch.randn_like(z_q)
    dz, = torch.autograd.grad((z_q * g).sum(), z)
    assert torch.equal(dz, g)
    # the codebook learns only from the codebook loss, z only (besides z_q) from the commitment
    dcb, dz2 = torch.autograd.grad(cb_loss + commit_loss, (codebook, z))
    e = codebook[idx].detach()
    want = torch.zeros_like(codebook).index_add_(0, idx, 2 * (e - z.detach()) / z.numel())
    torch.testing.assert_close(dcb, want)
    torch.testing.assert_close(dz2, 0.25 * 2 * (z.detach() - e) / z.numel())


def test_vq_dead_code_reset_revives_codes():
    vq = VectorQuantizer(codebook_size=8, dim=4, reset_every=None, backend="torch")
    with torch.no_grad():
        vq.codebook[4:] = 100.0  # far from every latent: never chosen
    z = torch.randn(32, 4)
    vq.train()
    vq(z)
    assert (vq.usage[4:] == 0).all() and vq.usage.sum() == 32
    revived = vq.reset_dead_codes(z)
    assert revived >= 4
    # every revived code is now a row of the batch
    for c in range(4, 8):
        assert (vq.codebook[c].detach() == z).all(-1).any()
    assert vq.usage.sum() == 0 and vq.seen_since_reset == 0
    out = vq(z)
    assert out.z.shape == z.shape and (vq.usage[4:] > 0).any()


def test_vq_automatic_reset_and_nonfinite_rows():
    vq = VectorQuantizer(codebook_size=8, dim=4, reset_every=20, backend="torch")
    with torch.no_grad():
        vq.codebook[6:] = 100.0
    vq.train()
    out = vq(torch.randn(24, 4))
    assert out.metrics["reg/codes_reset"].item() >= 2
    with pytest.raises(ValueError, match="NaN or Inf"):
        vq(torch.full((3, 4), float("nan")))
    z = torch.randn(5, 4)
    z[0, 0] = float("inf")
    vq.usage.zero_()
    with torch.no_grad():
        vq.codebook[:] = 100.0
    assert vq.reset_dead_codes(z) == 8
    assert torch.isfinite(vq.codebook.weight).all()  # the Inf row never enters the codebook


def test_gaussian_module_eval_is_mean_and_noise_override():
    reg = GaussianLatentRegularizer(action_dim=3, beta=0.5, backend="torch")
    h = torch.randn(4, 6)
    reg.eval()
    out = reg(h)
    torch.testing.assert_close(out.z, h[:, :3])
    reg.train()
    noise = torch.randn(4, 3)
    out = reg(h, noise=noise)
    mu, lv = h[:, :3], h[:, 3:].clamp(-20, 10)
    torch.testing.assert_close(out.z, mu + torch.exp(0.5 * lv) * noise)
    torch.testing.assert_close(out.loss, 0.5 * gaussian_kl(mu, lv, backend="torch"))
