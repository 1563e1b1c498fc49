"""Per-frame key padding of st_attention (``frame_key_lengths``): padding inside every frame of
the flattened (frames x frame_len) video, UniVLA-style.

The Triton kernels (the interpreter on CPU) and the torch SDPA backend against the float64
``math`` reference, forward and backward, with the accuracy rule of test_attention_triton.py
(``max|out - ref| <= 2 * max|pt - ref| + atol``, 3x for gradients; ``pt`` the reference in the
kernel's dtype). Frame lengths that are not powers of two, several frames, counts of 0 and of a
whole frame, queries left with no key at all, RoPE on. Inputs and counts are drawn fresh from a
generator seeded per case.
"""
from __future__ import annotations

import os

import pytest
import torch

# Only a missing triton skips this file: any other import error (a bug in a kernel module) fails it.
pytest.importorskip("triton", reason="triton is not installed", exc_type=ModuleNotFoundError)

from fastlam.kernels import attention as kernels  # noqa: E402
from fastlam.nn import STAttention  # noqa: E402
from fastlam.ops import Rope1D, Rope3D, select_backend, st_attention  # noqa: E402
from fastlam.ops.dispatch import AttentionRequest  # noqa: E402
from fastlam.testing import assert_error_ratio  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERP else ("cuda" if torch.cuda.is_available() else "cpu")
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _counts(g: torch.Generator, B: int, frames: int, frame_len: int) -> torch.Tensor:
    """Random valid-key counts per frame, with a frame of none and a whole frame among them; with
    three samples or more, the second is all padding (every query of it sees no key, whatever
    the mask)."""
    counts = torch.randint(0, frame_len + 1, (B, frames), generator=g)
    counts[0, 0] = 0
    counts[-1, -1] = frame_len
    if B >= 3:
        counts[1] = 0
    return counts


def _padded_keys(counts: torch.Tensor, frame_len: int) -> torch.Tensor:
    """(B, L) True where a key is padding, written out per frame (independent of the library)."""
    B, frames = counts.shape
    pad = torch.ones(B, frames, frame_len, dtype=torch.bool)
    for b in range(B):
        for f in range(frames):
            pad[b, f, :int(counts[b, f])] = False
    return pad.reshape(B, frames * frame_len)


def _compare(seed, B, H, frames, frame_len, D, dtype, mask, *, window=None, rope=None, deterministic=True,
             backend="triton"):
    g = torch.Generator().manual_seed(seed)
    L = frames * frame_len
    q, k, v, do = (torch.randn(B, H, L, D, generator=g).to(DEV, dtype) for _ in range(4))
    counts = _counts(g, B, frames, frame_len).to(DEV)
    kw = dict(frame_len=frame_len, mask=mask, window_frames=window, rope=rope, frame_key_lengths=counts)
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    run = dict(backend=backend)
    if backend == "triton":
        run.update(deterministic=deterministic, return_lse=True)
    got = st_attention(*xs, **run, **kw)
    out, lse = got if backend == "triton" else (got, None)
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref, ref_lse = st_attention(*x64, backend="math", return_lse=True, **kw)
    xpt = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    pt = st_attention(*xpt, backend="math", **kw)

    empty = torch.isinf(ref_lse)  # queries whose every allowed key is padding
    assert empty.any(), "the case must hold queries with no key (a frame of count 0)"
    assert_error_ratio(out, ref, pt, factor=2, atol=ATOL[dtype], what="out")
    assert out[empty].abs().max().item() == 0.0
    if lse is not None:
        assert torch.equal(lse.isinf(), empty) and not lse.isnan().any()
        lse_tol = 1e-4 if dtype == torch.float32 else 2e-2
        assert (lse.double()[~empty] - ref_lse[~empty]).abs().max().item() < lse_tol
    out.backward(do)
    ref.backward(do.double())
    pt.backward(do)
    for name, x, r, p in zip(("dq", "dk", "dv"), xs, x64, xpt):
        assert torch.isfinite(x.grad).all(), name
        assert_error_ratio(x.grad, r.grad, p.grad, factor=3, atol=ATOL[dtype], what=name)
    pad = _padded_keys(counts.cpu(), frame_len).to(DEV)[:, None, :, None].expand_as(q)
    for name, x in (("dk", xs[1]), ("dv", xs[2])):
        assert x.grad[pad].abs().max().item() == 0.0, f"{name} of padded keys must be exactly 0"
    assert xs[0].grad[empty[..., None].expand_as(q)].abs().max().item() == 0.0


# ---------------------------------------------------------------------------- Triton, interpreter tier


@pytest.mark.parametrize("mask,window,dtype,deterministic,frame_len,frames", [
    ("frame_causal", None, torch.float32, True, 7, 3),
    ("frame_causal", 2, torch.float16, False, 5, 4),  # atomic dQ path
    ("frame_local", None, torch.float32, False, 6, 3),
    ("full", None, torch.float16, True, 9, 2),
    ("causal", None, torch.float32, True, 5, 3),
    ("temporal_causal", None, torch.float32, True, 5, 4),
    ("temporal", None, torch.float16, False, 3, 5),
])
def test_triton_matches_fp64_reference(mask, window, dtype, deterministic, frame_len, frames):
    _compare(frame_len * 100 + frames, 3, 1, frames, frame_len, 16, dtype, mask, window=window,
             deterministic=deterministic)


@pytest.mark.parametrize("fusion", ["prepass", "kernel"])
def test_triton_with_rope(fusion, monkeypatch):
    """RoPE on (3D, one prefix token per frame of 1 + 2 x 3 tokens): rotation and padding together,
    with the rotation before the kernels and inside them."""
    monkeypatch.setenv("FASTLAM_ROPE_FUSION", fusion)
    _compare(7, 2, 1, 3, 7, 16, torch.float32, "frame_causal", rope=Rope3D(grid_w=3, num_prefix=1))


def test_triton_with_rope1d_temporal():
    _compare(11, 1, 2, 4, 6, 16, torch.float32, "temporal_causal", rope=Rope1D("time"))


# ---------------------------------------------------------------------------- reference backends


@pytest.mark.parametrize("mask", ["frame_causal", "frame_local", "temporal_causal"])
def test_torch_sdpa_matches_fp64_reference(mask):
    """SDPA gets the same dense mask: zero output and finite gradients on the rows without a key."""
    _compare(3, 2, 2, 3, 5, 8, torch.float32, mask, backend="torch")


def test_reference_mask_is_the_per_frame_rule():
    g = torch.Generator().manual_seed(5)
    B, frames, F = 3, 4, 6
    q, k, v = (torch.randn(B, 1, frames * F, 8, generator=g, dtype=torch.float64) for _ in range(3))
    counts = _counts(g, B, frames, F)
    got = st_attention(q, k, v, frame_len=F, mask="full", frame_key_lengths=counts, backend="math")
    keep = ~_padded_keys(counts, F)
    scores = (q @ k.transpose(-1, -2)) * 8 ** -0.5
    probs = torch.softmax(scores.masked_fill(~keep[:, None, None, :], float("-inf")), -1)
    rows = keep.view(B, frames, F).any(-1).any(-1)  # samples with any valid key at all
    want = torch.where(rows[:, None, None, None], probs.nan_to_num(0.0) @ v, 0.0)
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------- same as key_lengths


@pytest.mark.parametrize("backend", ["math", "torch", "triton"])
def test_equals_key_lengths_when_padding_is_only_at_the_end(backend):
    """Counts that pad only the end of the sequence (full frames, one partial, then empty ones)
    give what the per-sequence ``key_lengths`` gives."""
    g = torch.Generator().manual_seed(13)
    B, H, frames, F, D = 3, 1, 4, 7, 16
    L = frames * F
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(DEV) for _ in range(3))
    lengths = torch.tensor([L, 10, 0])
    counts = (lengths[:, None] - torch.arange(frames)[None, :] * F).clamp(0, F)
    for mask in ("frame_causal", "temporal_causal"):
        kw = dict(frame_len=F, mask=mask, backend=backend)
        by_frame = st_attention(q, k, v, frame_key_lengths=counts.to(DEV), **kw)
        by_seq = st_attention(q, k, v, key_lengths=lengths.to(DEV), **kw)
        if backend == "math":
            assert torch.equal(by_frame, by_seq)
        else:  # other tile ranges (key_lengths clips them): the same values up to summation order
            torch.testing.assert_close(by_frame, by_seq, atol=2e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- modules and dispatch


def test_stattention_forwards_frame_key_lengths():
    torch.manual_seed(0)
    m = STAttention(32, 2).double()
    x = torch.randn(2, 3 * 5, 32, dtype=torch.float64)
    counts = torch.tensor([[5, 2, 0], [1, 5, 3]])
    got = m(x, frame_len=5, mask="frame_causal", frame_key_lengths=counts)
    q, k, v = m._heads(m.qkv(x), 3)
    ref = st_attention(q, k, v, frame_len=5, mask="frame_causal", frame_key_lengths=counts, backend="math")
    torch.testing.assert_close(got, m.proj(ref.transpose(1, 2).reshape(2, 15, 32)))
    assert not torch.equal(got, m(x, frame_len=5, mask="frame_causal"))


def test_backends_without_it_fall_back_with_a_reason():
    q = torch.randn(1, 1, 8, 16)
    req = AttentionRequest(frame_len=4, mask="full", rope=None, scale=0.25, window_frames=None, deterministic=False,
                           return_lse=False, frame_key_lengths=torch.tensor([[4, 2]]))
    with pytest.raises(ValueError, match="key padding"):
        select_backend(q, req, "flex")
    assert select_backend(q, req, "auto") == "torch"


# ---------------------------------------------------------------------------- bad arguments


def _qkv(B=2, L=12, D=8):
    return [torch.randn(B, 1, L, D) for _ in range(3)]


@pytest.mark.parametrize("counts,error,match", [
    (torch.tensor([[4, 4, 4, 4], [1, 2, 3, 4]]), ValueError, r"frame_key_lengths: expected shape \(B, key frames\) = \(2, 3\)"),
    (torch.tensor([4, 4]), ValueError, r"frame_key_lengths: expected a 2-D tensor of shape \(B, key frames\) = \(2, 3\)"),
    (torch.ones(2, 3), TypeError, r"frame_key_lengths: expected dtype in \(int32, int64\)"),
    (torch.tensor([[4, 5, 0], [0, 0, 0]]), ValueError, r"frame_key_lengths: expected values in \[0, frame_len=4\]"),
    (torch.tensor([[4, -1, 0], [0, 0, 0]]), ValueError, r"expected values in \[0, frame_len=4\]"),
    ([[4, 4, 4], [4, 4, 4]], TypeError, r"frame_key_lengths: expected a torch.Tensor"),
])
def test_bad_frame_key_lengths_are_refused(counts, error, match):
    with pytest.raises(error, match=match):
        st_attention(*_qkv(), frame_len=4, mask="frame_causal", frame_key_lengths=counts, backend="math")


def test_frame_key_lengths_with_key_lengths_is_refused():
    with pytest.raises(ValueError, match="either key_lengths .* or frame_key_lengths"):
        st_attention(*_qkv(), frame_len=4, frame_key_lengths=torch.full((2, 3), 4), key_lengths=torch.tensor([3, 4]))


def test_kernel_launcher_checks_shape_and_dtype():
    # CPU tensors under the interpreter (CI), CUDA tensors on a GPU machine.
    device = "cpu" if INTERP else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the launcher needs CUDA, or CPU tensors with TRITON_INTERPRET=1")
    q, k, v = (torch.randn(2, 1, 12, 16, device=device, dtype=torch.float16) for _ in range(3))
    common = dict(frame_len=4, mask="frame_causal", scale=0.25)
    full = lambda shape, dtype=torch.int64: torch.full(shape, 4, dtype=dtype, device=device)
    with pytest.raises(ValueError, match=r"frame_key_lengths: expected an int32 tensor of shape \(2, 3\)"):
        kernels.attention_forward(q, k, v, frame_key_lengths=full((2, 3)), **common)  # int64
    with pytest.raises(ValueError, match=r"frame_key_lengths: expected an int32 tensor of shape \(2, 3\)"):
        kernels.attention_forward(q, k, v, frame_key_lengths=full((2, 4), torch.int32), **common)
    with pytest.raises(ValueError, match="pass one of them"):
        kernels.attention_forward(q, k, v, frame_key_lengths=full((2, 3), torch.int32),
                                  key_lengths=full((2,), torch.int32), **common)
