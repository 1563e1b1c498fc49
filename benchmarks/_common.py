"""What every benchmark records beside its numbers: which commit produced them."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The commit under test: $FASTLAM_COMMIT (gpu_suite.sh sets it from --commit, for copies
    without .git), else ``git rev-parse HEAD`` where this tree has its own .git (never that of
    a repository it was copied into), else "unknown"."""
    if os.environ.get("FASTLAM_COMMIT"):
        return os.environ["FASTLAM_COMMIT"]
    if not (REPO / ".git").exists():
        return "unknown"
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def pyplot_or_none():
    """matplotlib.pyplot on the Agg backend, or None (with a note) where it is not installed:
    a missing plot must not fail a benchmark run whose numbers are already written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # pragma: no cover - matplotlib is a dev dependency
        print(f"no plot: {exc}")
        return None
    return plt


def allow_many_compiles(limit: int = 256) -> None:
    """Benchmarks compile one graph per (shape, variant); raise dynamo's recompile cap so none
    silently falls back to eager (the attribute was renamed across torch versions)."""
    import torch

    for attr in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, attr):
            setattr(torch._dynamo.config, attr, limit)


def versions() -> dict:
    """torch / triton / python versions and the CUDA runtime, for every result file."""
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:  # pragma: no cover - triton is a dependency
        out["triton"] = None
    return out
