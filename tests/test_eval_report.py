"""The evaluation report's summary over several arm planning runs (scripts/arm_planning.sh
seeds): means, sample sd and counts against hand computations, grouping by test windows."""
from __future__ import annotations

import json

import pytest
import torch

from fastlam.eval.report import write_report


def _plan(lam: float, ac: float, zero: float = 0.12, episodes: int = 24) -> dict:
    one = lambda x: {"delta_xyz": x, "delta_xyz_std": 0.0, "episodes": episodes,
                     "alignment": {"corr_xyz": [0.84, 0.531, None], "scale": 0.35}}
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
    assert "| 0.84 / 0.53 / -, x0.35 |" in report  # the per-run table's alignment column


def test_plan_alignment_by_hand():
    from fastlam.eval.planning import plan_alignment

    # recorded 3-step moves (sums over the horizon) per window; plans = 2 x recorded on x,
    # the negation on y, a constant on z (no correlation defined)
    truth = torch.zeros(4, 3, 7)
    truth[:, 0, 0] = torch.tensor([0.1, -0.2, 0.05, 0.0])
    truth[:, 1, 1] = torch.tensor([0.03, 0.01, -0.04, 0.02])
    truth[:, 2, 2] = torch.tensor([0.01, 0.02, 0.0, -0.01])
    plan = torch.zeros(4, 3, 7)
    plan[:, 1, 0] = 2 * truth[:, 0, 0]
    plan[:, 2, 1] = -truth[:, 1, 1]
    plan[:, 0, 2] = 0.05
    got = plan_alignment(plan, truth)
    assert got["corr_xyz"][0] == pytest.approx(1.0) and got["corr_xyz"][1] == pytest.approx(-1.0)
    assert got["corr_xyz"][2] is None
    p, t = plan[..., :3].sum(1).double(), truth[..., :3].sum(1).double()
    assert got["scale"] == pytest.approx(float((p * t).sum() / (p * p).sum()))
    assert plan_alignment(torch.zeros(2, 3, 7), truth[:2])["scale"] is None


def test_runs_planned_with_an_action_prior_are_not_seeds_of_the_paper_protocol(tmp_path):
    for i, lam in enumerate([0.10, 0.12]):
        (tmp_path / f"paper{i}").mkdir()
        (tmp_path / f"paper{i}" / "plan_arm.json").write_text(json.dumps(_plan(lam, 0.2)))
        r = _plan(lam / 2, 0.1)
        r["lam_controller"]["action_prior"] = r["ac_baseline"]["action_prior"] = 0.03
        (tmp_path / f"prior{i}").mkdir()
        (tmp_path / f"prior{i}" / "plan_arm.json").write_text(json.dumps(r))
    report = write_report(tmp_path).read_text()
    assert report.count("over 2 runs on the same 24 windows") == 2
    assert "over 2 runs on the same 24 windows, action prior 0.03" in report
    # mean 0.11, sd 0.0141, 0.12 is not below the zero plan (paper); 0.055, sd 0.0071 (prior):
    # never mixed into one mean of four
    assert "| LAM + controller | 0.1100 +- 0.0141 [0.1000, 0.1200] | 1 of 2 |" in report
    assert "| LAM + controller | 0.0550 +- 0.0071 [0.0500, 0.0600] | 2 of 2 |" in report
    assert report.count("planned with action prior 0.03 (not the paper's protocol)") == 2
