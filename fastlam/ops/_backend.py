"""Backend choice for the fused loss / regularizer / AdaLN ops (one place decides).

``backend="auto"`` runs the Triton kernels when every tensor is on CUDA and triton imports,
and the plain-PyTorch reference otherwise. ``"torch"`` always runs the reference.
``"triton"`` forces the kernels: on CUDA tensors, or on CPU tensors only under the Triton
interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how the CPU
test suite exercises them.
"""
from __future__ import annotations

import os

import torch

from ._checks import check_choice

BACKENDS = ("auto", "torch", "triton")
_triton_error: str | None = None
_checked = False


def triton_import_error() -> str | None:
    """None when ``fastlam.kernels`` (and so triton) imports, else why not."""
    global _checked, _triton_error
    if not _checked:
        _checked = True
        try:
            import triton  # noqa: F401
        except Exception as exc:  # pragma: no cover - triton ships with CUDA torch
            _triton_error = f"triton does not import ({exc})"
    return _triton_error


def use_triton(backend: str, *tensors: torch.Tensor, unsupported: str | None = None) -> bool:
    """Whether to run the Triton path for these tensors.

    ``unsupported`` is a reason the kernels cannot take this request (e.g. a width beyond the
    tile limit): ``auto`` then falls back to torch, an explicit ``triton`` raises it.
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return on_cuda and unsupported is None and triton_import_error() is None
    if unsupported is not None:
        raise ValueError(f"backend='triton': {unsupported}")
    err = triton_import_error()
    if err is not None:
        raise RuntimeError(f"backend='triton' requested but {err}")
    if not on_cuda:
        if any(t.is_cuda for t in tensors):
            raise ValueError("backend='triton': all tensors must be on the same device (some are on CUDA, some not)")
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 before "
                "triton is imported, or use backend='auto'/'torch' on CPU"
            )
    return True


def kernel_limits(*tensors: torch.Tensor, max_d: int | None = None) -> str | None:
    """Why the fused kernels cannot take these tensors (float64, too wide a last dim), or None."""
    for t in tensors:
        if t.dtype == torch.float64:
            return "float64 inputs are not supported by the kernels (they accumulate in fp32); use backend='torch'"
    if max_d is not None and tensors[0].shape[-1] > max_d:
        return f"last dim {tensors[0].shape[-1]} exceeds the kernel limit of {max_d}"
    return None
