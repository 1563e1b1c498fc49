"""The preprocessing step after decoding: uint8 frames -> normalised tensors in model layout.

``preprocess_frames`` turns uint8 ``(F, H, W, C)`` (or batched ``(B, F, H, W, C)``) frames
into float32 / bfloat16 / float16 in the layout the model takes, in one pass:

* ``layout="cfhw"``: ``(C, F, H, W)`` (batched ``(B, C, F, H, W)``), what ``VideoEncoder``
  and the training loop take;
* ``layout="patches"``: tubelet patches ``(T*GH*GW, C*tubelet*patch*patch)`` (batched with a
  leading B), tokens in ``(t, h, w)`` order and features in ``(c, dt, dy, dx)`` order, i.e.
  exactly what a Conv3d patch embedding with kernel = stride = ``(tubelet, patch, patch)``
  multiplies with ``weight.view(dim, -1)``.

Values are ``(x / 255 - mean[c]) * (1 / std[c])`` with every step rounded in float32. With
the defaults (mean 0, std 1) that is ``x / 255``, bit-identical to :func:`clip_to_tensor`
(the models normalise with their own mean/std internally).

Backends: the C++ extension in ``csrc/`` (OpenMP on CPU; a CUDA kernel when torch has CUDA)
and :func:`preprocess_reference`, the plain PyTorch chain, which is both the fallback and
the test oracle. The extension is the one ``setup.py`` built (``FASTLAM_BUILD_EXT=1 pip
install -e . --no-build-isolation``) or else JIT-compiled on first use with
``torch.utils.cpp_extension.load`` (cached under ``TORCH_EXTENSIONS_DIR``, ~25 s the first
time). ``FASTLAM_NO_EXT=1`` forces the PyTorch path.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["preprocess_frames", "preprocess_reference", "load_extension", "extension_status",
           "CSRC_DIR"]

CSRC_DIR = Path(__file__).resolve().parents[2] / "csrc"
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_LAYOUTS = ("cfhw", "patches")

_ext = None
_ext_error: str | None = None
_ext_lock = threading.Lock()


def _jit_build(with_cuda: bool):
    # optional: torch.utils.cpp_extension (the C++ build toolchain; pulls in setuptools, ~0.25 s)
    from torch.utils.cpp_extension import load

    sources = [str(CSRC_DIR / "preprocess.cpp")]
    cflags = ["-O3", "-ffp-contract=off", "-fopenmp"]
    kwargs = {}
    if with_cuda:
        sources.append(str(CSRC_DIR / "preprocess_cuda.cu"))
        cflags.append("-DWITH_CUDA")
        kwargs["extra_cuda_cflags"] = ["-O3", "-DWITH_CUDA"]
    # A distinct name per variant: a CPU-only build cached earlier must not be picked up by
    # a CUDA process (or the reverse).
    name = "fastlam_preprocess_cuda" if with_cuda else "fastlam_preprocess_cpu"
    return load(name=name, sources=sources, extra_cflags=cflags, extra_ldflags=["-fopenmp"],
                verbose=False, **kwargs)


def load_extension(build: bool = True):
    """The compiled extension module, or None (the reason is in :func:`extension_status`).

    Tries the module ``setup.py`` built, then (with ``build``) a JIT build. A failure is
    remembered and warned about once; callers fall back to :func:`preprocess_reference`.
    """
    global _ext, _ext_error
    if os.environ.get("FASTLAM_NO_EXT") == "1":
        # Read on every call and not remembered as a failure: a process (or a test) that sets
        # it for a while gets the extension back once it is unset.
        return None
    if _ext is not None:
        return _ext
    with _ext_lock:
        if _ext is not None:
            return _ext
        try:
            # optional: the compiled extension module setup.py builds (FASTLAM_BUILD_EXT=1)
            import fastlam._preprocess_ext as mod

            _ext = mod
            return _ext
        except ImportError:
            pass
        if not build or _ext_error is not None:
            return None
        if not (CSRC_DIR / "preprocess.cpp").exists():
            _ext_error = f"sources not found in {CSRC_DIR} (not a source checkout)"
            return None
        from torch.utils.cpp_extension import CUDA_HOME  # optional: the C++ build toolchain

        want_cuda = torch.cuda.is_available() and torch.version.cuda is not None and CUDA_HOME is not None
        try:
            _ext = _jit_build(want_cuda)
        except Exception as e:  # a compiler error must not stop training: fall back
            _ext_error = f"JIT build failed: {type(e).__name__}: {str(e)[-2000:]}"
            warnings.warn(f"fastlam: preprocessing extension unavailable, using PyTorch ({_ext_error})",
                          RuntimeWarning, stacklevel=2)
        return _ext


def extension_status() -> str:
    """One line saying which preprocessing backend is in use and why."""
    if os.environ.get("FASTLAM_NO_EXT") == "1":
        return "PyTorch reference (disabled by FASTLAM_NO_EXT=1)"
    if _ext is not None:
        cuda = " with CUDA kernel" if _ext.has_cuda_kernel() else " (CPU only)"
        return f"C++ extension {_ext.__name__}{cuda}"
    return f"PyTorch reference ({_ext_error or 'extension not loaded yet'})"


def _check(frames, mean, std, dtype, layout, tubelet, patch):
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, C) or (B, F, H, W, C), got dtype {frames.dtype}")
    if frames.ndim not in (4, 5):
        raise ValueError(f"frames must have shape (F, H, W, C) or (B, F, H, W, C), got {tuple(frames.shape)}")
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    C = frames.shape[-1]
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) != C:
            raise ValueError(f"{name} must have one value per channel ({C}), got {len(v)} values")
    if std is not None and any(float(s) == 0.0 for s in std):
        raise ValueError(f"std must be non-zero for every channel, got {list(std)}")
    if layout == "patches":
        F, H, W = frames.shape[-4:-1]
        if not (isinstance(tubelet, int) and tubelet >= 1 and isinstance(patch, int) and patch >= 1):
            raise ValueError(f"tubelet and patch must be positive ints, got {tubelet!r}, {patch!r}")
        if F % tubelet or H % patch or W % patch:
            raise ValueError(f"layout='patches' needs frames (F={F}) divisible by tubelet={tubelet} "
                             f"and H={H}, W={W} divisible by patch={patch}")


def _affine(C: int, mean, std, device):
    m = torch.tensor([0.0] * C if mean is None else [float(v) for v in mean], dtype=torch.float32)
    # 1/std computed once in float32, shared by every backend, so all round identically.
    inv = (torch.ones(C, dtype=torch.float32) if std is None
           else torch.reciprocal(torch.tensor([float(v) for v in std], dtype=torch.float32)))
    return m.to(device), inv.to(device)


def preprocess_reference(frames: torch.Tensor, *, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None, dtype: torch.dtype = torch.float32,
                         layout: str = "cfhw", tubelet: int = 2, patch: int = 16) -> torch.Tensor:
    """Plain PyTorch version of :func:`preprocess_frames` (fallback and test oracle)."""
    _check(frames, mean, std, dtype, layout, tubelet, patch)
    batched = frames.ndim == 5
    x = frames if batched else frames.unsqueeze(0)
    B, F, H, W, C = x.shape
    m, inv = _affine(C, mean, std, x.device)
    v = x.float().div(255.0).sub(m).mul(inv)  # (B, F, H, W, C), each op rounded
    if layout == "cfhw":
        out = v.permute(0, 4, 1, 2, 3)
    else:
        v = v.view(B, F // tubelet, tubelet, H // patch, patch, W // patch, patch, C)
        # -> (B, t, gh, gw, c, dt, dy, dx)
        out = v.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(B, -1, C * tubelet * patch * patch)
    out = out.to(dtype).contiguous()
    return out if batched else out.squeeze(0)


def preprocess_frames(frames: torch.Tensor, *, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, dtype: torch.dtype = torch.float32,
                      layout: str = "cfhw", tubelet: int = 2, patch: int = 16,
                      backend: str = "auto") -> torch.Tensor:
    """uint8 ``(B?, F, H, W, C)`` -> normalised ``dtype`` in ``layout`` (see the module doc).

    ``backend``: ``"auto"`` (the extension when it loads, else PyTorch), ``"ext"`` (the
    extension or an error) or ``"torch"``.
    """
    if backend not in ("auto", "ext", "torch"):
        raise ValueError(f"backend must be 'auto', 'ext' or 'torch', got {backend!r}")
    _check(frames, mean, std, dtype, layout, tubelet, patch)
    ext = None if backend == "torch" else load_extension()
    if ext is not None and frames.is_cuda and not ext.has_cuda_kernel():
        ext = None  # a CPU-only build: the PyTorch chain runs on the GPU instead
    if ext is None:
        if backend == "ext":
            raise RuntimeError(f"backend='ext' but the preprocessing extension is unavailable: "
                               f"{extension_status()}")
        return preprocess_reference(frames, mean=mean, std=std, dtype=dtype, layout=layout,
                                    tubelet=tubelet, patch=patch)
    batched = frames.ndim == 5
    x = (frames if batched else frames.unsqueeze(0)).contiguous()
    m, inv = _affine(x.shape[-1], mean, std, x.device)
    out = ext.preprocess(x, m, inv, _DTYPE_CODES[dtype], layout == "patches", tubelet, patch)
    return out if batched else out.squeeze(0)
