"""The layering of docs/architecture.md, checked on the source: which module may import which.

An AST scan of every module of the package (``kernels/`` as ``fastlam.kernels``) and of the
scripts beside it. It fails on an import circle, an import that runs back up a layer, an
import of another module's ``_private`` name, and an import inside a function that is not an
optional dependency (such imports are how back-arrows and circles hid). What the tree still
owes is listed in the ``*_DEBT`` tables below; each may only shrink, and the test fails when an
entry is paid off and not removed, so the tables stay exact.
"""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Layers, lowest first: a module may import its own layer and the layers below it.
LAYERS: dict[str, tuple[str, ...]] = {
    "kernels": ("fastlam.kernels",),
    # No model, no training: configs, paths the user names, weights files, help text, test rules.
    "base": ("fastlam", "fastlam.config", "fastlam.configs", "fastlam.inputs", "fastlam.checkpoint", "fastlam.cli_help",
             "fastlam.testing", "fastlam._preprocess_ext"),
    "ops": ("fastlam.ops",),
    "nn": ("fastlam.nn",),
    "models": ("fastlam.models",),
    # Beside models: fastlam.data knows nothing of them (its own rule below).
    "data": ("fastlam.data",),
    "training": ("fastlam.config_checks", "fastlam.run_folder", "fastlam.optim", "fastlam.muon",
                 "fastlam.step_metrics", "fastlam.dashboard", "fastlam.diagnostics", "fastlam.distributed", "fastlam.flops",
                 "fastlam.drawing", "fastlam.clips", "fastlam.epochs", "fastlam.loop", "fastlam.rollouts", "fastlam.trainer",
                 "fastlam.train_data", "fastlam.local_runner", "fastlam.devices", "fastlam.run_summary",
                 "fastlam.encode_states"),
    "entry": ("fastlam.train", "fastlam.train_decoder", "fastlam.eval"),
}
RANK = {name: i for i, name in enumerate(LAYERS)}
# fastlam.data sits at the models' height but may use only the base and itself.
DATA_MAY_IMPORT = {"base", "data"}

# Imports that may stay inside functions: packages a user may not have (setup.py's extras and
# what the code treats as optional), plus the heavy plotting stack, loaded only to draw.
OPTIONAL = {
    "triton", "av", "pyarrow", "fsspec", "aiohttp", "webdataset", "nvidia", "deepspeed", "flash_attn",
    "xformers", "tensorboard", "torch.utils.tensorboard", "transformers", "vector_quantize_pytorch", "wandb",
    "pybullet", "pybullet_data", "psutil", "mujoco", "lpips", "PIL", "torchvision", "matplotlib", "pytest", "einops",
    "fastlam.kernels", "fastlam._preprocess_ext", "torch.utils.cpp_extension", "cv2",
    "fcntl",  # POSIX only: the study's lock file
}

# ---- what the tree still owes (may only shrink) ------------------------------------------------
# (importer, imported): imports of the entry scripts, which should be a training library.
ENTRY_IMPORT_DEBT: set[tuple[str, str]] = set()
# importer -> imports inside functions of non-optional modules (87 on 2026-12-07, from 259).
DEFERRED_DEBT: dict[str, int] = {}


def package_modules() -> dict[str, Path]:
    mods = {}
    for base, pkg in ((REPO / "fastlam", "fastlam"), (REPO / "kernels", "fastlam.kernels")):
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = package_modules()
# Compiled from csrc/ (not a Python file): imported as a module, its underscore marks it built.
EXTENSIONS = {"fastlam._preprocess_ext"}


def layer_of(module: str) -> str | None:
    best, found = -1, None
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), layer
    return found


class Import:
    def __init__(self, importer: str, target: str, name: str | None, line: int, deferred: bool):
        self.importer, self.target, self.name, self.line, self.deferred = importer, target, name, line, deferred

    def __repr__(self):
        what = f"{self.target}.{self.name}" if self.name else self.target
        return f"{self.importer}:{self.line} imports {what}"


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node, deferred: bool):
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, None, child.lineno, deferred) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                for a in child.names:
                    full = f"{target}.{a.name}"
                    if full in MODULES or full in EXTENSIONS:  # `from pkg import module`
                        found.append(Import(module, full, None, child.lineno, deferred))
                    else:
                        found.append(Import(module, target, a.name, child.lineno, deferred))
            visit(child, inner)

    visit(tree, False)
    return found


def internal(target: str) -> str | None:
    """The package module an import resolves to (the longest known prefix), or None."""
    t = target
    while t and t not in MODULES:
        t = t.rsplit(".", 1)[0] if "." in t else ""
    return t or None


ALL_IMPORTS = [imp for m, p in MODULES.items() for imp in imports_of(m, p)]


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"put these modules in a layer of tests/test_architecture.py and docs/architecture.md: {missing}"


def test_no_import_circles():
    edges: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        t = internal(imp.target)
        if t and t != imp.importer and not imp.importer.startswith(t + "."):  # a package's own __init__
            edges.setdefault(imp.importer, set()).add(t)
    index, low, stack, on, circles, n = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            strong(v)
    assert not circles, f"import circles: {circles}"


def test_no_import_runs_back_up_a_layer():
    bad = []
    for imp in ALL_IMPORTS:
        t = internal(imp.target)
        if t is None:
            continue
        src, dst = layer_of(imp.importer), layer_of(t)
        if src is None or dst is None:
            continue
        if src == "data" and dst not in DATA_MAY_IMPORT:
            bad.append(f"{imp} (fastlam.data knows nothing of {dst})")
        elif RANK[dst] > RANK[src] and not (src == "data" and dst in DATA_MAY_IMPORT):
            bad.append(f"{imp} ({src} -> {dst})")
        elif dst == "data" and src in ("kernels", "base", "ops", "nn", "models"):
            bad.append(f"{imp} ({src} -> data: models are fed tensors, not loaders)")
    assert not bad, "imports that run back up a layer:\n" + "\n".join(bad)


def test_entry_scripts_are_imported_by_nobody_but_known_debt():
    entries = ("fastlam.train", "fastlam.train_decoder")
    found = {(imp.importer, internal(imp.target)) for imp in ALL_IMPORTS
             if internal(imp.target) in entries and imp.importer != internal(imp.target)}
    new = sorted(found - ENTRY_IMPORT_DEBT)
    paid = sorted(ENTRY_IMPORT_DEBT - found)
    assert not new, f"an entry script is a library for these (move what they need into the training library): {new}"
    assert not paid, f"paid off: remove from ENTRY_IMPORT_DEBT: {paid}"


def _private_imports(imports) -> list[str]:
    out = []
    for imp in imports:
        t = internal(imp.target)
        if t is None or t == imp.importer:
            continue
        if imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
            out.append(repr(imp))
    return out


def test_no_module_imports_another_modules_private_names():
    bad = _private_imports(ALL_IMPORTS)
    for folder in ("benchmarks", "scripts", "examples"):
        for path in sorted((REPO / folder).glob("*.py")):
            bad += _private_imports(imports_of(f"{folder}.{path.stem}", path))
    assert not bad, "give these a public name in a module made for them:\n" + "\n".join(bad)


def _optional(target: str) -> bool:
    return any(target == o or target.startswith(o + ".") for o in OPTIONAL)


def test_imports_inside_functions_are_optional_dependencies_only():
    counts = Counter(imp.importer for imp in ALL_IMPORTS if imp.deferred and not _optional(imp.target))
    over = {m: (n, DEFERRED_DEBT.get(m, 0)) for m, n in counts.items() if n > DEFERRED_DEBT.get(m, 0)}
    paid = {m: (counts.get(m, 0), n) for m, n in DEFERRED_DEBT.items() if counts.get(m, 0) < n}
    examples = [repr(imp) for imp in ALL_IMPORTS
                if imp.deferred and not _optional(imp.target) and imp.importer in over][:10]
    assert not over, (f"imports inside functions of modules that are not optional (module: found, allowed): {over}; "
                      f"move them to the top of the module, e.g. {examples}")
    assert not paid, f"fewer deferred imports than DEFERRED_DEBT allows: lower it to what is left: {paid}"


@pytest.mark.parametrize("rule", ["circle", "back-arrow", "private"])
def test_the_rules_catch_what_they_are_for(rule, tmp_path, monkeypatch):
    """Each check fails on a planted violation (the tests above can fail)."""
    mods = dict(MODULES)
    src = {
        "circle": ("fastlam.ops.planted", "from fastlam.ops import planted2\n",
                   "fastlam.ops.planted2", "from fastlam.ops import planted\n"),
        "back-arrow": ("fastlam.ops.planted", "from fastlam.models import lam\n", None, None),
        "private": ("fastlam.ops.planted", "from fastlam.config import _coerce\n", None, None),
    }[rule]
    extra = {}
    for name, code in ((src[0], src[1]), (src[2], src[3])):
        if name:
            path = tmp_path / f"{name.rsplit('.', 1)[1]}.py"
            path.write_text(code)
            mods[name] = path
            extra[name] = path
    monkeypatch.setattr(__import__(__name__), "MODULES", mods)
    planted = [imp for m, p in extra.items() for imp in imports_of(m, p)]
    monkeypatch.setattr(__import__(__name__), "ALL_IMPORTS", ALL_IMPORTS + planted)
    check = {"circle": test_no_import_circles, "back-arrow": test_no_import_runs_back_up_a_layer,
             "private": test_no_module_imports_another_modules_private_names}[rule]
    with pytest.raises(AssertionError):
        check()
