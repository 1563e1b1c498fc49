"""study-compare: probed study runs from several folders, grouped by setting, spread over seeds."""
import json
import statistics

import pytest

from fastlam.eval.cli import main
from fastlam.eval.study_compare import collect_runs, group_runs, summarise, write_study_comparison
from fastlam.inputs import InputError


def _point(step, ridge, mlp, l1, dep):
    return {"step": step, "train_seconds": 1.0, "ridge_trained": ridge, "mlp_trained": mlp, "diag/l1_own": l1,
            "diag/l1_other": l1 * dep, "diag/l1_zero": l1 * 2, "diag/action_dependence": dep}


def _study(folder, *, seed, kind="none", overrides=(), steps=30, curve=None, running=None, world="agent"):
    """A study_WORLD.json as 'study --probe-at' writes it (the keys the comparison reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {} if curve is None else {kind: {"strength": {}, "curve": curve, **curve[-1]}}
    st = {"world": world, "world_preset": {"kind": world}, "background_source": "test", "encoder_probe": {"pixels": 0.1},
          "copy_l1": 0.2, "rows": rows,
          "config": {"seed": seed, "train_steps": steps, "model_overrides": list(overrides), "probe_at": [10, 30]}}
    if running is not None:
        st["running_curves"] = {kind: running}
    (folder / f"study_{world}.json").write_text(json.dumps(st))


def test_seeds_in_subfolders_group_into_one_setting_with_their_spread(tmp_path):
    ridge_end = [0.4, 0.05, 0.03]
    for seed, r in enumerate(ridge_end):
        sub = tmp_path / "paper" / (f"seed{seed}" if seed else "")
        _study(sub, seed=seed, curve=[_point(10, r + 0.1, -0.5, 0.15, 1.5), _point(30, r, -0.2, 0.1, 2.0)])
    _study(tmp_path / "delta", seed=0, overrides=("predictor_target=delta",),
           curve=[_point(10, 0.2, 0.0, 0.12, 2.5), _point(30, 0.7, 0.65, 0.08, 2.8)])
    _study(tmp_path / "stopped", seed=0, kind="noisy", running=[_point(10, -0.02, -0.4, 0.14, 1.8)])
    groups = group_runs(collect_runs([tmp_path / "paper", tmp_path / "delta", tmp_path / "stopped", tmp_path]))
    assert list(groups) == ["agent none, paper recipe, 30 steps", "agent none, predictor_target=delta, 30 steps",
                            "agent noisy, paper recipe, 30 steps (unfinished)"]
    assert [r["seed"] for r in groups["agent none, paper recipe, 30 steps"]] == [0, 1, 2]  # overlap counted once
    s = summarise(ridge_end)
    assert s["mean"] == pytest.approx(statistics.fmean(ridge_end)) and s["sd"] == pytest.approx(statistics.stdev(ridge_end))
    assert summarise([0.3])["sd"] == 0.0 and summarise([]) is None

    md_path = write_study_comparison([tmp_path], tmp_path / "out" / "compare.md")
    md = md_path.read_text()
    assert (tmp_path / "out" / "compare.png").is_file() and "![runs compared](compare.png)" in md
    # the end of the paper-recipe runs over three seeds, its best seed-mean probe (step 10: mean + 0.1) and no target
    assert (f"| agent none, paper recipe, 30 steps | 0, 1, 2 | 30 | {s['mean']:.3f} +- {s['sd']:.3f} [0.030, 0.400] | "
            f"-0.200 +- 0.000 [-0.200, -0.200] | {s['mean'] + 0.1:.3f} (ridge z, 10) | 0.6 | no |") in md
    assert "| agent none, predictor_target=delta, 30 steps | 0 | 30 | 0.700 | 0.650 | 0.700 (ridge z, 30) | 0.6 | yes |" in md
    assert "| agent noisy, paper recipe, 30 steps (unfinished) | 0 | 10 | -0.020 | -0.400 |" in md
    # along the run: L1 over the copy baseline's (0.2) and the action dependence
    assert "| agent none, predictor_target=delta, 30 steps | 30 | 1 | 0.700 | 0.650 | 0.400 | 2.80 |" in md


def test_a_finished_row_replaces_its_running_curve(tmp_path):
    pts = [_point(10, 0.1, 0.0, 0.1, 2.0)]
    _study(tmp_path, seed=0, curve=pts, running=pts)
    runs = collect_runs([tmp_path])
    assert len(runs) == 1 and runs[0]["finished"]


def test_the_same_setting_and_seed_twice_is_refused_naming_both_files(tmp_path):
    for name in ("a", "b"):
        _study(tmp_path / name, seed=3, curve=[_point(10, 0.1, 0.0, 0.1, 2.0)])
    with pytest.raises(InputError, match=r"a/study_agent.json and .*b/study_agent.json .* same seed 3"):
        group_runs(collect_runs([tmp_path]))


def test_cli_writes_the_comparison_and_refuses_folders_without_curves(tmp_path, capsys):
    _study(tmp_path / "run", seed=0, curve=[_point(10, 0.1, 0.0, 0.1, 2.0)])
    _study(tmp_path / "no_curve", seed=0)  # a study without --probe-at: rows but no curve
    assert main(["study-compare", "--results", str(tmp_path / "run"), "--out", str(tmp_path / "c.md")]) == 0
    assert "| agent none, paper recipe, 30 steps | 0 | 10 | 0.100 |" in (tmp_path / "c.md").read_text()
    with pytest.raises(SystemExit) as refused:
        main(["study-compare", "--results", str(tmp_path / "no_curve"), "--out", str(tmp_path / "d.md")])
    assert refused.value.code != 0
    err = capsys.readouterr().err
    assert "--results" in err and "--probe-at" in err


def test_world_nuisances_and_strengths_make_their_own_setting(tmp_path):
    """A clean world (flicker 0, no distractors) or another regularizer strength at the same seed
    is another setting, named by what differs from the study's defaults; the world's default
    values (written out in full, as the study writes them) are not."""
    from dataclasses import asdict

    from fastlam.eval.study import StudyConfig

    pts = [_point(10, 0.1, 0.0, 0.1, 2.0)]
    _study(tmp_path / "default", seed=0, curve=pts)
    _study(tmp_path / "clean", seed=0, curve=pts)
    _study(tmp_path / "beta", seed=0, kind="noisy", curve=pts)
    full = asdict(StudyConfig(world="agent"))
    for name, change in (("default", {}), ("clean", {"flicker": 0.0, "distractors": 0}),
                         ("beta", {"strengths": {**full["strengths"], "noisy": {"beta": 0.001}}})):
        f = tmp_path / name / "study_agent.json"
        st = json.loads(f.read_text())
        st["config"] = {**full, **change, "seed": 0, "train_steps": 30, "probe_at": [10]}
        f.write_text(json.dumps(st))
    labels = list(group_runs(collect_runs([tmp_path])))
    assert sorted(labels) == ["agent noisy, strength={'beta': 0.001}, 30 steps",
                              "agent none, distractors=0 flicker=0.0, 30 steps",
                              "agent none, paper recipe, 30 steps"]
