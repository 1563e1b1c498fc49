"""Helpers for testing fastlam's kernels against references.

The accuracy rule is flash-attention's: with ``ref`` the float64 reference and ``pt`` the same
maths run in the kernel's dtype in plain PyTorch, a kernel output ``out`` passes when

    max|out - ref| <= factor * max|pt - ref| + atol

(``factor`` 2 for outputs and 3 for gradients by convention), so the bound follows the dtype
instead of a hand-picked tolerance; a non-finite value in ``out`` fails whatever the bound.
With ``scale_atol_by_ref=True`` the ``atol`` is relative to the output's scale: it is
multiplied by ``max(1, max|ref|)``.

:func:`assert_error_ratio` asserts the rule (the unit tests); :func:`error_ratio` returns the
numbers without asserting (reports such as ``benchmarks/gpu_correctness.py``);
:func:`run_three` evaluates an op for the three sides of the rule.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

__all__ = ["ErrorRatio", "assert_error_ratio", "error_ratio", "run_three"]


class ErrorRatio(NamedTuple):
    """The numbers of one check of the rule."""

    err: float  # max|out - ref|
    torch_err: float  # max|pt - ref|
    factor: float
    atol: float  # as applied (after scale_atol_by_ref)
    finite: bool  # out holds no NaN / Inf

    @property
    def bound(self) -> float:
        """factor * max|pt - ref| + atol: the most ``err`` may be."""
        return self.factor * self.torch_err + self.atol

    @property
    def ok(self) -> bool:
        return self.finite and self.err <= self.bound

    def message(self, what: str = "") -> str:
        """Why the check fails (or the numbers, when it passes)."""
        if not self.finite:
            return f"{what}: non-finite values in the kernel's output"
        verdict = ">" if self.err > self.bound else "<="
        return (f"{what}: kernel error {self.err:.3e} {verdict} {self.factor:g} x torch error {self.torch_err:.3e} "
                f"+ {self.atol:.1e}")


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def error_ratio(out: torch.Tensor, ref: torch.Tensor, pt: torch.Tensor, *, atol: float, factor: float = 2.0,
                scale_atol_by_ref: bool = False) -> ErrorRatio:
    """The rule's numbers for a kernel output ``out``, the float64 reference ``ref`` and the
    reference in the kernel's dtype ``pt`` (all compared in float64)."""
    out, ref, pt = out.detach().double(), ref.detach().double(), pt.detach().double()
    if scale_atol_by_ref:
        atol = atol * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    return ErrorRatio(err=_max_abs_diff(out, ref), torch_err=_max_abs_diff(pt, ref), factor=factor, atol=atol,
                      finite=bool(torch.isfinite(out).all()))


def assert_error_ratio(out: torch.Tensor, ref: torch.Tensor, pt: torch.Tensor, *, atol: float, factor: float = 2.0,
                       scale_atol_by_ref: bool = False, what: str = "") -> ErrorRatio:
    """Assert the rule (see the module docstring); ``what`` names the output in the message.
    Returns the numbers."""
    check = error_ratio(out, ref, pt, atol=atol, factor=factor, scale_atol_by_ref=scale_atol_by_ref)
    assert check.ok, check.message(what)
    return check


def run_three(fn: Callable, inputs: Sequence[torch.Tensor], dtype: torch.dtype, *,
              device: str | torch.device | None = None) -> list[tuple]:
    """Evaluate ``fn(*inputs, backend=...)`` on float64 with torch (ref), on ``dtype`` with
    torch (pt) and on ``dtype`` with triton (out), and the gradients of each input that
    requires grad against one random cotangent (drawn from the global generator).

    ``device`` defaults to CUDA when there is one, else the CPU (where the triton side needs the
    Triton interpreter). Returns ``[(out, pt, ref)]`` for the output followed by each input
    gradient.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for tag, dt, be in (("ref", torch.float64, "torch"), ("pt", dtype, "torch"), ("out", dtype, "triton")):
        xs = [x.detach().to(device, dt).requires_grad_(x.requires_grad) for x in inputs]
        y = fn(*xs, backend=be)
        if "g" not in results:
            results["g"] = torch.randn(y.shape, dtype=torch.float64, device=device)
        diff = [x for x in xs if x.requires_grad]
        grads = torch.autograd.grad(y, diff, results["g"].to(y.dtype)) if diff else ()
        results[tag] = (y, *grads)
    return list(zip(results["out"], results["pt"], results["ref"]))
