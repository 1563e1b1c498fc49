"""Backend choice for the fused loss / regularizer / AdaLN ops (one place decides).

``backend="auto"`` runs the Triton kernels when every tensor is on CUDA and triton imports,
and the plain-PyTorch reference otherwise. ``"torch"`` always runs the reference.
``"triton"`` forces the kernels: on CUDA tensors, or on CPU tensors only under the Triton
interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how the CPU
test suite exercises them.

:func:`use_backend` changes what ``"auto"`` means, process-wide, for both dispatchers (this
module's for the fused ops, :func:`fastlam.ops.attention.select_backend` for attention), so a
whole model built with the default ``backend="auto"`` everywhere can be switched for an A/B
without touching its modules. An explicit per-call or per-module backend always wins.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import warnings

import torch

from ._checks import check_choice

BACKENDS = ("auto", "torch", "triton")
_triton_error: str | None = None
_checked = False
# Why a backend module failed to import ("attention.triton" -> reason), or a fused-op kernel
# module ("fastlam.kernels.vq" -> reason): kept to be raised when that backend is asked for
# by name and reported by available_backends(), never swallowed.
_import_errors: dict[str, str] = {}
_kernels_ok: set[str] = set()
_warned: set[tuple] = set()
# What "auto" resolves to (set by use_backend). A plain global, not a ContextVar: autograd runs
# backward (and activation-checkpoint recomputation) on its own threads, which must see the
# same choice as the forward.
_auto_default = {"attention": "auto", "ops": "auto"}


def auto_default(kind: str) -> str:
    """The backend that ``"auto"`` currently stands for: ``kind`` is ``attention`` or ``ops``."""
    return _auto_default[kind]


@contextlib.contextmanager
def use_backend(name: str | None = None, *, attention: str | None = None, ops: str | None = None):
    """Run every ``backend="auto"`` attention and fused op in this block on the given backend.

    ``name`` sets both at once: ``"triton"`` (fastlam's kernels everywhere), ``"torch"`` (SDPA
    with the dense mask it needs and the unfused plain-PyTorch losses / regularizers / AdaLN),
    ``"math"`` (explicit-softmax attention, torch ops) or ``"auto"``; an attention-only backend
    (``"flex"``, ``"flash_attn"``, ``"xformers"``) sets attention and leaves the ops as they are.
    ``attention=`` / ``ops=`` set one side (and override ``name`` for it). A forced backend that
    cannot run a call raises there instead of falling back, so an A/B never measures a silent
    fallback. Process-wide and not thread-local; nests and restores on exit.

    Example:
        >>> with use_backend("torch"):
        ...     loss = model(states=states).loss  # doctest: +SKIP
    """
    from .attention import available_backends

    att = ops_choice = None
    if name is not None:
        if name in ("auto", "torch", "triton"):
            att, ops_choice = name, name
        elif name == "math":
            att, ops_choice = "math", "torch"
        else:
            att = name
    att = attention if attention is not None else att
    ops_choice = ops if ops is not None else ops_choice
    if att is None and ops_choice is None:
        raise ValueError("use_backend: pass a backend name, attention= or ops=")
    if att is not None:
        if att not in available_backends() and import_error(f"attention.{att}"):
            raise RuntimeError(f"attention backend {att!r} is unavailable: {import_error(f'attention.{att}')}")
        check_choice("attention", att, ["auto"] + available_backends())
    if ops_choice is not None:
        check_choice("ops", ops_choice, BACKENDS)
    saved = dict(_auto_default)
    if att is not None:
        _auto_default["attention"] = att
    if ops_choice is not None:
        _auto_default["ops"] = ops_choice
    try:
        yield
    finally:
        _auto_default.clear()
        _auto_default.update(saved)


@torch.compiler.assume_constant_result  # cached per process, as kernel_import_error below
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


def record_import_error(name: str, exc: BaseException) -> None:
    _import_errors[name] = f"{type(exc).__name__}: {exc}"


def import_error(name: str) -> str | None:
    return _import_errors.get(name)


# Constant for a process (the result is cached): under torch.compile the first call runs
# eagerly at trace time instead of tracing importlib, which dynamo skips (a graph break in the
# first compiled step of any op whose kernel module was not imported yet).
@torch.compiler.assume_constant_result
def kernel_import_error(kernel: str) -> str | None:
    """None when triton and ``fastlam.kernels.<kernel>`` import, else why not (cached)."""
    err = triton_import_error()
    if err is not None:
        return err
    key = f"fastlam.kernels.{kernel}"
    if key not in _import_errors and key not in _kernels_ok:
        try:
            importlib.import_module(key)
            _kernels_ok.add(key)
        except Exception as exc:  # a bug in a kernel module: reported, and raised when asked for
            record_import_error(key, exc)
    return import_error(key)


def _say_torch_fallback(kernel: str | None, reason: str) -> None:
    """Once per (op, reason): CUDA tensors that a fused op runs on torch are worth knowing about."""
    key = (kernel, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"fastlam.ops: backend 'auto' runs {kernel or 'a fused op'} on torch, not Triton, for CUDA "
                      f"tensors ({reason})", RuntimeWarning, stacklevel=4)


def use_triton(backend: str, *tensors: torch.Tensor, unsupported: str | None = None, kernel: str | None = None) -> bool:
    """Whether to run the Triton path for these tensors.

    ``unsupported`` is a reason the kernels cannot take this request (e.g. a width beyond the
    tile limit): ``auto`` then falls back to torch (saying so once, on CUDA), an explicit
    ``triton`` raises it. ``kernel`` names the ``fastlam.kernels`` module the op launches:
    its import error is raised for an explicit ``triton`` and reported for ``auto``.
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        backend = _auto_default["ops"]
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        if not on_cuda:
            return False
        reason = unsupported or (kernel_import_error(kernel) if kernel else triton_import_error())
        if reason is not None:
            _say_torch_fallback(kernel, reason)
            return False
        return True
    if unsupported is not None:
        raise ValueError(f"backend='triton': {unsupported}")
    err = kernel_import_error(kernel) if kernel else triton_import_error()
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


def kernel_limits(*tensors: torch.Tensor, max_d: int | None = None, same_dtype: bool = False) -> str | None:
    """Why the fused kernels cannot take these tensors (float64, too wide a last dim, mixed
    dtypes where the reference would promote), or None."""
    for t in tensors:
        if t.dtype == torch.float64:
            return "float64 inputs are not supported by the kernels (they accumulate in fp32); use backend='torch'"
    if same_dtype and len({t.dtype for t in tensors}) > 1:
        names = ", ".join(str(t.dtype).replace("torch.", "") for t in tensors)
        return f"the kernels need one dtype for all tensors (got {names}); cast them or use backend='torch'"
    if max_d is not None and tensors[0].shape[-1] > max_d:
        return f"last dim {tensors[0].shape[-1]} exceeds the kernel limit of {max_d}"
    return None


FUSED_KERNELS = ("prediction_loss", "frame_adaln", "sparse_reg", "gaussian", "vq")


def available_backends() -> dict[str, str]:
    """Every backend fastlam can dispatch to on this machine: ``"available"`` or why not.

    Keys are ``attention.<name>`` (:func:`fastlam.ops.st_attention`'s backends) and
    ``ops.<name>`` (the fused losses / regularizers / AdaLN). A backend's reason is what it
    reports for a plain request (bf16 on CUDA when there is a GPU, else fp32 on CPU), or the
    error its module raised on import.

    Example:
        >>> from fastlam.ops import available_backends
        >>> available_backends()["attention.torch"]
        'available'
    """
    from .attention import AttentionRequest, _BACKENDS

    cuda = torch.cuda.is_available()
    probe = torch.empty(1, 1, 16, 64, device="cuda" if cuda else "cpu", dtype=torch.bfloat16 if cuda else torch.float32)
    req = AttentionRequest(frame_len=16, mask="full", rope=None, scale=0.125, window_frames=None, deterministic=False,
                           return_lse=False)
    status: dict[str, str] = {}
    names = list(_BACKENDS) + [k.split(".", 1)[1] for k in _import_errors if k.startswith("attention.")]
    for name in dict.fromkeys(names):
        if name in _BACKENDS:
            status[f"attention.{name}"] = _BACKENDS[name].supports(probe, req) or "available"
        else:
            status[f"attention.{name}"] = f"import failed ({import_error(f'attention.{name}')})"
    status["ops.torch"] = "available"
    errors = [f"{k}: {e}" for k in FUSED_KERNELS if (e := kernel_import_error(k))]
    if errors:
        status["ops.triton"] = "; ".join(dict.fromkeys(errors))
    elif not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        status["ops.triton"] = "no CUDA device (CPU tensors need TRITON_INTERPRET=1, the interpreter)"
    else:
        status["ops.triton"] = "available"
    return status
