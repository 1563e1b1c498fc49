"""Small host-side helpers shared by the kernel launchers (no Triton code, no autograd)."""
from __future__ import annotations

import os

import torch
import triton

# Triton pointer / scalar type names, as ASTSource signatures spell them.
TRITON_PTR = {
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float32: "*fp32",
    torch.float64: "*fp64",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


def triton_release(version: str | None = None) -> tuple:
    """(major, minor) of a triton version string (the installed triton by default): register
    allocation, hence the spill-free tiles, can change between releases."""
    parts = []
    for p in str(triton.__version__ if version is None else version).split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def interpreting() -> bool:
    """True when kernels run in the Triton interpreter (CPU tensors, TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of the device; a small constant for the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def rows_per_block(block_d: int, target_elems: int) -> int:
    """Rows per program so one tile holds about ``target_elems`` elements (power of two)."""
    return max(1, min(256, target_elems // block_d))
