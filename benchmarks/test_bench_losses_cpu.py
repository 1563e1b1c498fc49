"""CPU timings of the loss / regularizer / AdaLN reference paths (pytest-benchmark, tiny shapes),
and a plumbing check of every GPU benchmark case through the Triton interpreter.

Run: ``python -m pytest benchmarks/test_bench_losses_cpu.py``.
"""
import pytest
import torch

from fastlam import ops

pytest.importorskip("pytest_benchmark")


def _time(benchmark, fn, rounds=5):
    # Few fixed rounds: this file runs inside the CPU CI suite, which has a time budget.
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def _fwd_bwd(fn, *xs):
    def step():
        for x in xs:
            x.grad = None
        fn(*xs).backward()
        return xs[0].grad
    return step


def test_bench_prediction_loss_reference(benchmark):
    pred = torch.randn(2, 512, 256, requires_grad=True)
    target = torch.randn(2, 512, 256)
    g = _time(benchmark, _fwd_bwd(lambda p: ops.prediction_loss(p, target, normalize_target=True, backend="torch"), pred))
    assert torch.isfinite(g).all()


def test_bench_frame_adaln_reference(benchmark):
    x = torch.randn(2, 4 * 64, 256, requires_grad=True)
    sh = torch.randn(2, 4, 256, requires_grad=True)
    sc = torch.randn(2, 4, 256, requires_grad=True)
    g = _time(benchmark, _fwd_bwd(lambda x, a, b: ops.frame_adaln_modulate(x, a, b, 64, backend="torch").square().mean(),
                                  x, sh, sc))
    assert torch.isfinite(g).all()


def test_bench_sparse_regularizer_reference(benchmark):
    z = torch.randn(4096, 128, requires_grad=True)
    g = _time(benchmark, _fwd_bwd(lambda z: ops.sparse_regularizer(z, l_l1=0.01, backend="torch")["loss"], z))
    assert torch.isfinite(g).all()


def test_bench_gaussian_reference(benchmark):
    h = torch.randn(4096, 256, requires_grad=True)

    def loss(h):
        mu, lv = h.chunk(2, -1)
        z, kl = ops.gaussian_sample_kl(mu, lv, seed=0, backend="torch")
        return z.square().mean() + kl

    g = _time(benchmark, _fwd_bwd(loss, h))
    assert torch.isfinite(g).all()


def test_bench_vq_reference(benchmark):
    z = torch.randn(512, 128, requires_grad=True)
    cb = torch.randn(4096, 128, requires_grad=True)

    def loss(z, cb):
        z_q, _, a, b = ops.vector_quantize(z, cb, backend="torch")
        return z_q.mean() + a + b

    g = _time(benchmark, _fwd_bwd(loss, z, cb))
    assert torch.isfinite(g).all()


def test_gpu_benchmark_cases_run_on_the_interpreter():
    """Every case of benchmarks/bench_losses.py, at tiny shapes, forward + backward on both
    backends with the same result: the GPU script's plumbing is checked on CPU."""
    from benchmarks.bench_losses import _cases, _fwd_bwd

    cases = _cases(quick=False, device="cpu", tiny=True)
    families = {c.name.split("[")[0] for c in cases}
    assert families == {"prediction_loss", "frame_adaln_modulate", "frame_gated_residual", "sparse_regularizer",
                        "gaussian_sample_kl", "vector_quantize"}
    for case in cases:
        torch.manual_seed(0)
        xs, others = case.make()
        outs = []
        for backend in ("torch", "triton"):
            torch.manual_seed(1)  # the same cotangent for both
            out = case.run(backend, *xs, *others)
            _fwd_bwd(lambda *a, b=backend: case.run(b, *a), xs, others)()
            outs.append((out.detach().float(), [x.grad.float() for x in xs]))
        (a, ga), (b, gb) = outs
        if case.name == "gaussian_sample_kl":
            continue  # different noise streams (torch.randn vs in-kernel Philox): only shapes compared
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3, msg=f"{case.name} {case.dtype}")
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=2e-2, atol=2e-3, msg=f"{case.name} {case.dtype} grad")
