"""Temporal masks and key padding of st_attention: the Triton kernels (interpreter on CPU)
against the float64 reference, and the reference against the factorised layouts.

Same accuracy rule as test_attention_triton.py: max|out - ref| <= 2 * max|pt - ref| + atol
(3x for gradients), ``ref`` float64, ``pt`` the same maths in the kernel's dtype.
"""
from __future__ import annotations

import os

import pytest
import torch

# Only a missing triton skips this file: any other import error (a bug in a kernel module) fails it.
pytest.importorskip("triton", reason="triton is not installed", exc_type=ModuleNotFoundError)

from fastlam.kernels import attention as kernels  # noqa: E402
from fastlam.kernels import attention_common  # noqa: E402
from fastlam.ops import st_attention  # noqa: E402
from fastlam.ops.attention import mask_allows  # noqa: E402
from fastlam.testing import assert_error_ratio  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERP else ("cuda" if torch.cuda.is_available() else "cpu")
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _compare(B, H, L, D, dtype, frame_len, mask, window=None, key_lengths=None, deterministic=True, device=DEV):
    g = torch.Generator().manual_seed(L * 131 + D)
    q, k, v, do = (torch.randn(B, H, L, D, generator=g).to(device, dtype) for _ in range(4))
    kl = None if key_lengths is None else torch.tensor(key_lengths, device=device)
    kw = dict(frame_len=frame_len, mask=mask, window_frames=window, key_lengths=kl)
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    out, lse = st_attention(*xs, backend="triton", deterministic=deterministic, return_lse=True, **kw)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref, ref_lse = st_attention(*x64, backend="math", return_lse=True, **kw)
    xpt = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    pt = st_attention(*xpt, backend="math", **kw)
    assert_error_ratio(out, ref, pt, factor=2, atol=ATOL[dtype], what="out")
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    fin = ~ref_lse.isinf()
    assert (lse.double()[fin] - ref_lse[fin]).abs().max().item() < (1e-4 if dtype == torch.float32 else 2e-2)
    out.backward(do)
    ref.backward(do.double())
    pt.backward(do)
    for name, x, r, p in zip(("dq", "dk", "dv"), xs, x64, xpt):
        assert_error_ratio(x.grad, r.grad, p.grad, factor=3, atol=ATOL[dtype], what=name)


# ---------------------------------------------------------------------------- interpreter tier


@pytest.mark.parametrize("mask,window,dtype,deterministic", [
    ("temporal_causal", None, torch.float32, True),
    ("temporal", None, torch.float16, False),  # atomic dQ path
    ("temporal_causal", 2, torch.float16, True),
])
def test_temporal_masks_forward_backward(mask, window, dtype, deterministic):
    # frame_len 7 against 16-token interpreter tiles: every tile straddles frames.
    _compare(1, 2, 35, 32, dtype, 7, mask, window, deterministic=deterministic)


def test_temporal_masks_258_token_frames():
    # V-JEPA-like frames that do not divide any tile; odd head dim; atomic dQ.
    _compare(1, 1, 2 * 258, 24, torch.float32, 258, "temporal_causal", deterministic=False)


@pytest.mark.parametrize("L,frame_len,mask", [(1, 1, "temporal"), (3, 1, "temporal_causal"), (4, 2, "temporal")])
def test_temporal_masks_tiny(L, frame_len, mask):
    _compare(2, 1, L, 8, torch.float32, frame_len, mask)


@pytest.mark.parametrize("mask,window,lengths", [
    ("frame_causal", None, [20, 35]),
    ("frame_local", None, [3, 30]),  # frames past the first have no key in sample 0: zero rows
    ("temporal_causal", None, [3, 35]),
    ("full", None, [1, 17]),
])
def test_key_padding_forward_backward(mask, window, lengths):
    _compare(2, 1, 35, 16, torch.float32, 7, mask, window, key_lengths=lengths, deterministic=mask != "full")


def test_temporal_tile_runs_visit_exactly_the_tiles_with_allowed_pairs():
    """The per-shift tile runs of the temporal masks (forward / dQ: key tiles of a query
    tile; dK/dV: query tiles of a key tile) visit every tile holding an allowed pair once,
    and no fully masked tile."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(OUT, L, KL, MF, MW, NT, KEYS: tl.constexpr, TEMPORAL: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
        start = tl.program_id(0) * BLOCK_M
        done = start * 0
        if KEYS:
            j_hi, n_j, m1 = attention_common.temporal_key_shifts(start, L, MF, MW, BLOCK_M, TEMPORAL)
            for t in range(0, n_j):
                r0, r1, done = attention_common.shifted_run(start, m1, -(j_hi - t) * MF, KL, done, BLOCK_N)
                for s in range(r0, r1, BLOCK_N):
                    p = OUT + tl.program_id(0) * NT + s // BLOCK_N
                    tl.store(p, tl.load(p) + 1)
        else:
            n1 = tl.minimum(start + BLOCK_M, KL)
            j_lo, n_j = attention_common.temporal_query_shifts(start, n1, L, MF, MW, TEMPORAL)
            for t in range(0, n_j):
                r0, r1, done = attention_common.shifted_run(start, n1, (j_lo + t) * MF, L, done, BLOCK_N)
                for s in range(r0, r1, BLOCK_N):
                    p = OUT + tl.program_id(0) * NT + s // BLOCK_N
                    tl.store(p, tl.load(p) + 1)

    B = 16
    for L, F, mask, window, klen in [(77, 7, "temporal_causal", None, 77), (77, 7, "temporal", None, 77),
                                     (96, 5, "temporal_causal", 3, 96), (80, 40, "temporal", None, 80),
                                     (70, 35, "temporal_causal", None, 50), (64, 4, "temporal", None, 33)]:
        mf, mw = kernels.mask_frames(L, F, mask, window)
        idx = torch.arange(L)
        allowed = mask_allows(idx[:, None], idx[None, :], F, mask, window) & (idx[None, :] < klen)
        n_t = triton.cdiv(L, B)
        for keys, grid in ((True, allowed), (False, allowed.T)):
            out = torch.zeros(n_t, n_t, dtype=torch.int32)
            probe[(n_t,)](out, L, klen, mf, mw, n_t, KEYS=keys, TEMPORAL=kernels.TEMPORAL_MODE[mask],
                          BLOCK_M=B, BLOCK_N=B)
            for a in range(n_t):
                for b in range(n_t):
                    has = bool(grid[a * B:(a + 1) * B, b * B:(b + 1) * B].any())
                    assert out[a, b].item() == int(has), (
                        f"{mask} L={L} F={F} window={window} klen={klen} keys={keys}: tile ({a},{b}) "
                        f"visited {out[a, b].item()}x, holds allowed pairs: {has}")


# ---------------------------------------------------------------------------- reference semantics


@pytest.mark.parametrize("causal", [True, False])
def test_flattened_temporal_mask_equals_factorised_layout(causal):
    """Genie / UniVLA temporal attention runs on (B*S, T, E) with a causal (or no) mask; on the
    flattened (B, T*S, E) video the temporal masks give the same output."""
    B, H, T, S, D = 2, 2, 4, 6, 8
    q, k, v = (torch.randn(B, H, T * S, D, dtype=torch.float64) for _ in range(3))
    flat = st_attention(q, k, v, frame_len=S, mask="temporal_causal" if causal else "temporal", backend="math")

    def fact(x):  # (B, H, T*S, D) -> (B*S, H, T, D)
        return x.unflatten(2, (T, S)).permute(0, 3, 1, 2, 4).reshape(B * S, H, T, D)

    ref = torch.nn.functional.scaled_dot_product_attention(fact(q), fact(k), fact(v), is_causal=causal)
    ref = ref.reshape(B, S, H, T, D).permute(0, 2, 3, 1, 4).reshape(B, H, T * S, D)
    torch.testing.assert_close(flat, ref, rtol=1e-12, atol=1e-12)
    assert st_attention(q, k, v, frame_len=S, mask="frame_causal", backend="math").sub(ref).abs().max() > 0.1


def test_key_padding_reference_matches_sdpa_and_zero_rows():
    q, k, v = (torch.randn(2, 2, 12, 8, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([5, 12])
    got = st_attention(q, k, v, frame_len=4, mask="frame_causal", key_lengths=lengths, backend="math")
    pad = (torch.arange(12)[None, :] < lengths[:, None])[:, None, None, :]
    frame = mask_allows(torch.arange(12)[:, None], torch.arange(12)[None, :], 4, "frame_causal")
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pad & frame)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(st_attention(q, k, v, frame_len=4, mask="frame_causal", key_lengths=lengths,
                                            backend="torch"), ref)
    # frame_local: frames 1, 2 of sample 0 see only padding -> zeros, finite gradients
    q.requires_grad_()
    out, lse = st_attention(q, k, v, frame_len=4, mask="frame_local", key_lengths=lengths, backend="math",
                            return_lse=True)
    assert out[0, :, 8:].abs().max() == 0 and torch.isinf(lse[0, :, 8:]).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("mask", ["temporal_causal", "temporal"])
def test_reference_backends_agree_on_temporal_masks(mask):
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    ref = st_attention(q, k, v, frame_len=8, mask=mask, backend="math")
    for backend in ("torch", "flex"):
        torch.testing.assert_close(st_attention(q, k, v, frame_len=8, mask=mask, backend=backend), ref,
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- GPU tier


@pytest.mark.gpu
@pytest.mark.parametrize("frame_len", [256, 258])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("mask,window,lengths", [("temporal_causal", None, None), ("temporal", None, None),
                                                 ("temporal_causal", 3, None), ("frame_causal", None, [1500, 2064]),
                                                 ("temporal_causal", None, [700, 2064])])
def test_gpu_bf16_large(frame_len, D, mask, window, lengths):
    if lengths is not None:
        lengths = [min(n, 8 * frame_len) for n in lengths]
    _compare(2, 2, 8 * frame_len, D, torch.bfloat16, frame_len, mask, window, key_lengths=lengths,
             deterministic=False, device="cuda")


def test_bench_allowed_pairs_counts_temporal_masks():
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from benchmarks.bench_attention import allowed_pairs

    idx = torch.arange(24)
    for mask, window in (("temporal", None), ("temporal_causal", None), ("temporal_causal", 2)):
        dense = mask_allows(idx[:, None], idx[None, :], 4, mask, window).sum().item()
        assert allowed_pairs(24, 4, mask, window) == dense, mask


def test_spilling_mask_variants_are_neither_registered_nor_launched_on_cuda():
    """fp32 masked variants and 16-bit hd32 key padding spilled in the static check: they run on
    the reference backends on CUDA (with the reason), and no registry entry claims them."""
    import torch

    from fastlam.kernels import attention as K
    from fastlam.kernels.registry import all_configs

    names = [c.name for c in all_configs()]
    assert not [n for n in names if ",fp32," in n and any(v in n for v in ("temporal", "key_pad"))]
    assert not [n for n in names if "hd32,bf16,key_pad" in n or "hd32,fp16,key_pad" in n]
    assert [n for n in names if "hd64,bf16,temporal_causal" in n]  # the bf16 variants stay fused
    assert "fp32" in K.mask_variant_gap(torch.float32, 64, "temporal")
    assert "head_dim <= 32" in K.mask_variant_gap(torch.float16, 32, "key_pad")
    assert K.mask_variant_gap(torch.bfloat16, 64, "key_pad") is None
    assert K.mask_variant_gap(torch.bfloat16, 32, "temporal_causal") is None


def test_gpu_launches_outside_the_compiled_set_fall_back_with_the_reason():
    """Every mask-variant launch the Triton backend takes on CUDA is one the static check compiled:
    the registry holds each variant with no in-kernel RoPE, and per-frame padding with each
    temporal mask, so those take the kernels; in-kernel RoPE with a variant, or key_lengths with a
    temporal mask, go to the reference backends with a reason instead of a first compile on the GPU."""
    pytest.importorskip("triton")
    from fastlam.kernels import attention as K
    from fastlam.kernels.registry import all_configs

    names = [c.name for c in all_configs()]
    for variants in (["temporal_causal"], ["frame_key_pad"], ["temporal", "frame_key_pad"], ["key_pad"]):
        assert K.mask_combination_gap(variants, rope_in_kernel=False) is None
        assert [n for n in names if f"bf16,{'+'.join(variants)}," in n], variants  # registered, so compiled
        assert "FASTLAM_ROPE_FUSION=kernel" in K.mask_combination_gap(variants, rope_in_kernel=True)
    assert not [n for n in names if "key_pad" in n and "temporal" in n and "frame_key_pad" not in n]
    assert "key_lengths with the temporal_causal mask" in K.mask_combination_gap(["temporal_causal", "key_pad"], False)
    assert K.mask_combination_gap([], rope_in_kernel=True) is None  # plain masks: the fused-RoPE tiles are registered
