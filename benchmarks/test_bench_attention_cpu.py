"""CPU timings of the attention reference paths (pytest-benchmark, tiny shapes).

These are the paths every CPU machine runs (the test oracle and the SDPA fallback), plus
FlexAttention's CPU forward and one Triton-interpreter call to record how far the
interpreter is from the references. Run: ``python -m pytest benchmarks/test_bench_attention_cpu.py``.
"""
import os

import pytest
import torch

from fastlam.ops import Rope3D, st_attention

pytest.importorskip("pytest_benchmark")

SHAPE = (2, 4, 4 * 32, 32)  # B, heads, 4 frames of 32 tokens, head dim 32
F = 32


def _time(benchmark, fn, rounds=5):
    # Few fixed rounds: this file runs inside the CPU CI suite, which has a time budget.
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.fixture
def qkv():
    torch.manual_seed(0)
    return [torch.randn(*SHAPE) for _ in range(3)]


@pytest.mark.parametrize("backend", ["math", "torch"])
@pytest.mark.parametrize("mask", ["frame_causal", "full"])
def test_bench_reference_forward(benchmark, qkv, backend, mask):
    out = _time(benchmark, lambda: st_attention(*qkv, frame_len=F, mask=mask, backend=backend))
    assert out.shape == qkv[0].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["math", "torch"])
def test_bench_reference_forward_backward_rope(benchmark, qkv, backend):
    q, k, v = (x.clone().requires_grad_() for x in qkv)
    rope = Rope3D(grid_w=8)

    def step():
        st_attention(q, k, v, frame_len=F, rope=rope, backend=backend).sum().backward()

    _time(benchmark, step)
    assert torch.isfinite(q.grad).all()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_bench_flex_forward_cpu(benchmark, qkv):
    out = _time(benchmark, lambda: st_attention(*qkv, frame_len=F, backend="flex"))
    assert torch.isfinite(out).all()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter timing only on CPU")
def test_bench_triton_interpreter_forward(benchmark):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 32) for _ in range(3))
    out = _time(benchmark, lambda: st_attention(q, k, v, frame_len=16, backend="triton"), rounds=2)
    assert torch.isfinite(out).all()
