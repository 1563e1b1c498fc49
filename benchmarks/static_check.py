"""Compile every registered Triton kernel configuration for real GPUs, without a GPU.

    python -m benchmarks.static_check [--arch 90 80] [--out benchmarks/results/static]
                                      [--filter SUBSTR] [--module FILE] [--no-registry]
                                      [--jobs N] [--no-cache]

The Triton interpreter proves a kernel's maths, not that it builds for an H100 or A100: a tile
``tl.dot`` rejects, a pipeline that needs more shared memory than the device has, or a kernel
that spills registers all pass the interpreter. Triton compiles ahead of time without a driver,
so for every ``KernelConfig`` in ``fastlam.kernels.registry`` and every target architecture this
command runs ``triton.compile`` down to a cubin, reads the shared memory from the compiled
metadata, REG / STACK from ``cuobjdump -res-usage`` and the tensor-core instructions from
``cuobjdump -sass``, and writes ``static_report.md`` and ``static_report.csv``.

Exit status: 0 when every configuration passes; 1 when any fails (a compile error, a kernel
module that does not import, shared memory over the device limit, or STACK > 0 in a
configuration the launcher picks by default); 2 when this machine cannot run the check at all
(no CUDA compiler backend in triton, no cuobjdump, or the interpreter already active).

``--module FILE`` adds the configurations returned by ``static_check_configs()`` in FILE (used
by the tests of this checker; ``--no-registry`` then leaves the package's kernels out).

Results are cached per (kernel source and dependencies, signature, constexprs, alignment,
warps, stages, arch, triton version) under ``benchmarks/results/tmp/static_cache`` so that an
unchanged kernel is not compiled again; failures are never cached.

Register usage and spills depend on the compiler: ``static_report.json`` records the triton
(and torch, python) version, the date and the commit the report was made with, and
tests/test_static_compile.py compares a fresh compile with the committed report only when the
installed triton is the one the report was made with. ``scripts/static_check_versions.sh``
runs this check under several triton releases (one report per release).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import platform
import hashlib
import importlib
import importlib.util
import io
import json
import os
import pkgutil
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "static"
DEFAULT_CACHE = REPO / "benchmarks" / "results" / "tmp" / "static_cache"

# Largest dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin),
# the figure Triton compares `metadata.shared` with before it launches.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
ARCH_NAME = {80: "A100 (sm_80)", 86: "sm_86", 89: "sm_89", 90: "H100 (sm_90)"}

# Roofline figures measured on the lent H100 (kernels-and-env.md): dense bf16 matmul, HBM copy.
H100_FLOPS = 800e12
H100_BYTES_PER_S = 3.0e12

# Bumped when what a cached entry holds changes.
_CACHE_VERSION = 1
UNAVAILABLE_MARK = "STATIC CHECK UNAVAILABLE"

_INT_TYPES = {"i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64"}
_FLOAT_TYPES = {"fp16", "bf16", "fp32", "fp64"}
_PTR_ELEMS = _INT_TYPES | _FLOAT_TYPES | {"fp8e4nv", "fp8e5", "fp8e4b15"}


class RegistryEntryError(ValueError):
    """A KernelConfig that does not match its kernel's parameters."""


# --------------------------------------------------------------------------------------------
# loading the configurations
# --------------------------------------------------------------------------------------------
def _short_exc(e: BaseException, limit: int = 4000) -> str:
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
                errors.append((name, _short_exc(e)))
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
            errors.append((str(path), _short_exc(e)))
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
        return {"error": _short_exc(e), "seconds": time.perf_counter() - t0}
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


def _worker_init(use_registry: bool, module_files: tuple, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    os.environ.pop("TRITON_INTERPRET", None)
    configs, _ = load_configs(use_registry, module_files)
    _WORKER_CONFIGS.update({c.name: c for c in configs})


def _worker_compile(name: str, arch: int) -> dict:
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
        return _short_exc(e, 600)
    return None


# --------------------------------------------------------------------------------------------
# verdicts and the report
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    config: str
    kernel: str
    arch: int | None
    num_warps: int | None = None
    num_stages: int | None = None
    default: bool = False
    expects_mma: bool = False
    ref_shape: str = ""
    flops: float = 0.0
    min_bytes: float = 0.0
    shared: int | None = None
    regs: int | None = None
    stack: int | None = None
    local: int | None = None
    hgmma: int | None = None
    hmma: int | None = None
    dtype: str = ""  # element type of the kernel's first pointer argument: the data it streams
    error: str | None = None
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def mma(self) -> str:
        if self.error or self.hgmma is None:
            return ""
        if self.hgmma:
            return f"HGMMA x{self.hgmma}"
        if self.hmma:
            return f"HMMA x{self.hmma}"
        return "none"


def judge(row: Row) -> Row:
    """Fill ``row.failures`` (the check fails) and ``row.notes`` (shown for review, never fail)."""
    if row.error:
        if row.error.startswith("RegistryEntryError: "):
            row.failures.append("registry entry: " + row.error[len("RegistryEntryError: "):])
        else:
            kind = "import error" if row.arch is None else "compile error"
            row.failures.append(f"{kind}: {first_line(row.error)}")
        return row
    limit = SHARED_LIMIT[row.arch]
    if row.shared > limit:
        row.failures.append(f"shared {row.shared} B > {limit} B usable on sm_{row.arch}")
    if row.stack:
        if row.default:
            row.failures.append(f"STACK {row.stack} B (spills) in a default configuration")
        else:
            row.notes.append(f"STACK {row.stack} B (spills; not a default configuration)")
    if row.expects_mma:
        if row.arch >= 90 and not row.hgmma:
            row.notes.append("no HGMMA" + (" (HMMA only)" if row.hmma else ""))
        elif row.arch < 90 and not row.hmma:
            row.notes.append("no HMMA")
    if row.regs is not None and row.regs >= 255:
        row.notes.append("REG at the 255 cap")
    return row


def first_line(text: str) -> str:
    """The line of a compile error that says what is wrong (Triton puts the source first)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    head = lines[0]
    # CompilationError: "...at L:C:\n<source>\n   ^\n<message>": the message is the last line.
    if "CompilationError" in head and len(lines) > 1:
        return f"{head.split(':', 1)[0]}: {lines[-1]}"[:300]
    return head[:300]


def roofline(flops: float, min_bytes: float) -> dict:
    """H100 time floor for the reference shape: the slower of the compute and memory limits."""
    if not flops and not min_bytes:
        return {"floor_us": None, "bound": "", "intensity": None}
    t_compute = flops / H100_FLOPS
    t_memory = min_bytes / H100_BYTES_PER_S
    return {
        "floor_us": max(t_compute, t_memory) * 1e6,
        "bound": "compute" if t_compute >= t_memory else "memory",
        "intensity": flops / min_bytes if min_bytes else None,
    }


def _fmt_floor(us) -> str:
    if us is None:
        return ""
    return f"{us:.3g}" if us < 100 else f"{us:.0f}"


def roofline_note(row: Row) -> str:
    r = roofline(row.flops, row.min_bytes)
    if r["floor_us"] is None:
        return "no FLOPs/bytes registered"
    inten = f", {r['intensity']:.3g} FLOP/B" if r["intensity"] is not None else ""
    return f"floor {_fmt_floor(r['floor_us'])} us, {r['bound']}-bound{inten}"


CSV_FIELDS = [
    "kernel", "config", "arch", "dtype", "num_warps", "num_stages", "shared_bytes", "shared_limit",
    "regs", "stack", "mma", "default", "expects_mma", "verdict", "failures", "notes", "ref_shape",
    "flops", "min_bytes", "h100_floor_us", "bound", "roofline", "error",
]


def _csv_row(row: Row) -> dict:
    r = roofline(row.flops, row.min_bytes)
    return {
        "kernel": row.kernel, "config": row.config, "arch": "" if row.arch is None else f"sm_{row.arch}",
        "dtype": row.dtype,
        "num_warps": row.num_warps, "num_stages": row.num_stages, "shared_bytes": row.shared,
        "shared_limit": SHARED_LIMIT.get(row.arch, ""), "regs": row.regs, "stack": row.stack,
        "mma": row.mma, "default": int(row.default), "expects_mma": int(row.expects_mma),
        "verdict": "pass" if row.passed else "FAIL", "failures": "; ".join(row.failures),
        "notes": "; ".join(row.notes), "ref_shape": row.ref_shape, "flops": f"{row.flops:.6g}",
        "min_bytes": f"{row.min_bytes:.6g}",
        "h100_floor_us": "" if r["floor_us"] is None else f"{r['floor_us']:.4g}",
        "bound": r["bound"], "roofline": roofline_note(row) if row.arch is not None else "",
        "error": row.error or "",
    }


def write_csv(rows: list, path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in _csv_row(row).items()})
    path.write_text(buf.getvalue())


def _natural(key) -> list:
    """Sort key that orders D=32 before D=128."""
    out = []
    for part in key:
        text = str(part)
        out.append([(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)])
    return out


def _name_list(names) -> str:
    names = sorted(names, key=lambda n: _natural([n]))
    shown = ", ".join(f"`{_md_cell(n)}`" for n in names[:2])
    return shown + (f" +{len(names) - 2} more" if len(names) > 2 else "")


def _md_cell(text) -> str:
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list, archs: list, n_configs: int, triton_version: str, argv_note: str) -> str:
    compiled = [r for r in rows if r.arch is not None]
    failing = [r for r in rows if not r.passed]
    defaults = [r for r in compiled if r.default]
    spilling = [r for r in defaults if r.stack]
    unbuilt = [r for r in defaults if r.error]
    out = [
        "# Ahead-of-time compile report",
        "",
        f"Generated by `python -m benchmarks.static_check{argv_note}` with triton {triton_version}; "
        "regenerate it, do not edit it. How to read it: [README.md](README.md).",
        "",
        f"**{n_configs} configurations x {len(archs)} targets "
        f"({', '.join(f'sm_{a}' for a in archs)}) = {len(compiled)} compiles: "
        f"{len(failing)} failing.** Default configurations spill-free (STACK 0): "
        + ("yes" if not spilling and not unbuilt else
           f"NO ({len(spilling)} spill, {len(unbuilt)} did not build)")
        + f" ({len(defaults)} default compiles).",
        "",
    ]
    if not rows:
        out += ["No kernel configurations are registered.", ""]
        return "\n".join(out)

    # One roofline line per kernel, reference shape and dtype; its tile choices share FLOPs and bytes.
    groups: dict = {}
    for r in compiled:
        key = (r.kernel, r.ref_shape, r.dtype, r.flops, r.min_bytes)
        groups.setdefault(key, set()).add(r.config)
    out += [
        f"## Roofline per kernel (H100 floor = max(FLOPs / {H100_FLOPS / 1e12:.0f} TFLOP/s, "
        f"bytes / {H100_BYTES_PER_S / 1e12:.1f} TB/s))",
        "",
        "| kernel | reference shape | dtype | GFLOP | min MB | FLOP/byte | H100 floor (us) | bound | configs |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for (kernel, shape, dtype, flops, nbytes), names in sorted(groups.items(), key=lambda kv: _natural(kv[0])):
        r = roofline(flops, nbytes)
        inten = "" if r["intensity"] is None else f"{r['intensity']:.3g}"
        out.append(
            f"| `{kernel}` | {_md_cell(shape) or '(none registered)'} | {dtype} | {flops / 1e9:.4g} | "
            f"{nbytes / 1e6:.4g} | {inten} | {_fmt_floor(r['floor_us'])} | {r['bound']} | {_name_list(names)} |")
    out += [
        "",
        "## Configurations",
        "",
        "| config | arch | warps | stages | shared B (% of limit) | REG | STACK | MMA | default "
        "| verdict | notes | roofline |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        if r.arch is None:
            continue
        if r.error:
            shared = ""
        else:
            shared = f"{r.shared} ({100 * r.shared / SHARED_LIMIT[r.arch]:.0f}%)"
        verdict = "pass" if r.passed else "**FAIL**: " + "; ".join(r.failures)
        out.append(
            f"| `{_md_cell(r.config)}` | sm_{r.arch} | {r.num_warps} | {r.num_stages} | {shared} | "
            f"{'' if r.regs is None else r.regs} | {'' if r.stack is None else r.stack} | {r.mma} | "
            f"{'yes' if r.default else 'no'} | {_md_cell(verdict)} | {_md_cell('; '.join(r.notes))} | "
            f"{roofline_note(r)} |")
    if failing:
        out += ["", "## Failures", ""]
        for r in failing:
            where = "import" if r.arch is None else f"sm_{r.arch}"
            out.append(f"### `{r.config}` ({where})")
            out.append("")
            out.append("; ".join(r.failures))
            if r.error and not r.error.startswith("RegistryEntryError"):  # else the line above says it all
                out += ["", "```", r.error.strip(), "```"]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
META_NAME = "static_report.json"


def report_meta(rows: list, archs: list, n_configs: int, argv: list) -> dict:
    """What the report was made with (the versions that decide REG / STACK) and its verdict."""
    import torch
    import triton

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks._common import git_commit

    compiled = [r for r in rows if r.arch is not None]
    return {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "command": "python -m benchmarks.static_check" + "".join(f" {a}" for a in argv),
        "archs": [f"sm_{a}" for a in archs],
        "configs": n_configs,
        "compiles": len(compiled),
        "failing": sum(not r.passed for r in rows),
        "default_spills": sorted(f"{r.config} (sm_{r.arch}) STACK {r.stack} B"
                                 for r in compiled if r.default and r.stack),
    }


def read_report_triton(out_dir: Path) -> str | None:
    """The triton version a report folder was made with (its json; older reports: the md)."""
    meta = Path(out_dir) / META_NAME
    if meta.exists():
        return json.loads(meta.read_text()).get("triton")
    md = Path(out_dir) / "static_report.md"
    if md.exists():
        m = re.search(r"with triton (\S+?);", md.read_text())
        return m.group(1) if m else None
    return None


def _read_cache(cache_dir: Path | None, key: str) -> dict | None:
    if cache_dir is None:
        return None
    path = cache_dir / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_cache(cache_dir: Path | None, key: str, result: dict) -> None:
    if cache_dir is None or result.get("error"):
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({k: v for k, v in result.items() if k != "seconds"}, sort_keys=True))
    tmp.replace(cache_dir / f"{key}.json")  # atomic: concurrent runs never read half a file


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_check(archs, filters=(), use_registry=True, module_files=(), jobs=None, cache_dir=DEFAULT_CACHE,
              log=print) -> tuple[list, int]:
    """Compile every selected configuration for every arch; (rows in report order, n_configs)."""
    for arch in archs:
        if arch not in SHARED_LIMIT:
            raise ValueError(f"--arch {arch}: unknown target, expected one of {sorted(SHARED_LIMIT)}")
    module_files = tuple(str(Path(m).resolve()) for m in module_files)
    configs, load_errors = load_configs(use_registry, module_files)
    if filters:
        configs = [c for c in configs if any(f in c.name for f in filters)]
    configs.sort(key=lambda c: c.name)
    rows: dict = {}
    todo = []
    waiting: dict = {}  # cache key -> rows that the one compile of that key fills
    hits = 0
    for cfg in configs:
        fn_name = getattr(cfg.fn, "__name__", type(cfg.fn).__name__)
        for arch in archs:
            row = Row(config=cfg.name, kernel=fn_name, arch=arch, num_warps=cfg.num_warps,
                      num_stages=cfg.num_stages, default=cfg.default, expects_mma=cfg.expects_mma,
                      ref_shape=cfg.ref_shape, flops=float(cfg.flops), min_bytes=float(cfg.min_bytes),
                      dtype=_main_dtype(cfg))
            rows[(cfg.name, arch)] = row
            try:
                key = cache_key(cfg, arch)
            except RegistryEntryError as e:
                row.error = _short_exc(e)
                continue
            cached = _read_cache(cache_dir, key)
            if cached is not None:
                hits += 1
                _apply(row, cached)
            elif key in waiting:  # the same kernel build under another name: compile it once
                waiting[key].append(row)
            else:
                waiting[key] = [row]
                todo.append((cfg, arch, key))
    log(f"static_check: {len(configs)} configurations x {len(archs)} targets; "
        f"{hits} cached, {len(todo)} to compile")
    t0 = time.perf_counter()
    jobs = max(1, min(jobs or _cpu_count(), len(todo) or 1))
    # Matrix kernels take several times longer to build: start them first so the last seconds
    # are not one process compiling an attention kernel while the others sit idle.
    todo.sort(key=lambda item: not item[0].expects_mma)

    def done(i, cfg, arch, key, result):
        for row in waiting[key]:
            _apply(row, result)
        _write_cache(cache_dir, key, result)
        status = "ok" if not result.get("error") else "ERROR"
        log(f"  [{i}/{len(todo)}] sm_{arch} {cfg.name}: {status} ({result.get('seconds', 0):.1f} s)")

    if jobs == 1:
        for i, (cfg, arch, key) in enumerate(todo, 1):
            done(i, cfg, arch, key, compile_one(cfg, arch))
    elif todo:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        # spawn, not fork: each worker imports triton afresh with TRITON_INTERPRET unset.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(use_registry, module_files, os.getpid())) as pool:
            futures = {pool.submit(_worker_compile, cfg.name, arch): (cfg, arch, key) for cfg, arch, key in todo}
            for i, fut in enumerate(as_completed(futures), 1):
                cfg, arch, key = futures[fut]
                try:
                    result = fut.result()
                except BrokenProcessPool as e:
                    result = {"error": f"compiler process died: {_short_exc(e)}"}
                done(i, cfg, arch, key, result)
    if todo:
        log(f"static_check: compiled {len(todo)} in {time.perf_counter() - t0:.1f} s with {jobs} processes")
    ordered = [rows[(c.name, a)] for c in configs for a in archs]
    for module, err in load_errors:
        ordered.append(Row(config=module, kernel="", arch=None, error=err))
    return [judge(r) for r in ordered], len(configs)


def _main_dtype(cfg) -> str:
    for ty in cfg.signature.values():
        if isinstance(ty, str) and ty.startswith("*"):
            return ty.lstrip("*k")
    return ""


def _apply(row: Row, result: dict) -> None:
    if result.get("error"):
        row.error = result["error"]
        return
    for k in ("shared", "regs", "stack", "local", "hgmma", "hmma"):
        setattr(row, k, result[k])


def main(argv=None) -> int:
    # Before anything imports triton: the interpreter swaps @triton.jit for a Python emulation
    # that cannot be compiled. The test suite's conftest sets it on CPU machines.
    if os.environ.get("TRITON_INTERPRET") and "triton" in sys.modules:
        print("static_check: triton was imported with TRITON_INTERPRET set in this process; run "
              "`python -m benchmarks.static_check` in a fresh process", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.static_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="targets, e.g. 90 80")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder")
    parser.add_argument("--filter", action="append", default=[], help="only configs whose name contains this")
    parser.add_argument("--module", action="append", default=[], help="file with static_check_configs()")
    parser.add_argument("--no-registry", action="store_true", help="skip fastlam.kernels' registry")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: CPU count)")
    parser.add_argument("--no-cache", action="store_true", help="compile everything again")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where finished compiles are cached (default: benchmarks/results/tmp/static_cache); "
                             "an interrupted check resumes from it")
    args = parser.parse_args(argv)

    why = backend_available()
    if why:
        print(f"{UNAVAILABLE_MARK}: triton cannot compile for CUDA on this machine: {why}", file=sys.stderr)
        return 2
    import triton

    rows, n_configs = run_check(args.arch, filters=args.filter, use_registry=not args.no_registry,
                                module_files=args.module, jobs=args.jobs,
                                cache_dir=None if args.no_cache else args.cache_dir,
                                log=lambda s: print(s, file=sys.stderr, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    note = "" if args.arch == [90, 80] else " --arch " + " ".join(map(str, args.arch))
    if args.filter:
        note += "".join(f" --filter {f}" for f in args.filter)
    (args.out / "static_report.md").write_text(render_markdown(rows, args.arch, n_configs, triton.__version__, note))
    write_csv(rows, args.out / "static_report.csv")
    meta = report_meta(rows, args.arch, n_configs, list(argv if argv is not None else sys.argv[1:]))
    (args.out / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    failing = [r for r in rows if not r.passed]
    print(f"static_check: {len(rows)} results, {len(failing)} failing; report in {args.out}")
    for r in failing:
        where = "import" if r.arch is None else f"sm_{r.arch}"
        print(f"  FAIL {r.config} ({where}): {'; '.join(r.failures)}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
