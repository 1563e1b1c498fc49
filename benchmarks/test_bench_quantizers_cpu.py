"""CPU timings of fastlam's VQ family against vector-quantize-pytorch (pytest-benchmark): one
training forward + backward at the shapes of a LAM's latent actions (1024 latents of width 128).
Both run their PyTorch paths (no Triton on CPU), so this measures the module overhead and
the maths each one does, not the fused kernel.

Run: ``python -m pytest benchmarks/test_bench_quantizers_cpu.py --benchmark-columns=median,iqr``
"""
import pytest
import torch

from fastlam.nn import FSQ, LFQ, ResidualVQ, VectorQuantizer

pytest.importorskip("pytest_benchmark")
vqp = pytest.importorskip("vector_quantize_pytorch")

N_BATCH, N_SEQ, DIM = 8, 128, 128


def _modules(name):
    torch.manual_seed(0)
    if name == "vq_ema_1024":
        return (VectorQuantizer.from_vector_quantize_kwargs(DIM, 1024, rotation_trick=False),
                vqp.VectorQuantize(dim=DIM, codebook_size=1024, rotation_trick=False))
    if name == "vq_plain_1024":
        kw = dict(ema_update=False, learnable_codebook=True, rotation_trick=False)
        return VectorQuantizer.from_vector_quantize_kwargs(DIM, 1024, **kw), vqp.VectorQuantize(DIM, 1024, **kw)
    if name == "rvq4_256":
        kw = dict(dim=DIM, num_quantizers=4, codebook_size=256, rotation_trick=False)
        return ResidualVQ(**kw), vqp.ResidualVQ(**kw)  # the peer's arguments build the peer's quantizer
    if name == "fsq_8555":
        return FSQ([8, 5, 5, 5], dim=DIM), vqp.FSQ(levels=[8, 5, 5, 5], dim=DIM)
    if name == "lfq_12":
        return LFQ(dim=DIM, codebook_size=4096), vqp.LFQ(dim=DIM, codebook_size=4096)
    raise KeyError(name)


@pytest.mark.parametrize("impl", ["fastlam", "vector_quantize_pytorch"])
@pytest.mark.parametrize("name", ["vq_ema_1024", "vq_plain_1024", "rvq4_256", "fsq_8555", "lfq_12"])
def test_bench_quantizer(benchmark, name, impl):
    ours, theirs = _modules(name)
    mod = (ours if impl == "fastlam" else theirs).train()
    if hasattr(mod, "backend"):
        mod.backend = "torch"
    x = (0.1 * torch.randn(N_BATCH, N_SEQ, DIM)).requires_grad_()
    g = torch.randn(N_BATCH, N_SEQ, DIM)

    def step():
        x.grad = None
        out = mod(x)
        loss = (out[0] * g).sum()
        if len(out) > 2 and out[2].requires_grad:
            loss = loss + out[2].sum()
        loss.backward()
        return x.grad

    grad = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    assert torch.isfinite(grad).all()
