"""Triton spatio-temporal attention against the float64 reference.

CPU machines run the kernels under TRITON_INTERPRET=1 (set by conftest) with tiny shapes,
fp32 and fp16; ``gpu`` tests run bf16 and large shapes on CUDA. Accuracy uses the
flash-attention rule: with ``ref`` the float64 reference and ``pt`` the same maths in the
kernel's dtype in plain PyTorch, ``max|out - ref| <= 2 * max|pt - ref| + atol`` (3x for
gradients), so the bound follows the dtype instead of a hand-picked tolerance.
"""
from __future__ import annotations

import os

import pytest
import torch

# Only a missing triton skips this file: any other import error (a bug in a kernel module or in
# fastlam.ops.triton_attention) fails it.
pytest.importorskip("triton", reason="triton is not installed", exc_type=ModuleNotFoundError)

from fastlam.kernels import attention as kernels  # noqa: E402
from fastlam.kernels import attention_common, tile_tables  # noqa: E402
from fastlam.ops import Rope3D, select_backend, st_attention  # noqa: E402
from fastlam.ops import triton_attention as ta  # noqa: E402
from fastlam.ops.attention import attention_math, attention_sdpa, mask_allows  # noqa: E402
from fastlam.ops.dispatch import AttentionRequest, attention_backend  # noqa: E402
from fastlam.testing import assert_error_ratio  # noqa: E402
from rope_lookup import kernel_rope_lookup  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERP else ("cuda" if torch.cuda.is_available() else "cpu")
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
MASK_CASES = [("full", None), ("causal", None), ("frame_causal", None), ("frame_causal", 2), ("frame_local", None)]


def _inputs(B, H, L, D, dtype, device=DEV, grad=False):
    return [torch.randn(B, H, L, D, device=device, dtype=dtype, requires_grad=grad) for _ in range(3)]


def _run_and_compare(B, H, L, D, dtype, frame_len, mask, window=None, rope=None, deterministic=True,
                     backward=True, scale=None, device=DEV):
    q, k, v = _inputs(B, H, L, D, dtype, device, grad=backward)
    do = torch.randn(B, H, L, D, device=device, dtype=dtype)
    kw = dict(frame_len=frame_len, mask=mask, window_frames=window, rope=rope, scale=scale)
    out, lse = st_attention(q, k, v, backend="triton", deterministic=deterministic, return_lse=True, **kw)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (B, H, L) and lse.dtype == torch.float32

    q64, k64, v64 = (x.detach().double().requires_grad_(backward) for x in (q, k, v))
    ref, ref_lse = st_attention(q64, k64, v64, backend="math", return_lse=True, **kw)
    qp, kp, vp = (x.detach().clone().requires_grad_(backward) for x in (q, k, v))
    pt = st_attention(qp, kp, vp, backend="math", **kw)
    atol = ATOL[dtype]
    assert_error_ratio(out, ref, pt, factor=2, atol=atol, what="out")
    lse_tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert (lse.double() - ref_lse).abs().max().item() < lse_tol
    if not backward:
        return
    out.backward(do)
    ref.backward(do.double())
    pt.backward(do)
    for name, x, r, p in (("dq", q, q64, qp), ("dk", k, k64, kp), ("dv", v, v64, vp)):
        assert_error_ratio(x.grad, r.grad, p.grad, factor=3, atol=atol, what=name)


# ---------------------------------------------------------------------------- interpreter tier


@pytest.mark.parametrize("mask,window", MASK_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_backward_every_mask(mask, window, dtype):
    # frame_len 7 does not divide the 16-token interpreter tiles: partial tiles everywhere.
    _run_and_compare(1, 2, 35, 32, dtype, 7, mask, window, deterministic=dtype == torch.float32)


@pytest.mark.parametrize("L,frame_len,mask,D", [(97, 97, "causal", 32), (17, 1, "frame_causal", 40),
                                                (60, 12, "frame_causal", 80), (30, 10, "frame_local", 96)])
def test_odd_lengths_and_head_dims(L, frame_len, mask, D):
    _run_and_compare(1, 1, L, D, torch.float32, frame_len, mask, deterministic=False)


FUSIONS = ["kernel", "prepass"]


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("rope", [
    Rope3D(grid_w=3, num_prefix=2),  # V-JEPA 2-AC layout: action + state tokens per frame
    Rope3D(grid_w=4, duplicated_freqs=False, spatial_scale=0.5, theta=100.0),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_rope_forward_backward(rope, dtype, fusion, monkeypatch):
    monkeypatch.setenv(ta.ROPE_FUSION_ENV, fusion)
    frame_len = rope.num_prefix + 2 * rope.grid_w
    # fp16 is not deterministic: dQ goes through the fp32 atomic accumulator.
    _run_and_compare(1, 2, 4 * frame_len, 32, dtype, frame_len, "frame_causal", rope=rope,
                     deterministic=dtype == torch.float32)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("D,frame_len,rope,dtype", [
    # head_dim 40: 3 chunks of 12 rotated channels, 4 left as they are; quirk on.
    (40, 8, Rope3D(grid_w=2, num_prefix=2), torch.float32),
    # head_dim 80 (BLOCK_D 128: 2 unrotated + 48 padding channels), odd frame_len 7 with one
    # prefix token, the textbook rotation; fp16 through the atomic dQ path.
    (80, 7, Rope3D(grid_w=3, num_prefix=1, duplicated_freqs=False), torch.float16),
])
def test_rope_unrotated_channels_and_odd_frames(D, frame_len, rope, dtype, fusion, monkeypatch):
    monkeypatch.setenv(ta.ROPE_FUSION_ENV, fusion)
    _run_and_compare(1, 1, 3 * frame_len, D, dtype, frame_len, "causal" if D == 40 else "frame_causal", rope=rope,
                     deterministic=dtype == torch.float32)


def test_rope_fusions_agree_and_deterministic_mode_is_bit_identical():
    # Both fusions round the rotated operand to the input dtype before the matmuls, so they
    # feed the kernels the same values; the kernel fusion's deterministic backward repeats
    # bit for bit.
    D, F, rope = 40, 7, Rope3D(grid_w=2, num_prefix=1)
    q, k, v = _inputs(1, 2, 3 * F, D, torch.float16)
    do = torch.randn_like(q)
    tables = ta.rope_position_tables(q.shape[2], F, D, rope, q.device)
    kw = dict(frame_len=F, mask="frame_causal", scale=D**-0.5, rope_tables=tables)
    results = {}
    for fusion in FUSIONS:
        out, lse = kernels.attention_forward(q, k, v, rope_fusion=fusion, **kw)
        runs = [kernels.attention_backward(do, q, k, v, out, lse, rope_fusion=fusion, deterministic=True, **kw)
                for _ in range(2)]
        for a, b in zip(*runs):
            assert torch.equal(a, b), f"{fusion}: deterministic backward differs between runs"
        results[fusion] = (out, lse, *runs[0])
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), results["kernel"], results["prepass"]):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_rope_rotate_kernel_and_its_transpose():
    from fastlam.ops.rope import apply_rope_3d

    F, D, rope = 7, 40, Rope3D(grid_w=3, num_prefix=1)
    x = torch.randn(1, 2, 3 * F, D)
    g = torch.randn_like(x)
    tables = ta.rope_position_tables(x.shape[2], F, D, rope, x.device)
    rx = kernels.rope_rotate(x, F, tables)
    torch.testing.assert_close(rx.double(), apply_rope_3d(x.double(), F, rope), atol=1e-5, rtol=1e-5)
    # The transpose is the adjoint, <R^T g, x> = <g, R x>, also when written in place.
    rtg = kernels.rope_rotate(g.clone(), F, tables, transpose=True, out=None)
    g_in_place = g.clone()
    kernels.rope_rotate(g_in_place, F, tables, transpose=True, out=g_in_place)
    assert torch.equal(rtg, g_in_place)
    lhs = (rtg.double() * x.double()).sum()
    rhs = (g.double() * apply_rope_3d(x.double(), F, rope)).sum()
    assert abs(lhs - rhs) < 1e-4 * rhs.abs().clamp(min=1)


def test_rope_fusion_bad_values(monkeypatch):
    q, k, v = _inputs(1, 1, 16, 32, torch.float32)
    tables = ta.rope_position_tables(16, 8, 32, Rope3D(grid_w=2), q.device)
    with pytest.raises(ValueError, match="rope_fusion"):
        kernels.attention_forward(q, k, v, frame_len=8, mask="full", scale=1.0, rope_tables=tables,
                                  rope_fusion="epilogue")
    monkeypatch.setenv(ta.ROPE_FUSION_ENV, "fused")
    with pytest.raises(ValueError, match=ta.ROPE_FUSION_ENV):
        st_attention(q, k, v, frame_len=8, rope=Rope3D(grid_w=2), backend="triton")


def test_lse_gradient_flows():
    q, k, v = _inputs(1, 2, 21, 32, torch.float32, grad=True)
    out, lse = st_attention(q, k, v, frame_len=7, backend="triton", return_lse=True)
    (out.sum() + 3 * lse.sum()).backward()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ro, rl = st_attention(q64, k64, v64, frame_len=7, backend="math", return_lse=True)
    (ro.sum() + 3 * rl.sum()).backward()
    for x, r in ((q, q64), (k, k64), (v, v64)):
        torch.testing.assert_close(x.grad.double(), r.grad, atol=2e-5, rtol=1e-4)


def test_outputs_and_grads_poisoned_before_the_run():
    B, H, L, D, F = 1, 2, 33, 40, 11
    q, k, v = _inputs(B, H, L, D, torch.float32)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, L), float("nan"))
    kernels.attention_forward(q, k, v, frame_len=F, mask="frame_causal", scale=D**-0.5, out=out, lse=lse)
    req = AttentionRequest(F, "frame_causal", None, D**-0.5, None, False, True)
    ref, ref_lse = attention_math(q.double(), k.double(), v.double(), req)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    do = torch.randn_like(q)
    for det in (True, False):
        grads = tuple(torch.full_like(q, float("nan")) for _ in range(3))
        kernels.attention_backward(do, q, k, v, out, lse, frame_len=F, mask="frame_causal", scale=D**-0.5,
                                   deterministic=det, grads=grads)
        assert all(torch.isfinite(g).all() for g in grads), f"unwritten gradient elements (deterministic={det})"


def test_deterministic_backward_is_bit_identical():
    q, k, v = _inputs(1, 2, 40, 32, torch.float16)
    do = torch.randn_like(q)
    kw = dict(frame_len=8, mask="frame_causal", scale=32**-0.5)
    out, lse = kernels.attention_forward(q, k, v, **kw)
    first = kernels.attention_backward(do, q, k, v, out, lse, deterministic=True, **kw)
    second = kernels.attention_backward(do, q, k, v, out, lse, deterministic=True, **kw)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_strided_views_are_read_in_place_and_strided_head_dim_is_copied():
    B, H, L, D, F = 1, 2, 24, 32, 8
    packed = torch.randn(B, L, 3, H, D)  # a qkv projection's output, before any copy
    q, k, v = (packed[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, D), L-stride 3*H*D
    assert not q.is_contiguous() and q.stride(-1) == 1
    out = st_attention(q, k, v, frame_len=F, backend="triton")
    ref = st_attention(q, k, v, frame_len=F, backend="math")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    qt = torch.randn(B, H, D, L).transpose(-1, -2)  # head dim strided: documented copy
    out = st_attention(qt, k, v, frame_len=F, backend="triton")
    torch.testing.assert_close(out, st_attention(qt, k, v, frame_len=F, backend="math"), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unit stride"):
        kernels.attention_forward(qt, k, v, frame_len=F, mask="full", scale=1.0)


def test_bad_inputs_name_the_problem(monkeypatch):
    q, k, v = _inputs(1, 1, 16, 32, torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        st_attention(q.double(), k.double(), v.double(), frame_len=8, backend="triton")
    big = torch.randn(1, 1, 16, 160)
    with pytest.raises(ValueError, match="head_dim 160"):
        st_attention(big, big, big, frame_len=8, backend="triton")
    with pytest.raises(ValueError, match="frame_len"):
        st_attention(q, k, v, frame_len=5, backend="triton")
    with pytest.raises(ValueError, match="k: expected the same shape"):
        st_attention(q, k[:, :, :8], v, frame_len=8, backend="triton")
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        kernels.attention_forward(q.double(), k.double(), v.double(), frame_len=8, mask="full", scale=1.0)
    with pytest.raises(ValueError, match="mask"):
        kernels.mask_frames(16, 8, "diagonal")
    req = AttentionRequest(8, "full", None, 1.0, None, False, False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "CPU tensor" in ta.triton_supports(q, req)


def test_auto_never_runs_the_interpreter_on_cpu():
    q = torch.randn(1, 1, 16, 32)
    req = AttentionRequest(8, "frame_causal", None, 1.0, None, False, False)
    assert select_backend(q, req) == "torch"
    assert select_backend(q, req._replace(return_lse=True)) == "math"


def test_tile_ranges_skip_masked_tiles_and_never_mask_full_ones():
    """The per-tile key range of every mask: covers every allowed pair, visits no fully
    masked tile, and the unmasked middle range holds only fully allowed tiles."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(OUT, L, MF, MW, KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # KEYS: the forward / dQ view (key tiles per query tile); else the dK/dV view.
        start = tl.program_id(0) * BLOCK_M
        if KEYS:
            lo, hi, a, b = attention_common.key_range(start, L, MF, MW, BLOCK_M)
        else:
            lo, hi, a, b = attention_common.query_range(start, L, MF, MW, BLOCK_M)
        lo, s, e, hi = attention_common.align_ranges(lo, hi, a, b, BLOCK_N)
        tl.store(OUT + tl.program_id(0) * 4 + tl.arange(0, 4),
                 tl.where(tl.arange(0, 4) == 0, lo, tl.where(tl.arange(0, 4) == 1, s,
                          tl.where(tl.arange(0, 4) == 2, e, hi))))

    BM = BN = 16
    for L, F, mask, window in [(77, 7, "frame_causal", None), (77, 7, "frame_causal", 3), (80, 20, "frame_local", None),
                               (50, 1, "causal", None), (45, 9, "full", None), (96, 32, "frame_causal", 2)]:
        mf, mw = kernels.mask_frames(L, F, mask, window)
        idx = torch.arange(L)
        allowed = mask_allows(idx[:, None], idx[None, :], F, mask, window)
        for keys, grid in ((True, allowed), (False, allowed.T)):  # rows: the tile owner's tokens
            n_t = triton.cdiv(L, BM)
            out = torch.zeros(n_t, 4, dtype=torch.int32)
            probe[(n_t,)](out, L, mf, mw, KEYS=keys, BLOCK_M=BM, BLOCK_N=BN)
            for t in range(n_t):
                lo, s, e, hi = out[t].tolist()
                rows = grid[t * BM:(t + 1) * BM]
                visited = set(range(lo, hi, BN))
                where = f"{mask} L={L} F={F} keys={keys} tile {t}"
                for n0 in range(0, L, BN):
                    if rows[:, n0:n0 + BN].any():
                        assert n0 in visited, f"{where}: tile {n0} holds allowed pairs but is skipped"
                    else:
                        assert n0 not in visited, f"{where}: tile {n0} fully masked but visited"
                for n0 in range(s, e, BN):
                    full = rows[:, n0:n0 + BN]
                    assert full.shape[1] == BN and full.all(), f"{where}: {n0} not full"
                    # Padded query rows are harmless in the forward (never stored) but not as
                    # the dK/dV pass's key tile: a partial key tile must mask every query tile.
                    assert keys or rows.shape[0] == BM, f"{where}: partial key tile run unmasked"


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_forward_on_cpu():
    q, k, v = _inputs(1, 2, 32, 16, torch.float32)
    for mask, window in MASK_CASES:
        kw = dict(frame_len=8, mask=mask, window_frames=window)
        torch.testing.assert_close(st_attention(q, k, v, backend="flex", **kw),
                                   st_attention(q, k, v, backend="math", **kw), atol=1e-5, rtol=1e-5)
    assert "backward" in ta.flex_supports(q.requires_grad_(), AttentionRequest(8, "full", None, 1.0, None, False, False))
    for name in ("flash_attn", "xformers"):
        reason = attention_backend(name).supports(q, AttentionRequest(
            8, "frame_causal", None, 1.0, None, False, False))
        assert reason, f"{name} must refuse a CPU frame_causal request"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_torch_compile_fullgraph_has_no_graph_break(fusion, monkeypatch):
    monkeypatch.setenv(ta.ROPE_FUSION_ENV, fusion)
    rope = Rope3D(grid_w=2, num_prefix=1)

    def f(q, k, v):
        return st_attention(q, k, v, frame_len=5, mask="frame_causal", rope=rope, backend="triton").square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    q, k, v = _inputs(1, 1, 15, 32, torch.float32, grad=True)
    loss = compiled(q, k, v)
    loss.backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    f(q, k, v).backward()
    torch.testing.assert_close(loss, f(q, k, v))
    for g, x in zip(grads, (q, k, v)):
        torch.testing.assert_close(g, x.grad)


def test_rope_tables_match_reference_bitwise():
    from fastlam.ops.rope import rope_tables

    for rope, F, D in [(Rope3D(grid_w=3, num_prefix=2), 8, 40), (Rope3D(grid_w=4, duplicated_freqs=False,
                                                                      spatial_scale=0.25), 16, 64)]:
        L = 5 * F
        rc, rs = rope_tables(L, F, D, rope)
        cos, sin, _ = kernel_rope_lookup(L, F, D, rope)
        assert torch.equal(cos, rc) and torch.equal(sin, rs)


# ---------------------------------------------------------------------------- reference checks


def test_reference_gradcheck_with_rope():
    rope = Rope3D(grid_w=2, num_prefix=1)
    q, k, v = (torch.randn(1, 1, 10, 12, dtype=torch.float64, requires_grad=True) for _ in range(3))
    req = AttentionRequest(5, "frame_causal", rope, 0.3, None, False, False)
    assert torch.autograd.gradcheck(lambda a, b, c: attention_math(a, b, c, req), (q, k, v))


@pytest.mark.parametrize("mask,window", [("frame_causal", None), ("frame_causal", 2), ("frame_local", None)])
def test_reference_frame_causality(mask, window):
    F, T = 6, 4
    q, k, v = (torch.randn(1, 2, F * T, 16) for _ in range(3))
    out = st_attention(q, k, v, frame_len=F, mask=mask, window_frames=window, backend="math")
    for t in range(T - 1):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, (t + 1) * F:] = torch.randn_like(x[:, :, (t + 1) * F:])
        out2 = st_attention(q2, k2, v2, frame_len=F, mask=mask, window_frames=window, backend="math")
        assert torch.equal(out[:, :, :(t + 1) * F], out2[:, :, :(t + 1) * F])


@pytest.mark.parametrize("mask,window", MASK_CASES)
def test_reference_sdpa_matches_math(mask, window):
    q, k, v = (torch.randn(2, 2, 24, 16, dtype=torch.float64) for _ in range(3))
    req = AttentionRequest(6, mask, Rope3D(grid_w=3, num_prefix=0), 0.25, window, False, False)
    torch.testing.assert_close(attention_sdpa(q, k, v, req), attention_math(q, k, v, req))


# ---------------------------------------------------------------------------- GPU tier


@pytest.mark.gpu
@pytest.mark.parametrize("frame_len", [256, 258])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("mask,window", [("frame_causal", None), ("full", None), ("frame_causal", 3),
                                         ("frame_local", None), ("causal", None)])
def test_gpu_bf16_large(frame_len, D, mask, window):
    _run_and_compare(1, 2, 8 * frame_len, D, torch.bfloat16, frame_len, mask, window, deterministic=False,
                     device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("D,dtype,deterministic", [
    (80, torch.bfloat16, True), (96, torch.float16, True), (32, torch.float32, True),
    (64, torch.bfloat16, False), (128, torch.bfloat16, False), (64, torch.float32, False),  # atomic dQ where it exists
])
def test_gpu_head_dims_dtypes_rope(D, dtype, deterministic, fusion, monkeypatch):
    monkeypatch.setenv(ta.ROPE_FUSION_ENV, fusion)
    rope = Rope3D(grid_w=16, num_prefix=2)
    _run_and_compare(2, 2, 4 * 258, D, dtype, 258, "frame_causal", rope=rope, device="cuda",
                     deterministic=deterministic)


@pytest.mark.gpu
def test_gpu_odd_length_and_determinism():
    _run_and_compare(1, 3, 1025, 64, torch.bfloat16, 205, "frame_causal", device="cuda")
    q, k, v = _inputs(2, 4, 2064, 64, torch.bfloat16, device="cuda")
    do = torch.randn_like(q)
    kw = dict(frame_len=258, mask="frame_causal", scale=0.125)
    out, lse = kernels.attention_forward(q, k, v, **kw)
    a = kernels.attention_backward(do, q, k, v, out, lse, deterministic=True, **kw)
    b = kernels.attention_backward(do, q, k, v, out, lse, deterministic=True, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.gpu
def test_gpu_auto_picks_triton_and_compiles_without_graph_break():
    q, k, v = _inputs(1, 2, 512, 64, torch.bfloat16, device="cuda", grad=True)
    req = AttentionRequest(256, "frame_causal", None, 0.125, None, False, False)
    assert select_backend(q, req) == "triton"

    def f(q, k, v):
        return st_attention(q, k, v, frame_len=256, rope=Rope3D(grid_w=16)).float().square().mean()

    loss = torch.compile(f, fullgraph=True)(q, k, v)
    loss.backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def _per_release_tile_cases():
    return [pytest.param(kind, low, block_d, rope_on, tile,
                         id=f"triton{release}-{kind}-{'low' if low else 'fp32'}-hd{block_d}{'-rope' if rope_on else ''}")
            for release, table in tile_tables._TRITON_TILES.items()
            for (kind, low, block_d, rope_on), tile in table.items()]


@pytest.mark.parametrize("kind,low,block_d,rope_on,tile", _per_release_tile_cases())
def test_per_release_tiles_match_the_reference(kind, low, block_d, rope_on, tile, monkeypatch):
    """The tiles a triton release gets instead of the default ones (tile_tables._TRITON_TILES) give
    the reference's results: forced here, since the interpreter otherwise runs 16 x 16 tiles."""
    dtype = torch.float16 if low else torch.float32  # bf16 tl.dot is wrong in the interpreter
    rope = Rope3D(grid_w=3, num_prefix=2) if rope_on else None
    # A ",rope" tile is the fused rotation's (ROPE=True): only the per-visit fusion launches it.
    monkeypatch.setenv(ta.ROPE_FUSION_ENV, "kernel" if rope_on else "prepass")
    frame_len = 8
    key = tile_tables.tile_key(kind, "fp16" if low else "fp32", block_d, rope_on)
    with tile_tables.forced({key: tile}):
        # head dim 8 under BLOCK_D: padded channels; 5 frames of 8: partial tiles.
        _run_and_compare(1, 1, 5 * frame_len, block_d - 8, dtype, frame_len, "frame_causal", rope=rope,
                         deterministic=kind != "bwd_kv_atomic", backward=kind != "fwd")
