"""Compiling one registered kernel configuration for a GPU architecture, without a GPU.

The engine of ``python -m benchmarks.static_check`` (see that module for the command and its
report): it loads the ``KernelConfig`` entries (the package's registry and ``--module`` files),
turns one into the signature, constexprs and alignment attributes a launch would specialize on,
runs ``triton.compile`` down to a cubin and reads shared memory from its metadata, REG / STACK
from ``cuobjdump -res-usage`` and the tensor-core instructions from ``cuobjdump -sass``. The
compile workers are separate processes (:func:`worker_init`, :func:`worker_compile`).
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Bumped when what a cached entry holds changes.
_CACHE_VERSION = 1

_INT_TYPES = {"i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64"}
_FLOAT_TYPES = {"fp16", "bf16", "fp32", "fp64"}
_PTR_ELEMS = _INT_TYPES | _FLOAT_TYPES | {"fp8e4nv", "fp8e5", "fp8e4b15"}


class RegistryEntryError(ValueError):
    """A KernelConfig that does not match its kernel's parameters."""



# --------------------------------------------------------------------------------------------
# loading the configurations
# --------------------------------------------------------------------------------------------
def short_exc(e: BaseException, limit: int = 4000) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= limit else text[: limit - 20] + "\n... (truncated)"


def load_configs(use_registry: bool = True, module_files=()) -> tuple[list, list]:
    """All configurations to check, and the (module, error) pairs of modules that failed to import.

    Each kernel module is imported on its own, so one module that is broken mid-edit is reported
    as a failure without hiding every other kernel's configurations.
    """
    configs, errors = [], []
    if use_registry:
        import fastlam.kernels as pkg
        from fastlam.kernels import registry

        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if mod.name == "registry":
                continue
            name = f"{pkg.__name__}.{mod.name}"
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - any import failure is a check failure
                errors.append((name, short_exc(e)))
        configs.extend(registry._REGISTRY.values())
        # A module that imported the registry as top-level ``kernels.registry`` (running from the
        # repository root) registered into a second copy of it: take those entries too.
        twin = sys.modules.get("kernels.registry")
        if twin is not None and twin is not registry:
            configs.extend(twin._REGISTRY.values())
    for path in module_files:
        path = Path(path).resolve()
        mod_name = "_static_check_extra_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
        try:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            # As when the file runs as a script: its own folder is importable (a test module's
            # helpers beside it, e.g. tests/subprocess_guard.py).
            folder = str(path.parent)
            added = folder not in sys.path
            if added:
                sys.path.insert(0, folder)
            try:
                spec.loader.exec_module(module)
            finally:
                if added:
                    sys.path.remove(folder)
            configs.extend(module.static_check_configs())
        except Exception as e:  # noqa: BLE001
            errors.append((str(path), short_exc(e)))
    seen = {}
    for cfg in configs:
        if cfg.name in seen and seen[cfg.name] is not cfg:
            errors.append((cfg.name, "RegistryEntryError: configuration name registered twice"))
        seen[cfg.name] = cfg
    return list(seen.values()), errors


def build_signature(cfg) -> tuple[dict, dict, dict]:
    """(full signature, constexprs, attrs) for ``ASTSource``, in the kernel's parameter order.

    Triton wants every parameter in the signature, constexprs spelled "constexpr"; the launch
    specializes pointers and multiples of 16 with ``tt.divisibility`` and that changes the code
    (vector width, async copies, shared memory), so the same is done here.
    """
    fn = cfg.fn
    params = getattr(fn, "params", None)
    if params is None or not hasattr(fn, "arg_names"):
        raise RegistryEntryError(
            f"{cfg.name}: fn is {type(fn).__name__}, expected a @triton.jit function "
            "(is TRITON_INTERPRET=1 set in this process?)")
    arg_names = list(fn.arg_names)
    unknown = (set(cfg.signature) | set(cfg.constexprs)) - set(arg_names)
    if unknown:
        raise RegistryEntryError(
            f"{cfg.name}: {sorted(unknown)} are not parameters of {fn.__name__}{tuple(arg_names)}")
    both = set(cfg.signature) & set(cfg.constexprs)
    if both:
        raise RegistryEntryError(f"{cfg.name}: {sorted(both)} given in both signature and constexprs")
    aligned = None if cfg.aligned is None else set(cfg.aligned)
    if aligned is not None and not aligned <= set(cfg.signature):
        raise RegistryEntryError(
            f"{cfg.name}: aligned names {sorted(aligned - set(cfg.signature))} not in the signature")
    signature, constexprs, attrs = {}, {}, {}
    for idx, (name, param) in enumerate(zip(arg_names, params)):
        if name in cfg.constexprs:
            signature[name] = "constexpr"
            constexprs[name] = cfg.constexprs[name]
            continue
        if name not in cfg.signature:
            if param.is_constexpr and param.has_default:  # the launcher may leave it at its default
                signature[name] = "constexpr"
                constexprs[name] = param.default
                continue
            kind = "constexpr" if param.is_constexpr else "runtime"
            raise RegistryEntryError(
                f"{cfg.name}: {kind} parameter {name!r} of {fn.__name__} is missing from "
                f"{'constexprs' if param.is_constexpr else 'signature'}")
        if param.is_constexpr:
            raise RegistryEntryError(
                f"{cfg.name}: {name!r} is a tl.constexpr parameter of {fn.__name__}; give its "
                f"value in constexprs, not a type in signature")
        ty = cfg.signature[name]
        if not isinstance(ty, str):
            raise RegistryEntryError(f"{cfg.name}: signature[{name!r}] must be a type string, got {ty!r}")
        # A launch specializes on alignment unless the kernel opts out for this parameter.
        specialized = not (param.do_not_specialize or param.do_not_specialize_on_alignment)
        if ty.startswith("*"):
            if ty.lstrip("*k") not in _PTR_ELEMS:
                raise RegistryEntryError(f"{cfg.name}: unknown pointer type {ty!r} for {name!r}")
            if specialized:
                attrs[(idx,)] = [["tt.divisibility", 16]]
        elif ty in _INT_TYPES:
            if specialized and (aligned is None or name in aligned):
                attrs[(idx,)] = [["tt.divisibility", 16]]
        elif ty not in _FLOAT_TYPES:
            raise RegistryEntryError(
                f"{cfg.name}: unknown type {ty!r} for {name!r} (expected e.g. '*bf16', 'i32', 'fp32')")
        signature[name] = ty
    return signature, constexprs, attrs


def cache_key(cfg, arch: int) -> str:
    import triton

    signature, constexprs, attrs = build_signature(cfg)
    blob = json.dumps({
        "v": _CACHE_VERSION,
        "triton": triton.__version__,
        "src": cfg.fn.cache_key,  # the kernel's source and every @jit function it calls
        "signature": signature,
        "constexprs": {k: repr(v) for k, v in constexprs.items()},
        "attrs": sorted((list(k), v) for k, v in attrs.items()),
        "warps": cfg.num_warps,
        "stages": cfg.num_stages,
        "arch": arch,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# compiling one configuration
# --------------------------------------------------------------------------------------------
def cuobjdump_path() -> str:
    import triton

    try:
        from triton import knobs

        path = knobs.nvidia.cuobjdump.path
        if path and os.path.exists(path):
            return path
    except Exception:  # noqa: BLE001 - older triton without knobs: fall back to the wheel's copy
        pass
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found (looked in {path.parent})")
    return str(path)


_RES_RE = re.compile(r"Function\s+(\S+?):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def parse_res_usage(text: str, kernel_name: str | None = None) -> dict:
    """REG / STACK / SHARED / LOCAL of the kernel from ``cuobjdump -res-usage`` output.

    Takes the entry named ``kernel_name``; if absent (or the cubin holds helper functions too),
    the maximum over all functions, so a spilling helper is not missed.
    """
    found = {m.group(1): tuple(int(m.group(i)) for i in range(2, 6)) for m in _RES_RE.finditer(text)}
    if not found:
        raise ValueError(f"no resource usage found in cuobjdump output:\n{text[:500]}")
    rows = [found[kernel_name]] if kernel_name in found and len(found) == 1 else list(found.values())
    regs, stack, shared, local = (max(r[i] for r in rows) for i in range(4))
    return {"regs": regs, "stack": stack, "static_shared": shared, "local": local}


def count_mma(sass: str) -> dict:
    """Tensor-core instructions in SASS: Hopper warpgroup HGMMA and Ampere-style HMMA."""
    return {"hgmma": len(re.findall(r"\bHGMMA\.", sass)), "hmma": len(re.findall(r"\bHMMA\.", sass))}


def compile_one(cfg, arch: int) -> dict:
    """Compile ``cfg`` for ``sm_{arch}``; measured resources, or ``{"error": text}``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    try:
        signature, constexprs, attrs = build_signature(cfg)
        src = ASTSource(fn=cfg.fn, signature=signature, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    except Exception as e:  # noqa: BLE001 - every compile failure is reported, with its text
        return {"error": short_exc(e), "seconds": time.perf_counter() - t0}
    tool = cuobjdump_path()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        res = subprocess.run([tool, "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
        sass = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True)
    out = {"shared": int(kernel.metadata.shared), "error": None}
    out.update(parse_res_usage(res.stdout, kernel.metadata.name))
    out.update(count_mma(sass.stdout))
    out["seconds"] = time.perf_counter() - t0
    return out


_WORKER_CONFIGS: dict = {}


def _die_with_parent(parent_pid: int) -> None:
    """A compile worker ends when the checker does, however the checker ends (a SIGKILL, a
    test's guard, Ctrl-C): without this, killed checkers left ~600 MB workers compiling on."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the checker died before the line above took effect
        os._exit(1)


def worker_init(use_registry: bool, module_files: tuple, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    os.environ.pop("TRITON_INTERPRET", None)
    configs, _ = load_configs(use_registry, module_files)
    _WORKER_CONFIGS.update({c.name: c for c in configs})


def worker_compile(name: str, arch: int) -> dict:
    cfg = _WORKER_CONFIGS.get(name)
    if cfg is None:
        return {"error": f"worker could not load configuration {name!r}", "seconds": 0.0}
    return compile_one(cfg, arch)


def backend_available() -> str | None:
    """None when triton can compile for CUDA here; otherwise why not."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 is set: the interpreter replaces @triton.jit functions"
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        @triton.jit
        def _probe(x_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs) + 1.0)

        triton.compile(ASTSource(fn=_probe, signature={"x_ptr": "*fp32", "BLOCK": "constexpr"},
                                 constexprs={"BLOCK": 32}),
                       target=GPUTarget("cuda", 80, 32), options={"num_warps": 1})
        cuobjdump_path()
    except Exception as e:  # noqa: BLE001
        return short_exc(e, 600)
    return None

