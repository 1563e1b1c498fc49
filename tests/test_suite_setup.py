"""The GPU suite's set-up (``bash benchmarks/gpu_suite.sh --setup-only``, benchmarks/suite_setup.sh)
on what a GPU machine gets: a bare copy of the working tree (no .git) and a fresh virtual
environment with an old pip (the one this Python bundles: 23.2.1 on 3.11) and setuptools and
wheel installed, the combination with which pip used to fall back to the legacy
``setup.py develop`` that loses setup.py's mapping of kernels/ to fastlam.kernels (issue 25).
No network: pip and setuptools come with Python (ensurepip), wheel from this machine's local
wheel folders (``pip install --no-index --find-links``); a package index is asked only where
none of them has it.

The venv sees this test run's packages (torch, numpy, triton, ...) through a folder of links
named in a .pth file, without fastlam's own installation, pip, setuptools or wheel, so the
fastlam it imports can only come from the bare copy.
"""
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from subprocess_guard import run_guarded

REPO = Path(__file__).resolve().parents[1]
# Never taken from this test run's environment into the venv: the packaging tools (the venv's
# own are under test) and fastlam's installation here.
NOT_LINKED = ("pip", "setuptools", "wheel", "_distutils_hack", "pkg_resources", "fastlam", "__editable__",
              "__pycache__")

# Where a wheel of `wheel` (and setuptools, if this Python bundles none) is found without a
# network: $FASTLAM_TEST_WHEELS (folders separated by os.pathsep), then this machine image's
# local package folders.
LOCAL_WHEEL_FOLDERS = tuple(filter(None, os.environ.get("FASTLAM_TEST_WHEELS", "").split(os.pathsep))) + (
    "/opt/wheels", "/opt/pypi/files", "/opt/pypi-more/files")

pytestmark = pytest.mark.slow


def bare_copy(dest: Path) -> Path:
    """What the device tool sends: tracked files and untracked ones git does not ignore, no .git."""
    if (REPO / ".git").exists() and shutil.which("git"):
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = REPO / name
            if src.is_file():  # a file deleted in the working tree is still listed
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        shutil.copytree(REPO, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info"))
    assert not (dest / ".git").exists()
    return dest


def old_pip_venv(path: Path, pip: str | None = None) -> Path:
    """A fresh venv with this Python's bundled pip (or ``pip``, a requirement such as
    "pip>=25"), setuptools and wheel, and links to this run's other packages. Returns its python."""
    res = run_guarded([sys.executable, "-m", "venv", str(path)])
    assert res.returncode == 0, res.stderr[-2000:]
    py = path / "bin" / "python"
    need = ["wheel"] + ([] if _imports(py, "setuptools") else ["setuptools"]) + ([pip] if pip else [])
    # Offline, from the wheel folders on this machine; a package index only where none has them.
    folders = [f for f in LOCAL_WHEEL_FOLDERS if Path(f).is_dir()]
    find_links = [arg for f in folders for arg in ("--find-links", f)]
    res = run_guarded([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", *find_links, *need])
    if res.returncode != 0:
        res = run_guarded([str(py), "-m", "pip", "install", "-q", "--no-deps", *need])
    if res.returncode != 0:
        pytest.skip(f"{' '.join(need)}: in none of {folders} and no package index here: {res.stderr[-300:]}")
    links = path / "test_run_packages"
    links.mkdir()
    for folder in [p for p in site.getsitepackages() if Path(p).is_dir()]:
        for entry in Path(folder).iterdir():
            if entry.name.startswith(NOT_LINKED) or entry.suffix == ".pth" or (links / entry.name).exists():
                continue
            (links / entry.name).symlink_to(entry)
    site_packages = Path(run_guarded([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                         .stdout.strip())
    (site_packages / "test_run_packages.pth").write_text(f"{links}\n")
    return py


def _imports(py: Path, module: str) -> bool:
    return run_guarded([str(py), "-c", f"import {module}"]).returncode == 0


def _setuptools_delegates_develop(py: Path) -> bool:
    """setuptools 80 and later run `setup.py develop` through pip's PEP 660 path (no egg-link)."""
    res = run_guarded([str(py), "-c", "import setuptools; print(setuptools.__version__.split('.')[0])"])
    return int(res.stdout.strip()) >= 80


def pip_version(py: Path) -> str:
    return run_guarded([str(py), "-m", "pip", "--version"]).stdout.split()[1]


def setup_only(tree: Path, py: Path, tmp: Path, *args: str, **env) -> tuple:
    """Run the suite's set-up in ``tree`` with ``py``; (result, the environment it reports)."""
    out = tmp / "out"
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTLAM_COMMIT", "VIRTUAL_ENV")}
    full_env = dict(base, OUT=str(out), SUITE_WORK_DIR=str(tmp / "work"), PYTHON=str(py),
                    PATH=f"{py.parent}{os.pathsep}{os.environ['PATH']}", **env)
    res = run_guarded(["bash", str(tree / "benchmarks" / "gpu_suite.sh"), "--setup-only", *args], cwd=tree,
                      env=full_env)
    reported = dict(line.split("=", 1) for line in res.stdout.splitlines() if line.startswith("PYTHON"))
    return res, reported


def import_from(py: Path, reported: dict, cwd: Path) -> dict:
    """Where fastlam and fastlam.kernels come from, with the environment the set-up reported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(reported)
    res = run_guarded([str(py), "-c", "import os, fastlam, fastlam.kernels.registry as r; "
                       "print(os.path.realpath(fastlam.__file__)); print(os.path.realpath(r.__file__))"],
                      cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    fastlam_file, kernels_file = res.stdout.split()[-2:]
    return dict(fastlam=Path(fastlam_file), kernels=Path(kernels_file))


@pytest.mark.parametrize("pip", [None, "pip>=25"], ids=["bundled-old-pip", "modern-pip"])
def test_pep660_install_imports_the_kernels_of_the_bare_copy(tmp_path, pip):
    tree = bare_copy(tmp_path / "tree")
    py = old_pip_venv(tmp_path / "venv", pip)
    major = int(pip_version(py).split(".")[0])
    assert major < 24 if pip is None else major >= 25, pip_version(py)  # what each case is for
    res, reported = setup_only(tree, py, tmp_path)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert res.returncode == 0, (pip_version(py), res.stdout[-2000:], res.stderr[-2000:])
    assert "fastlam imported: pip install -e (editable)" in summary, summary
    # No .git in the copy and no commit given: said plainly, not read from some other repository.
    assert "commit: unknown (not given: no --commit, no FASTLAM_COMMIT, and this copy of the tree has no .git)" \
        in summary
    where = import_from(py, reported, tmp_path)
    assert where["fastlam"] == tree.resolve() / "fastlam" / "__init__.py"
    assert where["kernels"] == tree.resolve() / "kernels" / "registry.py"


def test_legacy_develop_is_caught_and_the_no_install_shim_takes_over(tmp_path):
    """Without pyproject.toml this pip, with setuptools and wheel present, runs the legacy
    `setup.py develop` (or fails, with a setuptools that dropped it): either way the import is
    re-checked, found broken, and the shim makes it work."""
    tree = bare_copy(tmp_path / "tree")
    (tree / "pyproject.toml").unlink()
    py = old_pip_venv(tmp_path / "venv")
    res, reported = setup_only(tree, py, tmp_path, "--commit", "0123abc")
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert res.returncode == 0, (pip_version(py), res.stdout[-2000:], res.stderr[-2000:])
    assert "fastlam imported: no install: PYTHONPATH shim" in summary, summary
    assert "commit: 0123abc\n" in summary
    setup_log = (tmp_path / "work" / "results" / "logs" / "setup.log").read_text()
    assert "== check after the install" in setup_log  # pip ran, and its result was checked
    site_packages = Path(run_guarded([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                         .stdout.strip())
    if _imports(py, "setuptools") and not _setuptools_delegates_develop(py):
        # This pip really took the legacy path: `setup.py develop` left its egg-link behind.
        assert list(site_packages.glob("fastlam*.egg-link")), sorted(p.name for p in site_packages.iterdir())
    where = import_from(py, reported, tmp_path)
    assert where["fastlam"] == tree.resolve() / "fastlam" / "__init__.py"
    assert where["kernels"] == tree.resolve() / "kernels" / "registry.py"


def test_setup_stops_loudly_when_the_kernels_cannot_be_imported(tmp_path):
    tree = bare_copy(tmp_path / "tree")
    (tree / "kernels" / "registry.py").unlink()
    res, _ = setup_only(tree, Path(sys.executable), tmp_path, SUITE_INSTALL="0")
    out = tmp_path / "out"
    assert res.returncode != 0
    assert "SETUP FAILED: fastlam.kernels cannot be imported from" in res.stderr
    assert "SETUP FAILED" in (out / "summary.txt").read_text()
    assert "setup,failed," in (out / "steps.csv").read_text()
    assert (out / "results.tar.gz").is_file()  # the set-up log comes back
