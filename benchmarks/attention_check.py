"""The output check benchmarks/bench_attention.py runs on every runner before timing it: a runner
whose output (or, for forward + backward, whose gradients) breaks the unit tests' error-ratio
rule (:mod:`fastlam.testing`) is reported as failing and not timed.

With ``ref`` the float64 reference (fastlam's ``math`` backend on upcast inputs, the mask the
runner computes, its RoPE) and ``pt`` the same maths in the runner's dtype, a runner passes
when ``max|out - ref| <= 2 x max|pt - ref| + atol`` for the output and 3 x for dq, dk, dv; a
non-finite value fails. On CUDA the caching allocator is emptied and a large block filled
with NaN before each runner, so an output element the runner never writes shows up as NaN
instead of the previous runner's (correct) values.

The check runs at batch 1 and at most :data:`CHECK_MAX_TOKENS` tokens (whole frames): the
float64 reference holds the (H, L, L) scores; fresh random inputs for every (shape, mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastlam.ops import st_attention
from fastlam.testing import error_ratio

# Absolute slack of the rule per dtype (as tests/test_attention_triton.py).
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
CHECK_MAX_TOKENS = 4096
GRADS = ("dq", "dk", "dv")


@dataclass
class Check:
    """One runner's check: ``ok``, and per output / gradient ``[error, bound]``, or why not."""

    ok: bool
    errors: dict = field(default_factory=dict)
    why: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.ok else f"failed check: {self.why}"


def check_shape(B: int, H: int, T: int, F: int, D: int, max_tokens: int = CHECK_MAX_TOKENS) -> tuple:
    """(B, H, T, F, D) of the check for a timed shape: batch 1, whole frames up to
    ``max_tokens`` (at least one)."""
    return 1, H, max(1, min(T, max_tokens // F)), F, D


def check_inputs(shape: tuple, dtype, device: str, seed: int = 0) -> tuple:
    """Fresh random q, k, v and output cotangent of a (B, H, T, F, D) shape (never zeros: they
    hide unwritten outputs)."""
    B, H, T, F, D = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return tuple(torch.randn(B, H, T * F, D, generator=gen).to(device, dtype) for _ in range(4))


def _math(q, k, v, do, frame_len, mask, rope, backward) -> list[torch.Tensor]:
    q, k, v = (x.detach().clone().requires_grad_(backward) for x in (q, k, v))
    out = st_attention(q, k, v, frame_len=frame_len, mask=mask, rope=rope, backend="math")
    if not backward:
        return [out.detach()]
    out.backward(do)
    return [out.detach(), q.grad, k.grad, v.grad]


def references(inputs: tuple, frame_len: int, mask: str, rope, backward: bool) -> tuple[list, list]:
    """(float64 reference, same maths in the inputs' dtype): [out] or [out, dq, dk, dv]."""
    ref = _math(*(x.double() for x in inputs), frame_len, mask, rope, backward)
    return ref, _math(*inputs, frame_len, mask, rope, backward)


def poison_cuda_allocator(nbytes: int = 1 << 30) -> None:
    """Leave a NaN-filled block as the caching allocator's only free one (the next outputs are
    cut from it)."""
    if not torch.cuda.is_available():
        return
    torch.cuda.empty_cache()
    n = min(nbytes, torch.cuda.mem_get_info()[0] // 2) // 4
    torch.empty(n, device="cuda").fill_(float("nan"))


def check_runner(runner, inputs: tuple, frame_len: int, backward: bool, refs: dict) -> Check:
    """Run ``runner`` on ``inputs`` (q, k, v, do) and judge its output (and gradients) by the
    rule; ``refs`` caches the references per (mask computed, RoPE) across runners."""
    q, k, v, do = inputs
    key = (runner.computes, id(runner.rope))
    if key not in refs:
        refs[key] = references(inputs, frame_len, runner.computes, runner.rope, backward)
    ref, pt = refs[key]
    xs = [x.detach().clone().requires_grad_(backward) for x in (q, k, v)]
    poison_cuda_allocator()
    try:
        out = runner.fn(*xs)
        if out.shape != q.shape or out.dtype != q.dtype:
            return Check(False, why=f"output {tuple(out.shape)} {out.dtype}, expected {tuple(q.shape)} {q.dtype}")
        got = [out]
        if backward:
            out.backward(do)
            got += [x.grad for x in xs]
    except Exception as exc:  # a runner that raises is a failing runner, reported with the error
        return Check(False, why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    check = Check(True)
    for name, o, r, p, factor in zip(("out",) + GRADS, got, ref, pt, (2.0, 3.0, 3.0, 3.0)):
        if o is None:
            return Check(False, errors=check.errors, why=f"{name}: no gradient")
        res = error_ratio(o, r, p, factor=factor, atol=ATOL[q.dtype])
        check.errors[name] = [float(f"{res.err:.3g}"), float(f"{res.bound:.3g}")]
        if not res.ok and check.ok:
            check.ok, check.why = False, res.message(name)
    return check
