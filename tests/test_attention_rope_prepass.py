"""RoPE once: the rotation pre-pass, the Triton backend's default RoPE path (issue 25, item 4).

q and k are rotated once by the point-wise rotation kernel, reading the caller's tensors in
place (the strided views of a packed qkv projection, no copy), into contiguous copies that the
plain (ROPE=False) attention kernels take; the backward recomputes that rotation and rotates
dQ and dK back. Checked here under the interpreter (tiny, odd shapes, fresh random inputs per
test) against the float64 reference with the flash-attention error-ratio rule, and against the
per-tile-visit fusion (``FASTLAM_ROPE_FUSION=kernel``).
"""
from __future__ import annotations

import os

import pytest
import torch

# Only a missing triton skips this file: any other import error (a bug in a kernel module or in
# fastlam.ops.triton_attention) fails it.
pytest.importorskip("triton", reason="triton is not installed", exc_type=ModuleNotFoundError)

from fastlam.kernels import attention as kernels  # noqa: E402
from fastlam.kernels import tile_tables  # noqa: E402
from fastlam.nn import STAttention  # noqa: E402
from fastlam.ops import Rope3D, st_attention  # noqa: E402
from fastlam.ops import triton_attention as ta  # noqa: E402
from fastlam.testing import assert_error_ratio  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERP else ("cuda" if torch.cuda.is_available() else "cpu")
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (rope, frame_len, head_dim): V-JEPA 2-AC's two prefix tokens per frame before a 2 x 3 grid,
# head dim 32; no prefix, a 3 x 3 grid (odd 9-token frames), the textbook rotation, head dim 40
# (three 12-channel chunks, 4 channels left unrotated, BLOCK_D 64 with 24 padding channels).
# The reference tests feed the first as views of a packed qkv tensor, the second as 3 tensors.
ROPE_CASES = {
    "prefix": (Rope3D(grid_w=3, num_prefix=2), 8, 32),
    "no_prefix": (Rope3D(grid_w=3, num_prefix=0, duplicated_freqs=False), 9, 40),
}
MASKS = ["frame_causal", "frame_local", "full"]


@pytest.fixture
def default_fusion(monkeypatch):
    """No $FASTLAM_ROPE_FUSION: the path a user gets."""
    monkeypatch.delenv(ta.ROPE_FUSION_ENV, raising=False)


class LaunchLog:
    """Stands in for a ``@triton.jit`` kernel in the launcher module: records each launch's
    arguments, then runs the real kernel."""

    def __init__(self, name: str, real, log: list):
        self.name, self.real, self.log = name, real, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, args, dict(kwargs, grid=tuple(grid))))
            return self.real[grid](*args, **kwargs)
        return launch


def _record_launches(monkeypatch) -> list:
    log = []
    for name in ("rope_rotate_kernel", "attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"):
        monkeypatch.setattr(kernels, name, LaunchLog(name, getattr(kernels, name), log))
    return log


def _packed_views(q, k, v, dtype):
    """q, k, v as the strided views of one (B, L, 3, H, D) tensor, as STAttention's qkv projection
    gives them (gradients retained on the views)."""
    packed = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2).to(dtype).requires_grad_()
    views = list(packed.permute(2, 0, 3, 1, 4))
    for x in views:
        x.retain_grad()
    return views


def _compare_with_reference(q, k, v, do, dtype, *, frame_len, mask, rope, deterministic, packed=False):
    """Forward and backward (cotangent ``do``) of the Triton backend on (q, k, v) in ``dtype``
    against the float64 reference, with the error-ratio rule (2x torch's own error in ``dtype``
    for the output, 3x for the gradients). ``packed``: the Triton side gets q, k, v as views of
    one packed qkv tensor. Returns the Triton output and gradients."""
    kw = dict(frame_len=frame_len, mask=mask, rope=rope)
    sides = {}
    for tag, dt, backend in (("ref", torch.float64, "math"), ("pt", dtype, "math"), ("out", dtype, "triton")):
        if packed and backend == "triton":
            xs = _packed_views(q, k, v, dt)
        else:
            xs = [x.detach().to(dt).requires_grad_() for x in (q, k, v)]
        y = st_attention(*xs, backend=backend, deterministic=deterministic, **kw)
        sides[tag] = (y, xs)
    for y, _ in sides.values():
        y.backward(do.to(y.dtype))
    (out, xo), (pt, xp), (ref, xr) = sides["out"], sides["pt"], sides["ref"]
    assert out.dtype == dtype and out.shape == q.shape
    assert_error_ratio(out, ref, pt, factor=2, atol=ATOL[dtype], what="out")
    for name, a, p, r in zip(("dq", "dk", "dv"), xo, xp, xr):
        assert_error_ratio(a.grad, r.grad, p.grad, factor=3, atol=ATOL[dtype], what=name)
    return out, [x.grad for x in xo]


# ---------------------------------------------------------------------------- the default path


def test_prepass_is_the_default_and_launches_the_plain_kernels(default_fusion, monkeypatch):
    assert ta.rope_fusion() == kernels.DEFAULT_ROPE_FUSION == "prepass"
    log = _record_launches(monkeypatch)
    rope, F, D = ROPE_CASES["prefix"]
    q, k, v = (torch.randn(1, 2, 3 * F, D, device=DEV, requires_grad=True) for _ in range(3))
    out = st_attention(q, k, v, frame_len=F, mask="frame_causal", rope=rope, backend="triton", deterministic=True)
    forward = [(name, kw.get("TRANSPOSE"), kw.get("ROPE")) for name, _, kw in log]
    assert forward == [("rope_rotate_kernel", False, None), ("rope_rotate_kernel", False, None),
                       ("attn_fwd", None, False)]
    log.clear()
    out.backward(torch.randn_like(out))
    backward = [(name, kw.get("TRANSPOSE"), kw.get("ROPE")) for name, _, kw in log]
    # The rotation of q and k recomputed, the plain dK/dV and dQ passes, R^T on dQ and dK.
    assert backward == [("rope_rotate_kernel", False, None), ("rope_rotate_kernel", False, None),
                        ("attn_bwd_dkdv", None, False), ("attn_bwd_dq", None, False),
                        ("rope_rotate_kernel", True, None), ("rope_rotate_kernel", True, None)]


def test_default_path_takes_the_plain_tiles(default_fusion, monkeypatch):
    """The pre-pass path launches the ROPE=False entries of block_config (the plain spill-free
    table), not the ``,rope`` ones: forced tiles on both keys show which one reaches the launch."""
    log = _record_launches(monkeypatch)
    rope, F, D = ROPE_CASES["prefix"]
    q, k, v = (torch.randn(1, 1, 5 * F, D, device=DEV) for _ in range(3))
    plain, fused = (tile_tables.tile_key("fwd", "fp32", 32, r) for r in (False, True))
    with tile_tables.forced({plain: (32, 16, 4, 1), fused: (16, 32, 4, 1)}):
        out = st_attention(q, k, v, frame_len=F, mask="frame_causal", rope=rope, backend="triton")
    (_, _, kw), = [entry for entry in log if entry[0] == "attn_fwd"]
    assert (kw["BLOCK_M"], kw["BLOCK_N"], kw["ROPE"]) == (32, 16, False)
    ref = st_attention(q.double(), k.double(), v.double(), frame_len=F, mask="frame_causal", rope=rope,
                       backend="math")
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("case", sorted(ROPE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_default_path_matches_the_float64_reference(dtype, case, mask, default_fusion):
    rope, F, D = ROPE_CASES[case]
    q, k, v, do = (torch.randn(1, 2, 3 * F, D, device=DEV) for _ in range(4))
    # The deterministic dQ pass on full attention, the atomic fp32 dQ accumulator otherwise.
    _compare_with_reference(q, k, v, do, dtype, frame_len=F, mask=mask, rope=rope, deterministic=mask == "full",
                            packed=case == "prefix")


# ---------------------------------------------------------------------------- packed qkv views


def test_packed_qkv_views_are_rotated_in_place_by_one_launch(default_fusion, monkeypatch):
    """STAttention splits its qkv projection into strided views; one rotation launch reads q and k
    from those views (q's own address and strides, k ``C`` elements further: no .contiguous()
    copy first) and writes contiguous rotated copies, which the attention kernels take with v
    still the view. The backward rotates the same saved views again."""
    B, H, D, F = 2, 2, 32, 8
    C = H * D
    rope = ROPE_CASES["prefix"][0]
    attn = STAttention(C, H, backend="triton").to(DEV)
    projected = []
    attn.qkv.register_forward_hook(lambda mod, inp, out: projected.append(out))
    log = _record_launches(monkeypatch)
    x = torch.randn(B, 3 * F, C, device=DEV, requires_grad=True)
    y = attn(x, frame_len=F, mask="frame_causal", rope=rope)

    (qkv,) = projected
    q_ptr, v_ptr = qkv.data_ptr(), qkv.data_ptr() + 2 * C * qkv.element_size()
    view_strides = (qkv.stride(0), D, qkv.stride(1))  # (B, H, L) strides of the q / k / v views
    (rotation,) = [(args, kw) for name, args, kw in log if name == "rope_rotate_kernel"]
    args, kw = rotation
    src, dst = args[0], args[1]
    assert kw["grid"][2] == 2, "q and k rotated by separate launches"
    assert src.data_ptr() == q_ptr and tuple(args[5:9]) == (*view_strides, C), "q / k copied before rotation"
    assert dst.shape == (2, B, H, 3 * F, D) and dst.is_contiguous()
    (fwd_args,) = [args for name, args, kw in log if name == "attn_fwd"]
    assert [t.data_ptr() for t in fwd_args[:3]] == [dst[0].data_ptr(), dst[1].data_ptr(), v_ptr]

    log.clear()
    dy = torch.randn_like(y)
    y.backward(dy)
    recomputed = [(args, kw) for name, args, kw in log if name == "rope_rotate_kernel" and not kw["TRANSPOSE"]]
    assert [(args[0].data_ptr(), kw["grid"][2]) for args, kw in recomputed] == [(q_ptr, 2)]
    ref = STAttention(C, H, backend="math").to(DEV).double()
    ref.load_state_dict(attn.state_dict())
    x64 = x.detach().double().requires_grad_()
    y64 = ref(x64, frame_len=F, mask="frame_causal", rope=rope)
    y64.backward(dy.double())
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-4, rtol=1e-4)


def test_rope_rotate_qk_layouts(monkeypatch):
    """One launch for two views of one packed buffer, one rotation for k = q, one launch each for
    separate tensors; every way gives the reference rotation (fp64 ``apply_rope_3d``)."""
    from fastlam.ops.rope import apply_rope_3d

    rope, F, D = ROPE_CASES["no_prefix"]
    B, H, L = 2, 3, 2 * F
    tables = ta.rope_position_tables(L, F, D, rope, DEV)
    packed = torch.randn(B, L, 3, H, D, device=DEV)
    q, k, _ = packed.permute(2, 0, 3, 1, 4)
    separate = torch.randn(B, H, L, D, device=DEV)
    log = _record_launches(monkeypatch)
    for a, b, launches in ((q, k, [2]), (q, q, [1]), (q, separate, [1, 1]), (k, q, [2])):
        log.clear()
        ra, rb = kernels.rope_rotate_qk(a, b, F, tables)
        assert [kw["grid"][2] for _, _, kw in log] == launches
        assert ra.is_contiguous() and rb.is_contiguous()
        for got, x in ((ra, a), (rb, b)):
            torch.testing.assert_close(got.double(), apply_rope_3d(x.double(), F, rope), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- the two modes


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_and_prepass_modes_agree(dtype, mask, monkeypatch):
    """Both modes round the rotated operand to the input dtype before the matmuls, so they feed the
    kernels the same values: each meets the reference's rule, and they agree bit for bit under the
    interpreter (the same 16 x 16 tiles in both modes), within a rounding of the dtype on a GPU
    (where the fused mode runs its own tiles, hence another summation order)."""
    rope, F, D = ROPE_CASES["no_prefix" if mask == "full" else "prefix"]
    q, k, v, do = (torch.randn(1, 2, 3 * F, D, device=DEV) for _ in range(4))
    results = {}
    for fusion in ("prepass", "kernel"):
        monkeypatch.setenv(ta.ROPE_FUSION_ENV, fusion)
        results[fusion] = _compare_with_reference(q, k, v, do, dtype, frame_len=F, mask=mask, rope=rope,
                                                  deterministic=True)
    (out_p, grads_p), (out_k, grads_k) = results["prepass"], results["kernel"]
    tol = dict(atol=0.0, rtol=0.0) if INTERP else dict(atol=ATOL[dtype], rtol=ATOL[dtype])
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out_p, *grads_p), (out_k, *grads_k)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"{n}: {m}")
