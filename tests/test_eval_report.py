"""The evaluation report's summary over several arm planning runs (scripts/arm_planning.sh
seeds): means, sample sd and counts against hand computations, grouping by test windows."""
from __future__ import annotations

import json

from fastlam.eval.report import write_report


def _plan(lam: float, ac: float, zero: float = 0.12, episodes: int = 24) -> dict:
    one = lambda x: {"delta_xyz": x, "delta_xyz_std": 0.0, "episodes": episodes}
    return {"lam_controller": one(lam), "ac_baseline": one(ac), "zero_plan": {"delta_xyz": zero, "episodes": episodes}}


def test_arm_planning_over_seeds_table(tmp_path):
    for i, (lam, ac) in enumerate([(0.10, 0.20), (0.11, 0.16), (0.15, 0.18)]):
        (tmp_path / f"seed{i}" / "plan").mkdir(parents=True)
        (tmp_path / f"seed{i}" / "plan" / "plan_arm.json").write_text(json.dumps(_plan(lam, ac)))
    # A run on other windows (another zero plan) is not averaged with these three.
    (tmp_path / "other" / "plan").mkdir(parents=True)
    (tmp_path / "other" / "plan" / "plan_arm.json").write_text(json.dumps(_plan(0.5, 0.5, zero=0.3)))
    report = write_report(tmp_path).read_text()
    assert "over 3 runs on the same 24 windows" in report and "over 1 runs" not in report
    # mean 0.12, sample sd sqrt(((-.02)^2 + (-.01)^2 + .03^2) / 2) = sqrt(0.0007) = 0.0265
    assert "| LAM + controller | 0.1200 +- 0.0265 [0.1000, 0.1500] | 2 of 3 |" in report
    # mean 0.18, sd sqrt((.02^2 + .02^2 + 0) / 2) = 0.02; none below 0.12
    assert "| action-conditioned baseline | 0.1800 +- 0.0200 [0.1600, 0.2000] | 0 of 3 |" in report
    assert "| zero action (reference) | 0.1200 | - |" in report
