"""The one place that knows every op's backends, chooses among them and says why it falls back.

Two families of ops dispatch here:

- **Attention** (:func:`fastlam.ops.st_attention`): backends are registered with
  :func:`register_backend` by the modules that implement them (``math`` and ``torch`` by
  ``fastlam.ops.attention``; the :data:`ACCELERATED_ATTENTION` ones by
  ``fastlam.ops.triton_attention``) and picked by :func:`select_backend`. An
  :class:`AttentionRequest` carries everything a backend needs besides q/k/v; each backend's
  ``supports(q, req)`` returns None or the reason it cannot run, so ``auto`` can say why it
  fell back.
- **Fused ops** (losses, regularizers, AdaLN): ``backend="auto"`` runs the Triton kernels
  when every tensor is on CUDA and triton imports, and the plain-PyTorch reference otherwise.
  ``"torch"`` always runs the reference. ``"triton"`` forces the kernels: on CUDA tensors, or
  on CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is
  imported), which is how the CPU test suite exercises them. :func:`use_triton` decides.

:func:`use_backend` changes what ``"auto"`` means, process-wide, for both families, so a
whole model built with the default ``backend="auto"`` everywhere can be switched for an A/B
without touching its modules. An explicit per-call or per-module backend always wins.
:func:`available_backends` reports every backend on this machine, ``"available"`` or why not.

This module imports nothing else of fastlam.ops but the argument checks and RoPE (the request
type's field), so every op module may import it without a circle.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from typing import Callable, NamedTuple

import torch

from ._checks import check_choice
from .rope import Rope1D, Rope3D, apply_rope, index_rope_gap

# ----------------------------------------------------------------------------- attention backends

# The accelerated attention backends, registered when fastlam.ops.triton_attention imports
# (fastlam.ops records its import error under each of these names when it does not).
ACCELERATED_ATTENTION = ("triton", "flex", "flash_attn", "xformers")


class AttentionRequest(NamedTuple):
    """Everything a backend needs besides q/k/v; backends say whether they support it."""

    frame_len: int
    mask: str
    rope: Rope3D | Rope1D | None
    scale: float
    window_frames: int | None
    deterministic: bool
    return_lse: bool
    key_lengths: torch.Tensor | None = None  # (B,) integer count of valid keys per sample
    dropout_p: float = 0.0
    dropout_seed: int | None = None
    rope_positions: torch.Tensor | None = None  # explicit token ids (L,) or (B, L)
    kv_len: int | None = None  # cross-attention: the key / value length when it is not q's
    frame_key_lengths: torch.Tensor | None = None  # (B, key frames) integer count of valid keys per frame

    @property
    def plain_rope(self) -> bool:
        """RoPE (if any) at index positions that per-axis tables express (a Rope3D, or a Rope1D
        over time or space with interleaved pairs): what the fused kernels implement."""
        return self.rope is None or (self.rope_positions is None and index_rope_gap(self.rope) is None)


def rotate_qk(q: torch.Tensor, k: torch.Tensor, req: AttentionRequest):
    """q and k rotated by the request's RoPE (unchanged without one): what every backend that
    does not fuse RoPE runs first."""
    if req.rope is not None:
        q = apply_rope(q, req.frame_len, req.rope, req.rope_positions)
        k = apply_rope(k, req.frame_len, req.rope, req.rope_positions)
    return q, k


class Backend(NamedTuple):
    run: Callable  # (q, k, v, req) -> out or (out, lse)
    supports: Callable  # (q, req) -> None if supported, else a reason string


_ATTENTION: dict[str, Backend] = {}
# Preference order for backend="auto"; the first that supports the request wins ("math", which
# supports everything, is the last resort).
_AUTO_ORDER = ["triton", "torch"]
# Backends that "auto" never picks for CPU tensors: the Triton interpreter runs on CPU (for
# tests) but is ~300x slower than the torch reference.
_NO_AUTO_ON_CPU: set[str] = set()
_warned_attention: set[str] = set()


def register_backend(
    name: str, run: Callable, supports: Callable, *, auto_priority: int | None = None, auto_on_cpu: bool = True
) -> None:
    """Make a backend available to ``st_attention`` (used by fastlam.ops.triton_attention etc.)."""
    _ATTENTION[name] = Backend(run, supports)
    if not auto_on_cpu:
        _NO_AUTO_ON_CPU.add(name)
    if auto_priority is not None and name not in _AUTO_ORDER:
        _AUTO_ORDER.insert(auto_priority, name)


def attention_backend_names() -> list[str]:
    """The registered attention backends, in registration order (what ``backend=`` accepts
    besides ``"auto"``). :func:`available_backends` says which of them can run here."""
    return list(_ATTENTION)


def attention_backend(name: str) -> Backend:
    """The registered attention backend ``name`` (its ``run`` and ``supports``)."""
    if name not in _ATTENTION:
        raise KeyError(f"no attention backend {name!r} is registered (registered: {attention_backend_names()})")
    return _ATTENTION[name]


def _warn_attention_once(key: str, message: str) -> None:
    if key not in _warned_attention:
        _warned_attention.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def select_backend(q: torch.Tensor, req: AttentionRequest, backend: str = "auto") -> str:
    """The one place that picks an attention backend (and says why when it falls back).

    ``"auto"`` first resolves through :func:`use_backend` (a forced choice there behaves like
    an explicit ``backend=``)."""
    if backend == "auto":
        backend = auto_default("attention")
    if backend != "auto":
        if backend not in _ATTENTION:
            if import_error(f"attention.{backend}"):  # its module failed to import: say why
                raise RuntimeError(f"backend={backend!r} is unavailable: {import_error(f'attention.{backend}')}")
            raise ValueError(f"backend: expected one of {['auto'] + attention_backend_names()}, got {backend!r}")
        reason = _ATTENTION[backend].supports(q, req)
        if reason:
            raise ValueError(f"backend={backend!r} cannot run this attention: {reason}")
        return backend
    reasons = []
    for name in _AUTO_ORDER:
        if name not in _ATTENTION or (name in _NO_AUTO_ON_CPU and q.device.type == "cpu"):
            continue
        reason = _ATTENTION[name].supports(q, req)
        if reason is None:
            if reasons and q.is_cuda:
                _warn_attention_once(
                    f"{name}:{';'.join(reasons)}",
                    f"st_attention: backend 'auto' fell back to {name!r} ({'; '.join(reasons)})",
                )
            return name
        reasons.append(f"{name}: {reason}")
    return "math"


# ----------------------------------------------------------------------------- fused-op backends

BACKENDS = ("auto", "torch", "triton")
FUSED_KERNELS = ("prediction_loss", "adaln", "sparse_reg", "gaussian", "vq")
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
        if att not in attention_backend_names() and import_error(f"attention.{att}"):
            raise RuntimeError(f"attention backend {att!r} is unavailable: {import_error(f'attention.{att}')}")
        check_choice("attention", att, ["auto"] + attention_backend_names())
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
    """None when triton imports, else why not."""
    global _checked, _triton_error
    if not _checked:
        _checked = True
        try:
            import triton  # noqa: F401  (optional dependency: triton; fastlam runs on torch without it)
        except Exception as exc:  # pragma: no cover - triton ships with CUDA torch
            _triton_error = f"triton does not import ({exc})"
    return _triton_error


def record_import_error(name: str, exc: BaseException) -> None:
    """Keep why backend ``name`` failed to import: raised when it is asked for, reported by
    :func:`available_backends`."""
    _import_errors[name] = f"{type(exc).__name__}: {exc}"


def import_error(name: str) -> str | None:
    """Why backend ``name`` (``attention.<backend>`` or ``fastlam.kernels.<kernel>``) failed to
    import, or None."""
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
            importlib.import_module(key)  # optional dependency: the kernels package needs triton
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
    """Whether to run the Triton path for these tensors (the fused ops' backend choice).

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


# ----------------------------------------------------------------------------- the report


def available_backends() -> dict[str, str]:
    """Every backend fastlam can dispatch to on this machine: ``"available"`` or why not.

    Keys are ``attention.<name>`` (:func:`fastlam.ops.st_attention`'s backends) and
    ``ops.<name>`` (the fused losses / regularizers / AdaLN). A backend's reason is what it
    reports for a plain request (bf16 on CUDA when there is a GPU, else fp32 on CPU), or the
    error its module raised on import. (:func:`attention_backend_names` lists the registered
    attention backends without probing them.)

    Example:
        >>> from fastlam.ops import available_backends
        >>> available_backends()["attention.torch"]
        'available'
    """
    cuda = torch.cuda.is_available()
    probe = torch.empty(1, 1, 16, 64, device="cuda" if cuda else "cpu", dtype=torch.bfloat16 if cuda else torch.float32)
    req = AttentionRequest(frame_len=16, mask="full", rope=None, scale=0.125, window_frames=None, deterministic=False,
                           return_lse=False)
    status: dict[str, str] = {}
    names = list(_ATTENTION) + [k.split(".", 1)[1] for k in _import_errors if k.startswith("attention.")]
    for name in dict.fromkeys(names):
        if name in _ATTENTION:
            status[f"attention.{name}"] = _ATTENTION[name].supports(probe, req) or "available"
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
