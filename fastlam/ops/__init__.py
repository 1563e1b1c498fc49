"""fastlam.ops: the functional entry points every model calls.

Each op has a readable plain-PyTorch reference here (the CPU path and the test oracle); the
Triton kernels in ``fastlam.kernels`` are dispatched behind the same functions on CUDA.
Which backend runs an op is decided in one place, :mod:`fastlam.ops.dispatch`.
"""
import warnings as _warnings

from .adaln import frame_adaln_modulate, frame_gated_residual
from .attention import (
    MASKS,
    dense_mask,
    mask_allows,
    st_attention,
)
from .dispatch import (
    ACCELERATED_ATTENTION as _ACCELERATED_ATTENTION,
    available_backends,
    record_import_error as _record_import_error,
    register_backend,
    select_backend,
    use_backend,
)
from .prediction_loss import prediction_loss
from .regularizers import (
    gaussian_kl,
    gaussian_sample,
    gaussian_sample_kl,
    sparse_energy,
    sparse_regularizer,
    vcm_terms,
    vector_quantize,
    vq_nearest,
)
from .rope import Rope1D, Rope3D, apply_rope, apply_rope_3d, rope_chunk_dim, rope_tables, token_positions

# Registers the accelerated st_attention backends (triton, flex, flash_attn, xformers). Each
# reports through its `supports` why it cannot run (e.g. triton missing), so fastlam works
# without triton. Should the module itself fail to import, the error is kept: asking for one
# of its backends by name raises it, and available_backends() reports it.
try:
    from . import triton_attention  # noqa: F401
except Exception as _exc:
    for _name in _ACCELERATED_ATTENTION:
        _record_import_error(f"attention.{_name}", _exc)
    _warnings.warn(f"fastlam: accelerated attention backends unavailable ({type(_exc).__name__}: {_exc}); "
                   "see fastlam.ops.available_backends()", RuntimeWarning)

__all__ = [
    "MASKS",
    "Rope1D",
    "Rope3D",
    "apply_rope",
    "apply_rope_3d",
    "available_backends",
    "dense_mask",
    "frame_adaln_modulate",
    "frame_gated_residual",
    "gaussian_kl",
    "gaussian_sample",
    "gaussian_sample_kl",
    "mask_allows",
    "prediction_loss",
    "register_backend",
    "rope_chunk_dim",
    "rope_tables",
    "select_backend",
    "sparse_energy",
    "sparse_regularizer",
    "st_attention",
    "token_positions",
    "use_backend",
    "vcm_terms",
    "vector_quantize",
    "vq_nearest",
]
