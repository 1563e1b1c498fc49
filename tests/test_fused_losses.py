"""Fused Triton kernels of the losses, regularizers and frame-wise AdaLN against the references.

On CPU every kernel runs in the Triton interpreter (tiny, odd shapes); on CUDA the ``gpu``
tests run bf16 and large shapes. Rule (flash-attention's): with ``ref`` the float64 reference,
``pt`` the reference evaluated in the test dtype, the kernel must satisfy
``max|out - ref| <= 2 * max|pt - ref| + atol * max(1, max|ref|)`` (3x for gradients).
"""
from __future__ import annotations

import functools

import pytest
import torch

from fastlam.ops import (
    frame_adaln_modulate,
    frame_gated_residual,
    gaussian_kl,
    gaussian_sample,
    gaussian_sample_kl,
    prediction_loss,
    sparse_energy,
    sparse_regularizer,
    vcm_terms,
    vector_quantize,
    vq_nearest,
)
from fastlam.testing import assert_error_ratio, error_ratio, run_three
from benchmarks.gpu_correctness import gaussian_sample_kl_on_noise, kernel_noise

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
ATOL = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


# This file's atol is relative to the output's scale: fastlam.testing multiplies it by max(1, max|ref|).
assert_ratio = functools.partial(assert_error_ratio, scale_atol_by_ref=True)


def test_the_error_ratio_rule_fails_when_it_should():
    """fastlam.testing's rule can fail: an error past the bound, a NaN, and an atol that only
    passes once scaled by the reference's magnitude."""
    ref = torch.tensor([8.0, -4.0], dtype=torch.float64)
    pt = ref + torch.tensor([0.25, 0.0], dtype=torch.float64)
    check = error_ratio(ref + 0.5, ref, pt, atol=0.0)
    assert check.ok and (check.err, check.torch_err, check.bound) == (0.5, 0.25, 0.5)
    with pytest.raises(AssertionError, match=r"^out: kernel error 7\.500e-01 > 2 x torch error 2\.500e-01"):
        assert_error_ratio(ref + 0.75, ref, pt, atol=0.0, what="out")
    assert_error_ratio(ref + 0.75, ref, pt, factor=3.0, atol=0.0)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_error_ratio(torch.tensor([float("nan"), -4.0]), ref, pt, atol=1.0)
    assert not error_ratio(ref + 0.75, ref, pt, atol=0.05).ok
    assert assert_ratio(ref + 0.75, ref, pt, atol=0.05).atol == pytest.approx(0.4)  # x max(1, max|ref|) = 8


# ---------------------------------------------------------------- prediction loss

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("normalize_target", [False, True])
@pytest.mark.parametrize("grad_mode", ["fused", "recompute"])
def test_prediction_loss_matches_reference(dtype, kind, normalize_target, grad_mode):
    pred = torch.randn(2, 97, 40, requires_grad=True)
    target = torch.randn(2, 97, 40) * 1.5 + 0.3

    def fn(p, t, backend):
        gm = grad_mode if backend == "triton" else "fused"
        return prediction_loss(p, t, kind=kind, normalize_target=normalize_target, backend=backend, grad_mode=gm)

    (lo, lp, lr), (go, gp, gr) = run_three(fn, [pred, target], dtype)
    assert lo.dtype == torch.float32 and lo.dim() == 0
    assert_ratio(lo, lr, lp, atol=ATOL[dtype] * 10, what="loss")
    assert_ratio(go, gr, gp, factor=3.0, atol=ATOL[dtype] * 1e-2, what="dpred")
    assert go.dtype == dtype


def test_prediction_loss_target_gets_no_grad_and_l1_value():
    pred = torch.zeros(1, 3, 5, requires_grad=True)
    target = torch.full((1, 3, 5), 2.0, requires_grad=True)
    loss = prediction_loss(pred, target, backend="triton")
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert target.grad is None
    torch.testing.assert_close(pred.grad, torch.full_like(pred, -1.0 / 15))


def _saved_bytes(fn):
    """Bytes of tensors autograd keeps for backward whose storage is not an input's."""
    seen = []

    def pack(t):
        seen.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_prediction_loss_memory_saved(kind):
    pred = torch.randn(2, 64, 32, dtype=torch.float16, requires_grad=True)
    target = torch.randn(2, 64, 32, dtype=torch.float16)
    inputs = {pred.untyped_storage().data_ptr(), target.untyped_storage().data_ptr()}

    def extra(seen):
        return sum(t.numel() * t.element_size() for t in seen if t.untyped_storage().data_ptr() not in inputs)

    _, ref = _saved_bytes(lambda: prediction_loss(pred, target, kind=kind, backend="torch"))
    _, fused = _saved_bytes(lambda: prediction_loss(pred, target, kind=kind, backend="triton"))
    _, recompute = _saved_bytes(lambda: prediction_loss(pred, target, kind=kind, backend="triton", grad_mode="recompute"))
    n = pred.numel()
    assert extra(ref) >= 4 * n  # the fp32 difference tensor (and, for l2, its fp32 operands)
    assert extra(fused) == 2 * n  # only the gradient itself, in pred's dtype
    assert extra(recompute) == 0


# ---------------------------------------------------------------- frame-wise AdaLN

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("frames,frame_len,d", [(3, 7, 40), (2, 97, 24)])
def test_frame_adaln_matches_reference(dtype, affine, frames, frame_len, d):
    b = 2
    x = (torch.randn(b, frames * frame_len, d) * 2 + 0.5).requires_grad_()
    shift = torch.randn(b, frames, d).requires_grad_()
    scale = (0.3 * torch.randn(b, frames, d)).requires_grad_()
    extra = [torch.randn(d).requires_grad_(), torch.randn(d).requires_grad_()] if affine else []

    def fn(x, shift, scale, *wb, backend):
        return frame_adaln_modulate(x, shift, scale, frame_len, *wb, backend=backend)

    names = ["y", "dx", "dshift", "dscale", "dweight", "dbias"]
    for name, (o, p, r) in zip(names, run_three(fn, [x, shift, scale, *extra], dtype)):
        assert o.dtype == p.dtype
        assert_ratio(o, r, p, factor=2.0 if name == "y" else 3.0, atol=ATOL[dtype], what=name)


def test_frame_adaln_backward_tile_of_triton_3_6(monkeypatch):
    """Before triton 3.7 the AdaLN backward takes a quarter of the forward's rows (half spilled
    8 B on sm_90 under 3.6): the same results, here under the interpreter with that tile."""
    from fastlam.kernels import adaln as adaln_kernels

    assert adaln_kernels._bwd_tile(4, 1024, "3.6.0") == (1, 4)
    assert adaln_kernels._bwd_tile(4, 1024, "3.7.1") == adaln_kernels._bwd_tile(4, 1024, "3.9.0") == (2, 4)
    real = adaln_kernels._bwd_tile
    monkeypatch.setattr(adaln_kernels, "_bwd_tile", lambda m, d, version=None: real(m, d, "3.6.0"))
    b, frames, frame_len, d = 2, 3, 7, 40
    x = (torch.randn(b, frames * frame_len, d) * 2 + 0.5).requires_grad_()
    shift = torch.randn(b, frames, d).requires_grad_()
    scale = (0.3 * torch.randn(b, frames, d)).requires_grad_()
    wb = [torch.randn(d).requires_grad_(), torch.randn(d).requires_grad_()]

    def fn(x, shift, scale, *wb, backend):
        return frame_adaln_modulate(x, shift, scale, frame_len, *wb, backend=backend)

    names = ["y", "dx", "dshift", "dscale", "dweight", "dbias"]
    for name, (o, p, r) in zip(names, run_three(fn, [x, shift, scale, *wb], torch.float32)):
        assert_ratio(o, r, p, factor=2.0 if name == "y" else 3.0, atol=ATOL[torch.float32], what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_frame_gated_residual_matches_reference(dtype):
    b, frames, frame_len, d = 2, 3, 33, 48
    x = torch.randn(b, frames * frame_len, d).requires_grad_()
    branch = torch.randn(b, frames * frame_len, d).requires_grad_()
    gate = torch.randn(b, frames, d).requires_grad_()

    def fn(x, branch, gate, backend):
        return frame_gated_residual(x, branch, gate, frame_len, backend=backend)

    for name, (o, p, r) in zip(["out", "dx", "dbranch", "dgate"], run_three(fn, [x, branch, gate], dtype)):
        assert_ratio(o, r, p, factor=2.0 if name == "out" else 3.0, atol=ATOL[dtype], what=name)


def test_frame_adaln_noncontiguous_modulation():
    """shift/scale sliced out of one (B, T, 6D) projection, as the predictor produces them."""
    b, frames, frame_len, d = 1, 2, 5, 16
    x = torch.randn(b, frames * frame_len, d)
    mod = torch.randn(b, frames, 6 * d)
    shift, scale = mod[..., :d], mod[..., d : 2 * d]
    out = frame_adaln_modulate(x, shift, scale, frame_len, backend="triton")
    ref = frame_adaln_modulate(x, shift, scale, frame_len, backend="torch")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- sparse regularizer

TERMS = ("loss", "energy", "variance", "covariance", "mean")


def _sparse_fn(mean_term, l_l1=0.1):
    def fn(z, backend):
        t = sparse_regularizer(z, l_l1=l_l1, mean_term=mean_term, backend=backend)
        return torch.stack([t[k] for k in TERMS])
    return fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,d,mean_term", [(97, 128, "signed"), (50, 20, "abs"), (300, 64, "squared"), (3, 2, "signed")])
def test_sparse_regularizer_matches_reference(dtype, n, d, mean_term):
    # std ~0.7 puts some columns under the variance hinge and some rows under the norm hinge
    z = (0.7 * torch.randn(n, d) + 0.2 * torch.randn(d)).requires_grad_()
    (o, p, r), (go, gp, gr) = run_three(_sparse_fn(mean_term), [z], dtype)
    for i, k in enumerate(TERMS):
        assert_ratio(o[i], r[i], p[i], atol=ATOL[dtype] * 10, what=k)
    assert_ratio(go, gr, gp, factor=3.0, atol=ATOL[dtype] * 1e-2, what="dz")


def test_sparse_regularizer_offset_columns_fp32():
    """Columns with |mean| = 4 std: the one-pass (uncentred) covariance stays accurate in fp32."""
    z = (0.5 * torch.randn(257, 48) + 2.0).requires_grad_()
    (o, p, r), (go, gp, gr) = run_three(_sparse_fn("signed"), [z], torch.float32)
    torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(go.double(), gr, rtol=1e-3, atol=1e-7)


def test_sparse_regularizer_fp32_stats_tile_of_triton_3_9(monkeypatch):
    """triton >= 3.9 builds the fp32 stats kernel with 16-row tiles (32 spill on sm_80): the
    same results, here under the interpreter by asking for that release's tile."""
    from fastlam.kernels import sparse_reg

    assert sparse_reg.stats_block_n(torch.float32, "3.9.0") == 16
    assert sparse_reg.stats_block_n(torch.float32, "3.7.1") == sparse_reg.stats_block_n(torch.bfloat16, "3.9.0") == 32
    monkeypatch.setattr(sparse_reg, "stats_block_n", lambda dtype, version=None: 16)
    z = (0.7 * torch.randn(97, 128) + 0.2 * torch.randn(128)).requires_grad_()
    (o, p, r), (go, gp, gr) = run_three(_sparse_fn("signed"), [z], torch.float32)
    for i, k in enumerate(TERMS):
        assert_ratio(o[i], r[i], p[i], atol=ATOL[torch.float32] * 10, what=k)
    assert_ratio(go, gr, gp, factor=3.0, atol=ATOL[torch.float32] * 1e-2, what="dz")


def test_sparse_parts_dispatch():
    z = torch.randn(40, 16)
    torch.testing.assert_close(sparse_energy(z, 0.05, backend="triton"), sparse_energy(z, 0.05, backend="torch"))
    for a, b in zip(vcm_terms(z, mean_term="abs", backend="triton"), vcm_terms(z, mean_term="abs", backend="torch")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [100_000, 4097])
def test_gpu_sparse_regularizer_bf16_large(n):
    z = (0.7 * torch.randn(n, 128) + 0.1).requires_grad_()
    (o, p, r), (go, gp, gr) = run_three(_sparse_fn("signed", l_l1=0.01), [z], torch.bfloat16)
    for i, k in enumerate(TERMS):
        assert_ratio(o[i], r[i], p[i], atol=1e-4, what=k)
    assert_ratio(go, gr, gp, factor=3.0, atol=1e-9, what="dz")


# ---------------------------------------------------------------- noisy (Gaussian) regularizer



@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gaussian_kl_matches_reference(dtype):
    mu = torch.randn(97, 130).requires_grad_()
    logvar = (0.8 * torch.randn(97, 130)).requires_grad_()
    res = run_three(lambda m, lv, backend: gaussian_kl(m, lv, backend=backend), [mu, logvar], dtype)
    for name, (o, p, r) in zip(["kl", "dmu", "dlogvar"], res):
        assert_ratio(o, r, p, factor=2.0 if name == "kl" else 3.0, atol=ATOL[dtype], what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gaussian_sample_kl_matches_reference(dtype):
    n, d, seed = 61, 33, 1234
    eps = kernel_noise(n, d, seed)
    h = torch.randn(n, 2 * d)
    h[:, d:] *= 0.8

    def fn(h, backend):
        mu, logvar = h.chunk(2, dim=-1)  # strided halves, as the module passes them
        return gaussian_sample_kl_on_noise(mu, logvar, backend, seed=seed, noise=eps)

    (o, p, r), (go, gp, gr) = run_three(fn, [h.requires_grad_()], dtype)
    assert_ratio(o, r, p, atol=ATOL[dtype], what="z, kl")
    assert_ratio(go, gr, gp, factor=3.0, atol=ATOL[dtype], what="dh")


def test_gaussian_rng_reproducible():
    mu, logvar = torch.randn(40, 64, device=DEV), torch.randn(40, 64, device=DEV)
    z1, _ = gaussian_sample_kl(mu, logvar, seed=7, backend="triton")
    z2, _ = gaussian_sample_kl(mu, logvar, seed=7, backend="triton")
    z3, _ = gaussian_sample_kl(mu, logvar, seed=8, backend="triton")
    assert torch.equal(z1, z2)
    assert not torch.isclose(z1, z3).any()
    torch.manual_seed(5)
    a = gaussian_sample(mu, logvar, backend="triton")
    torch.manual_seed(5)
    b = gaussian_sample(mu, logvar, backend="triton")
    assert torch.equal(a, b)
    eps = kernel_noise(128, 96, seed=99)
    assert abs(eps.mean().item()) < 0.03 and abs(eps.std().item() - 1.0) < 0.03
    # no repeated streams across rows or columns
    assert torch.corrcoef(eps[:8]).fill_diagonal_(0).abs().max() < 0.4


@pytest.mark.gpu
def test_gpu_gaussian_bf16_large():
    n, d, seed = 100_000, 128, 3
    eps = kernel_noise(n, d, seed)
    mu = torch.randn(n, d).requires_grad_()
    logvar = (0.5 * torch.randn(n, d)).requires_grad_()
    fn = functools.partial(gaussian_sample_kl_on_noise, seed=seed, noise=eps)
    for name, (o, p, r) in zip(["out", "dmu", "dlogvar"], run_three(fn, [mu, logvar], torch.bfloat16)):
        assert_ratio(o, r, p, factor=3.0, atol=1e-3, what=name)


# ---------------------------------------------------------------- vector quantizer

def _vq_fn(usage_out=None):
    def fn(z, codebook, backend):
        z_q, idx, cb_loss, commit_loss = vector_quantize(z, codebook, 0.25, backend=backend)
        if usage_out is not None:
            usage_out[backend] = idx
        return torch.cat([z_q.flatten(), cb_loss.reshape(1), commit_loss.reshape(1)])
    return fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,k,d", [(97, 1000, 128), (40, 1000, 130), (5, 16, 8)])
def test_vq_matches_reference(dtype, n, k, d):
    z = torch.randn(n, d).requires_grad_()
    codebook = torch.randn(k, d).requires_grad_()
    idx = {}
    (o, p, r), (gzo, gzp, gzr), (gco, gcp, gcr) = run_three(_vq_fn(idx), [z, codebook], dtype)
    ref_idx = vq_nearest(z.detach().to(dtype), codebook.detach().to(dtype), backend="torch")
    assert torch.equal(idx["triton"], ref_idx)
    assert_ratio(o, r, p, atol=ATOL[dtype], what="z_q, losses")
    assert_ratio(gzo, gzr, gzp, factor=3.0, atol=ATOL[dtype], what="dz")
    assert_ratio(gco, gcr, gcp, factor=3.0, atol=ATOL[dtype], what="dcodebook")


def test_vq_straight_through_ties_and_usage():
    # Small integers and quarter steps: every dot product is exact in fp32 whatever order the
    # dot sums in (a BLAS may round identical rows at different positions differently), so the
    # duplicate codes 7 and 31 tie exactly and the lower index must win, as torch.argmin.
    codebook = torch.randint(-4, 5, (50, 24)).float()
    codebook[31] = codebook[7]
    near = codebook[7:8].clone()
    near[0, 0] += 0.25
    z = torch.cat([near, torch.randn(60, 24)]).requires_grad_()
    usage = torch.zeros(50, dtype=torch.long)
    z_q, idx, _, _ = vector_quantize(z, codebook, usage=usage, backend="triton")
    assert idx[0].item() == 7 and not (idx == 31).any()
    assert torch.equal(z_q, codebook[idx])  # the forward value is exactly the code
    assert torch.equal(usage, torch.bincount(idx, minlength=50))
    g = torch.randn_like(z_q)
    (dz,) = torch.autograd.grad((z_q * g).sum(), z)
    assert torch.equal(dz, g)  # straight-through: the gradient passes unchanged


def test_vq_mixed_precision_z_half_codebook_fp32():
    z = torch.randn(33, 64, dtype=torch.float16)
    codebook = torch.randn(300, 64)
    ref = vq_nearest(z, codebook, backend="torch")
    assert torch.equal(vq_nearest(z, codebook, backend="triton"), ref)


def test_vq_nonfinite_latents_are_reported():
    codebook = torch.randn(20, 8)
    z = torch.randn(10, 8)
    z[3, 2] = float("nan")
    z[6, 0] = float("inf")
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match="z: 2 of 10 latents contain NaN or Inf"):
            vector_quantize(z, codebook, backend=backend)
        usage = torch.zeros(20, dtype=torch.long)
        vector_quantize(z, codebook, usage=usage, check_finite=False, backend=backend)
        assert usage.sum().item() == 8  # the bad rows are not counted as code usage


def test_vq_bad_input():
    with pytest.raises(ValueError, match="codebook: expected code dim 8"):
        vector_quantize(torch.randn(4, 8), torch.randn(16, 9), backend="triton")
    with pytest.raises(ValueError, match="z: expected at least one latent"):
        vector_quantize(torch.randn(0, 8), torch.randn(16, 8), backend="triton")
    with pytest.raises(ValueError, match="usage: expected shape"):
        vector_quantize(torch.randn(4, 8), torch.randn(16, 8), usage=torch.zeros(3), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("cb_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,k", [(8192, 32768), (112, 32768), (1000, 1024)])
def test_gpu_vq_bf16_large(n, k, cb_dtype):
    """bf16 latents against a bf16 codebook (bf16 tensor-core distances) or an fp32 one (the
    autocast case: tf32x3 distances)."""
    z = torch.randn(n, 128, device=DEV, dtype=torch.bfloat16)
    codebook = torch.randn(k, 128, device=DEV, dtype=cb_dtype)
    ref = vq_nearest(z, codebook, backend="torch")
    out = vq_nearest(z, codebook, backend="triton")
    mism = (out != ref).nonzero().flatten()
    # only near-ties may differ (fp32 summation order): their distances must agree to 1e-5
    assert mism.numel() <= max(2, n // 1000)
    zf, cf = z.float(), codebook.float()
    d_out = ((zf[mism] - cf[out[mism]]) ** 2).sum(1)
    d_ref = ((zf[mism] - cf[ref[mism]]) ** 2).sum(1)
    torch.testing.assert_close(d_out, d_ref, rtol=1e-5, atol=1e-4)
    if n * k > 10**6:
        return  # gradients on the small case only: near-ties between bf16 and float64 indices grow with N * K
    zr = torch.randn(n, 128).requires_grad_()
    cr = torch.randn(k, 128).requires_grad_()
    (o, p, r), (gzo, gzp, gzr), (gco, gcp, gcr) = run_three(_vq_fn(), [zr, cr], torch.bfloat16)
    assert_ratio(gzo, gzr, gzp, factor=3.0, atol=1e-3, what="dz")
    assert_ratio(gco, gcr, gcp, factor=3.0, atol=1e-3, what="dcodebook")


# ---------------------------------------------------------------- drop-in modules and a training run

from fastlam.nn import (  # noqa: E402
    FrameAdaLN,
    GaussianLatentRegularizer,
    PredictionLoss,
    SparseLatentRegularizer,
    VectorQuantizer,
)


def test_modules_triton_match_torch():
    h = torch.randn(3, 5, 16)
    a = SparseLatentRegularizer(16, l_l1=0.05, backend="torch")(h)
    b = SparseLatentRegularizer(16, l_l1=0.05, backend="triton")(h)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    g = GaussianLatentRegularizer(8, beta=0.1, backend="triton")
    hg = torch.randn(3, 5, 16)
    torch.manual_seed(11)
    z1 = g(hg)
    torch.manual_seed(11)
    z2 = g(hg)
    assert torch.equal(z1.z, z2.z) and z1.z.shape == (3, 5, 8)
    torch.testing.assert_close(z1.loss, GaussianLatentRegularizer(8, beta=0.1, backend="torch").eval()(hg).loss)
    vq_t, vq_r = VectorQuantizer(40, 16, backend="triton"), VectorQuantizer(40, 16, backend="torch")
    vq_r.load_state_dict(vq_t.state_dict())
    out_t, out_r = vq_t(h), vq_r(h)
    assert torch.equal(out_t.z, out_r.z) and torch.equal(vq_t.usage, vq_r.usage)
    pred, tgt = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    torch.testing.assert_close(PredictionLoss("l2", True, backend="triton")(pred, tgt),
                               PredictionLoss("l2", True, backend="torch")(pred, tgt))
    x, m = torch.randn(2, 6, 16), torch.randn(2, 3, 16)
    torch.testing.assert_close(FrameAdaLN(16, backend="triton")(x, m, m, 2), FrameAdaLN(16, backend="torch")(x, m, m, 2),
                               rtol=1e-5, atol=1e-5)


class _TinyLAM(torch.nn.Module):
    """IDM -> latent regularizer -> one AdaLN-zero predictor block, on fixed random 'states'."""

    def __init__(self, regularizer: torch.nn.Module, d=16, a=8, backend="torch"):
        super().__init__()
        self.backend = backend
        self.idm = torch.nn.Linear(2 * d, regularizer.head_features(a))
        self.reg = regularizer
        self.cond = torch.nn.Linear(a, 3 * d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d))
        self.norm = FrameAdaLN(d, backend=backend)
        self.loss = PredictionLoss("l1", backend=backend)

    def forward(self, s):  # s: (B, T, N, D)
        b, t, n, d = s.shape
        pooled = s.mean(2)
        h = self.idm(torch.cat([pooled[:, :-1], pooled[:, 1:]], -1))  # (B, T-1, feats)
        out = self.reg(h)
        shift, scale, gate = self.cond(out.z).chunk(3, -1)
        x = s[:, :-1].reshape(b, (t - 1) * n, d)
        y = self.norm(x, shift, scale, n)
        x = FrameAdaLN.gated_residual(x, self.mlp(y), gate, n, backend=self.backend)
        return self.loss(x, s[:, 1:].reshape(b, (t - 1) * n, d)) + out.loss


@pytest.mark.parametrize("kind", ["sparse", "discrete"])
def test_training_curves_match_with_and_without_fused_kernels(kind):
    """12 Adam steps of a tiny LAM: the fused path's loss curve matches the reference's
    (relative difference < 1e-4 at every step; measured ~2e-7 in fp32 on the interpreter)."""
    states = torch.randn(4, 3, 8, 16)
    curves = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        reg = (SparseLatentRegularizer(8, l_l1=0.05, backend=backend) if kind == "sparse"
               else VectorQuantizer(16, 8, reset_every=None, backend=backend))
        model = _TinyLAM(reg, backend=backend)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(12):
            loss = model(states)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves[backend] = torch.tensor(losses)
    ref, fused = curves["torch"], curves["triton"]
    assert ref[-1] < ref[0]  # it learns
    rel = ((fused - ref).abs() / ref.abs()).max().item()
    print(f"{kind}: max relative loss-curve difference {rel:.2e}")
    assert rel < 1e-4, f"loss curves differ by {rel:.2e} (relative)"


# ---------------------------------------------------------------- dispatch and bad input

def test_explicit_triton_on_cpu_needs_the_interpreter(monkeypatch):
    if CUDA:
        pytest.skip("CPU-only behaviour")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        prediction_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="triton")


def test_bad_backend_and_float64_triton():
    with pytest.raises(ValueError, match="backend"):
        prediction_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="cuda")
    with pytest.raises(ValueError, match="float64"):
        prediction_loss(torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 2, 3, dtype=torch.float64),
                        backend="triton")
    with pytest.raises(ValueError, match="frame_len"):
        frame_adaln_modulate(torch.randn(1, 6, 4), torch.randn(1, 2, 4), torch.randn(1, 2, 4), 0, backend="triton")
    with pytest.raises(ValueError, match="scale"):
        frame_adaln_modulate(torch.randn(1, 6, 4), torch.randn(1, 2, 4), torch.randn(1, 3, 4), 3, backend="triton")


# ---------------------------------------------------------------- GPU (bf16, large)

@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("normalize_target", [False, True])
def test_gpu_prediction_loss_bf16_large(kind, normalize_target):
    pred = torch.randn(4, 2048, 1024, requires_grad=True)
    target = torch.randn(4, 2048, 1024)

    def fn(p, t, backend):
        return prediction_loss(p, t, kind=kind, normalize_target=normalize_target, backend=backend)

    (lo, lp, lr), (go, gp, gr) = run_three(fn, [pred, target], torch.bfloat16)
    assert_ratio(lo, lr, lp, atol=1e-4, what="loss")
    assert_ratio(go, gr, gp, factor=3.0, atol=1e-9, what="dpred")


@pytest.mark.gpu
@pytest.mark.parametrize("frame_len,d", [(256, 1024), (258, 80)])
def test_gpu_frame_adaln_bf16_large(frame_len, d):
    b, frames = 4, 8
    x = torch.randn(b, frames * frame_len, d).requires_grad_()
    shift = torch.randn(b, frames, d).requires_grad_()
    scale = (0.3 * torch.randn(b, frames, d)).requires_grad_()

    def fn(x, shift, scale, backend):
        return frame_adaln_modulate(x, shift, scale, frame_len, backend=backend)

    for name, (o, p, r) in zip(["y", "dx", "dshift", "dscale"], run_three(fn, [x, shift, scale], torch.bfloat16)):
        assert_ratio(o, r, p, factor=2.0 if name == "y" else 3.0, atol=1e-3, what=name)
    gate = torch.randn(b, frames, d).requires_grad_()
    br = torch.randn_like(x).requires_grad_()
    res = run_three(lambda x, br, g, backend: frame_gated_residual(x, br, g, frame_len, backend=backend),
                    [x, br, gate], torch.bfloat16)
    for name, (o, p, r) in zip(["out", "dx", "dbranch", "dgate"], res):
        assert_ratio(o, r, p, factor=3.0, atol=1e-3, what=name)


def test_mixed_dtypes_promote_like_the_reference():
    """Under autocast the modulation is bf16/fp16 while the residual stream is fp32."""
    x = torch.randn(2, 6, 24, dtype=torch.float16, requires_grad=True)
    sh = torch.randn(2, 3, 24, requires_grad=True)
    sc = (0.2 * torch.randn(2, 3, 24)).requires_grad_()
    br = torch.randn(2, 6, 24, requires_grad=True)
    res = {}
    for backend in ("torch", "triton"):
        y = frame_adaln_modulate(x, sh, sc, 2, backend=backend)
        out = frame_gated_residual(x, br, sh.half(), 2, backend=backend)
        g = torch.autograd.grad(y.sum() + out.float().square().sum(), (x, sh, sc, br))
        res[backend] = (y, out, *g)
    for a, b in zip(res["torch"], res["triton"]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="one dtype"):
        gaussian_kl(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float16), backend="triton")


def test_retained_graph_backward_twice_gives_the_same_gradient():
    pred = torch.randn(2, 5, 12, requires_grad=True)
    target = torch.randn(2, 5, 12)
    for grad_mode in ("fused", "recompute"):
        loss = 2.5 * prediction_loss(pred, target, backend="triton", grad_mode=grad_mode)
        (g1,) = torch.autograd.grad(loss, pred, retain_graph=True)
        (g2,) = torch.autograd.grad(loss, pred)
        assert torch.equal(g1, g2)
        torch.testing.assert_close(g1, 2.5 * torch.sign(pred.detach() - target) / pred.numel())


def _assert_compiled_triton_matches_eager_torch(step, inputs):
    """``step(*inputs, backend)`` traced by torch.compile(fullgraph=True) on the Triton backend
    gives the eager torch backend's value and gradients."""
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    a = compiled(*inputs, "triton")
    ga = torch.autograd.grad(a, inputs)
    b = step(*inputs, "torch")
    gb = torch.autograd.grad(b, inputs)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_torch_compile_fullgraph_through_the_custom_ops():
    """The fused ops are torch.library custom ops with fake implementations: a compiled training
    step traces them without graph breaks and matches the reference."""
    x = torch.randn(2, 6, 16, requires_grad=True)
    m = torch.randn(2, 3, 16, requires_grad=True)
    g = torch.randn(2, 3, 16, requires_grad=True)
    target = torch.randn(2, 6, 16)

    def step(x, m, g, backend):
        y = frame_adaln_modulate(x, m, 0.5 * m, 2, backend=backend)
        out = frame_gated_residual(x, y.relu(), g, 2, backend=backend)
        return prediction_loss(out, target, kind="l2", backend=backend)

    _assert_compiled_triton_matches_eager_torch(step, (x, m, g))


def test_torch_compile_fullgraph_regularizers():
    z = torch.randn(40, 16, requires_grad=True)
    codebook = torch.randn(30, 16, requires_grad=True)
    h = torch.randn(40, 32, requires_grad=True)

    def step(z, codebook, h, backend):
        sparse = sparse_regularizer(z, l_l1=0.05, backend=backend)["loss"]
        mu, logvar = h.chunk(2, -1)
        kl = gaussian_kl(mu, logvar, backend=backend)
        z_q, _, cb_loss, commit = vector_quantize(z, codebook, check_finite=False, backend=backend)
        return sparse + kl + cb_loss + commit + z_q.square().mean()

    _assert_compiled_triton_matches_eager_torch(step, (z, codebook, h))
