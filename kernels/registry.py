"""Registry of every Triton kernel configuration the GPU path can launch.

Each kernel module registers, next to its kernels, the configurations its launcher (or
autotuner) may pick: block sizes, warps, stages, dtypes and constexpr flags. The static
check (``python -m benchmarks.static_check``) compiles every entry ahead of time for sm_90
and sm_80 and reads shared memory, registers and spills, so a configuration that cannot be
compiled, or that spills, is caught on a CPU-only CI machine. Adding an autotune config
without registering it is a review error.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelConfig:
    name: str  # unique, human-readable: "attn_fwd[frame_causal,hd64,bf16,M128,N64]"
    fn: object  # the @triton.jit function
    signature: dict  # every non-constexpr argument -> Triton type string ("*bf16", "*fp32", "i32", "fp32")
    constexprs: dict  # every constexpr argument -> value
    num_warps: int = 4
    num_stages: int = 3
    default: bool = True  # picked by the launcher by default: STACK (spills) must be 0
    expects_mma: bool = False  # a matrix-multiply kernel: HGMMA on sm_90 is reported
    ref_shape: str = ""  # the shape FLOPs / bytes refer to, e.g. "B=4,H=16,L=2048,D=64"
    flops: float = 0.0  # for ref_shape
    min_bytes: float = 0.0  # each input read once, each output written once, for ref_shape
    # Integer arguments the launcher sees as multiples of 16 (Triton specializes on this at
    # launch and it decides vectorized / async-copy loads, hence shared memory and registers).
    # None: every integer argument (the usual case for contiguous tensors and the reference
    # shapes). Pointers are always taken as 16-byte aligned, as torch allocations are.
    aligned: tuple | None = None
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, KernelConfig] = {}


def register(cfg: KernelConfig) -> KernelConfig:
    if cfg.name in _REGISTRY:
        raise ValueError(f"kernel config registered twice: {cfg.name}")
    _REGISTRY[cfg.name] = cfg
    return cfg


def all_configs() -> list[KernelConfig]:
    """Import every kernel module in this package (they register on import) and list configs."""
    pkg = importlib.import_module(__package__)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "registry":
            importlib.import_module(f"{__package__}.{mod.name}")
    return list(_REGISTRY.values())
