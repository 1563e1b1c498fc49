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

The pieces: :mod:`benchmarks.static_compile` loads the configurations and compiles one for one
architecture (in worker processes); :mod:`benchmarks.static_report` judges each result and writes
the reports; this module caches results, schedules the compiles and is the command line.

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
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.static_compile import (RegistryEntryError, backend_available, build_signature, cache_key,
                                       compile_one, count_mma, load_configs, parse_res_usage, short_exc,
                                       worker_compile, worker_init)
from benchmarks.static_report import (CSV_FIELDS, META_NAME, SHARED_LIMIT, Row, judge, read_report_triton,
                                      render_markdown, report_meta, roofline, write_csv)

# The names the tests and scripts use from the command's module.
__all__ = [
    "CSV_FIELDS", "DEFAULT_CACHE", "DEFAULT_OUT", "META_NAME", "SHARED_LIMIT", "UNAVAILABLE_MARK", "RegistryEntryError",
    "Row", "backend_available", "build_signature", "cache_key", "compile_one", "count_mma", "judge", "load_configs",
    "main", "parse_res_usage", "read_report_triton", "render_markdown", "report_meta", "roofline", "run_check",
    "write_csv",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "static"
DEFAULT_CACHE = REPO / "benchmarks" / "results" / "tmp" / "static_cache"
UNAVAILABLE_MARK = "STATIC CHECK UNAVAILABLE"


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
                row.error = short_exc(e)
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
                                 initializer=worker_init, initargs=(use_registry, module_files, os.getpid())) as pool:
            futures = {pool.submit(worker_compile, cfg.name, arch): (cfg, arch, key) for cfg, arch, key in todo}
            for i, fut in enumerate(as_completed(futures), 1):
                cfg, arch, key = futures[fut]
                try:
                    result = fut.result()
                except BrokenProcessPool as e:
                    result = {"error": f"compiler process died: {short_exc(e)}"}
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
