"""benchmarks/gpu_suite.sh: the --quick plan fits its 7-minute budget by construction, and its
--dry-run (tiny shapes, Triton interpreter) runs end to end on CPU with only what the GPU image
has: deepspeed, DALI, PyAV, transformers and flash-attn imports are made to fail."""
import csv
import os
import re
import sys
from pathlib import Path

import pytest
from subprocess_guard import run_guarded

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
# Not installed on the GPU image (issue 16): anything the suite touches must import without them.
MISSING_ON_GPU_IMAGE = ("deepspeed", "nvidia.dali", "av", "transformers", "flash_attn", "decord")

BLOCKER = f'''
import importlib.abc, sys
BLOCKED = {MISSING_ON_GPU_IMAGE!r}
class _NotOnTheGpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is not installed on the GPU image")
        return None
sys.meta_path.insert(0, _NotOnTheGpuImage())
'''


def test_quick_plan_fits_seven_minutes_by_construction():
    text = SUITE.read_text()
    quick = text[text.index('if [ "$MODE" = quick ]'):text.index('if [ "$MODE" = dry ]')]
    budgets = [int(b) for b in re.findall(r"run_step \w+ (\d+) ", quick)]
    setup = int(re.search(r"timeout (\d+) pip install", text).group(1))
    assert len(budgets) == 4, "correctness, tile sweep, attention, training step"
    assert sum(budgets) + setup < 7 * 60


@pytest.mark.slow
def test_dry_run_end_to_end_without_the_gpu_image_extras(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHONPATH=f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               SUITE_DRY_CORRECTNESS_BUDGET_S="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = run_guarded(["bash", str(SUITE), "--dry-run"], cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = {r["step"]: r["status"] for r in csv.DictReader(open(out / "steps.csv"))}
    assert list(steps) == ["correctness", "tune_tiles", "attention", "train_step"]
    for name in ("correctness", "attention", "train_step"):
        assert steps[name] == "ok", (name, (out / f"{name}.log").read_text()[-3000:])
    if (REPO / "benchmarks" / "tune_tiles.py").is_file():
        assert steps["tune_tiles"] == "ok", (out / "tune_tiles.log").read_text()[-3000:]
    else:
        assert steps["tune_tiles"] == "skipped: not present"
    for f in ("correctness.json", "correctness.csv", "attention.json", "train_step.json", "suite.json",
              "summary_table.txt"):
        assert (out / f).is_file(), f
    # The summary table is what the output ends with.
    table = (out / "summary_table.txt").read_text().strip()
    assert res.stdout.strip().endswith(table)
    assert "correctness:" in table and "step tiny/states fastlam_triton" in table
    assert "attn frame_local" in table and "sdpa_math_reshaped" in table
