"""The declared environment matches the code: setup.py's torch floor is the one fastlam checks
at import (torch.optim.Muon), constraints.txt pins what the gates depend on within setup.py's
ranges and every set-up pip install uses it, and the newcomer script's plan and arguments work."""
import ast
import re
import shutil
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from subprocess_guard import run_guarded

import fastlam
from fastlam.models import LatentActionWorldModel, ModelConfig
from fastlam.optim import OptimConfig, build_optimizers

REPO = Path(__file__).resolve().parents[1]
GATE_PACKAGES = ("torch", "triton", "deepspeed", "nvidia-dali-cuda130", "av", "numpy", "pytest",
                 "pytest-benchmark", "transformers")


def setup_requirements() -> list[Requirement]:
    """install_requires and every extra, read from setup.py's setup(...) call without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    reqs = ast.literal_eval(kw["install_requires"])
    for extra in ast.literal_eval(kw["extras_require"]).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version.strip())
    return pins


def test_setup_torch_floor_is_the_one_the_code_checks():
    (torch_req,) = [r for r in setup_requirements() if r.name == "torch"]
    floors = [Version(s.version) for s in torch_req.specifier if s.operator == ">="]
    assert floors == [Version(".".join(map(str, fastlam.MIN_TORCH)))], torch_req
    assert hasattr(torch.optim, "Muon"), "the floor is where torch.optim.Muon exists"
    assert Version(torch.__version__.split("+")[0]) in torch_req.specifier


@pytest.mark.parametrize("version, ok", [("2.8.1+cu126", False), ("2.6.0", False), ("1.13.1", False),
                                         ("2.9.0", True), ("2.10.0a0+git1234", True), ("2.13.0+cpu", True)])
def test_older_torch_is_refused_naming_the_required_version(version, ok):
    if ok:
        fastlam.check_torch_version(version)
    else:
        with pytest.raises(ImportError, match=r"fastlam needs torch >= 2\.9 .*found torch " + re.escape(version)):
            fastlam.check_torch_version(version)


def test_optimizer_build_without_muon_names_the_version(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    model = LatentActionWorldModel(ModelConfig(image_size=16, frames=4))
    with pytest.raises(RuntimeError, match=r"optim.use_muon: .*needs torch >= 2\.9.*optim.use_muon=false"):
        build_optimizers(model, OptimConfig())


def test_constraints_pin_the_gates_within_setup_ranges():
    pins = constraints()
    missing = [p for p in GATE_PACKAGES if p not in pins]
    assert not missing, f"constraints.txt does not pin {missing}"
    for req in setup_requirements():
        name = req.name.lower()
        if name in pins:
            assert pins[name] in req.specifier, f"constraints.txt pins {name}=={pins[name]} outside setup.py's {req}"


def test_every_setup_pip_install_is_constrained():
    for script in ("setup_env.sh", "test.sh"):
        for line in (REPO / "scripts" / script).read_text().splitlines():
            code = line.split("#")[0]
            if "pip install" in code:
                assert "-c constraints.txt" in code or "PIP_C" in code, f"{script}: unconstrained: {line.strip()}"


NEWCOMER = REPO / "scripts" / "newcomer_check.sh"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_newcomer_check_dry_run_clones_and_finds_the_readme_commands():
    proc = run_guarded(["bash", str(NEWCOMER), "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert "./scripts/train_tiny.sh" in proc.stdout and "./scripts/test.sh" in proc.stdout
    assert "dry run: the clone of" in proc.stdout
    only = run_guarded(["bash", str(NEWCOMER), "--dry-run", "--only", "test"])
    assert only.returncode == 0 and "train_tiny.sh" not in only.stdout.split("dry run:")[0]


@pytest.mark.parametrize("args, message", [(["--only", "both"], "--only: expected train or test"),
                                           (["--bogus"], "unknown argument: --bogus"),
                                           (["--python"], "--python needs an interpreter"),
                                           (["--python", "no-such-python3"], "'no-such-python3' not found")])
def test_newcomer_check_rejects_bad_arguments(args, message):
    proc = run_guarded(["bash", str(NEWCOMER), *args])
    assert proc.returncode == 2 and message in proc.stderr
