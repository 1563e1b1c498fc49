"""Probes fitted on some videos and scored on others, and the small-scale study command."""
import json

import pytest
import torch

from fastlam.eval.cli import main
from fastlam.eval.probes import group_split, mlp_r2, pca_features, r2_score, ridge_r2


def test_group_split_keeps_groups_apart():
    groups = torch.tensor([3, 1, 1, 2, 3, 0, 2, 0])
    fit, score = group_split(groups)
    assert fit.any() and score.any() and not (fit & score).any()
    assert not set(groups[fit].tolist()) & set(groups[score].tolist())
    with pytest.raises(ValueError, match="groups"):
        group_split(torch.zeros(4, dtype=torch.long))


@pytest.mark.slow
def test_probes_find_known_maps_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 6, generator=g)
    linear = x[:, :2] @ torch.tensor([[1.0, -2.0], [0.5, 1.0]]) + 0.05 * torch.randn(600, 2, generator=g)
    product = (x[:, 0] * x[:, 1])[:, None]  # relative to the "state" x1: linear probes cannot, an MLP can
    noise = torch.randn(600, 2, generator=g)
    assert ridge_r2(x[:400], linear[:400], x[400:], linear[400:]) > 0.99
    assert ridge_r2(x[:400], product[:400], x[400:], product[400:]) < 0.1
    assert mlp_r2(x[:400], product[:400], x[400:], product[400:], iterations=300) > 0.7
    assert ridge_r2(x[:400], noise[:400], x[400:], noise[400:]) < 0.05
    assert r2_score(linear[400:].mean(0).expand(200, 2), linear[400:]) == pytest.approx(0.0, abs=0.02)
    a, b = pca_features(x[:400], x[400:], 3)
    assert a.shape == (400, 3) and b.shape == (200, 3)
    with pytest.raises(ValueError, match="x"):
        ridge_r2(x[:10], linear[:10], x[10:20, :3], linear[10:20])


@pytest.mark.slow
def test_study_command_writes_rows_and_report(tmp_path):
    out = tmp_path / "study"
    args = ["study", "--world", "agent", "--source", "procedural", "--train-steps", "2", "--train-clips", "16",
            "--test-clips", "24", "--out", str(out)]
    assert main(args + ["--kinds", "deterministic", "noisy"]) == 0
    assert main(args + ["--kinds", "discrete"]) == 0  # merges into the same file
    res = json.loads((out / "study_agent.json").read_text())
    assert set(res["rows"]) == {"deterministic", "noisy", "discrete"}
    noisy = res["rows"]["noisy"]
    for key in ("ridge_trained", "ridge_shuffled", "ridge_untrained", "mlp_trained", "mlp_untrained",
                "distractor_ridge", "diag/action_dependence", "leakage_ratio"):
        assert key in noisy, key
    assert "ridge_trained" not in res["rows"]["deterministic"]
    assert main(["study-report", "--results", str(out)]) == 0
    md = (out / "study.md").read_text()
    assert "| noisy" in md and "x2.50" in md and (out / "capacity_vs_leakage.png").is_file()


def test_mlp_probe_early_stopping_on_fit_groups():
    """With ``groups_fit`` the iteration count is chosen on fit-side groups: a real map relative
    to the state is still found, shuffled labels still score near 0 (never chosen by the
    held-out rows), and the groups must match the fit rows."""
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(16).repeat_interleave(40)
    x = torch.randn(640, 6, generator=g)
    product = (x[:, 0] * x[:, 1])[:, None]
    fit, score = group_split(groups)
    assert mlp_r2(x[fit], product[fit], x[score], product[score], iterations=300, groups_fit=groups[fit]) > 0.7
    perm = torch.randperm(int(fit.sum()), generator=g)
    assert mlp_r2(x[fit], product[fit][perm], x[score], product[score], iterations=300,
                  groups_fit=groups[fit]) < 0.1
    with pytest.raises(ValueError, match="groups_fit"):
        mlp_r2(x[fit], product[fit], x[score], product[score], groups_fit=groups[:3])


def test_study_command_with_kinds_alone_runs_only_the_encoder_probes(tmp_path):
    """`--kinds` with no names: the encoder probes (ridge from the state difference, and the
    MLP from both states) and no LAM row, so the encoder is checked before any LAM trains."""
    out = tmp_path / "study"
    assert main(["study", "--world", "agent", "--source", "procedural", "--train-steps", "2", "--train-clips", "16",
                 "--test-clips", "24", "--out", str(out), "--kinds"]) == 0
    res = json.loads((out / "study_agent.json").read_text())
    assert res["rows"] == {}
    assert set(res["encoder_probe"]) >= {"pixels"} and "pixels" in res["encoder_probe_mlp"], sorted(res)
    assert "the encoder" in res["encoder_verdict"] and "show" in res["encoder_verdict"]


def test_study_set_overrides_reach_the_model_and_the_record(tmp_path):
    """``--set`` changes the LAM every kind trains (here the predictor's depth and the noisy beta,
    which the study's own strength would otherwise fix) and is written into the result's config;
    a misspelt key is refused with the key named, before any training."""
    from fastlam.config import ConfigError
    from fastlam.eval.study import StudyConfig

    cfg = StudyConfig(model_overrides=("predictor.depth=3", "regularizer.beta=0.001"))
    m = cfg.model_config("noisy")
    assert (m.predictor.depth, m.idm.depth, m.regularizer.beta, m.encoder.kind) == (3, 2, 0.001, "pixels")
    with pytest.raises(ConfigError, match="model.predictor.dpth"):
        StudyConfig(model_overrides=("predictor.dpth=3",)).model_config("none")
    out = tmp_path / "study"
    assert main(["study", "--world", "agent", "--source", "procedural", "--train-steps", "1", "--train-clips", "8",
                 "--test-clips", "16", "--kinds", "none", "--set", "predictor.depth=1", "--out", str(out)]) == 0
    res = json.loads((out / "study_agent.json").read_text())
    assert res["config"]["model_overrides"] == ["predictor.depth=1"]


@pytest.mark.slow
def test_probe_at_records_one_run_as_a_curve_and_the_report_draws_it(tmp_path):
    """``--probe-at 1,2``: one run per kind to step 2, probed at steps 1 and 2; the final point
    is the row (whose format the report and older tests read stays as it was); study-report
    draws probes_vs_steps.png and a table of the curve; a --train-steps other than the last
    probe step is refused."""
    out = tmp_path / "curves"
    args = ["study", "--world", "agent", "--source", "procedural", "--train-clips", "16", "--test-clips", "24",
            "--kinds", "none", "deterministic", "--out", str(out)]
    assert main(args + ["--probe-at", "2,1", "--train-steps", "2"]) == 0
    res = json.loads((out / "study_agent.json").read_text())
    assert res["config"]["train_steps"] == 2 and res["config"]["probe_at"] == [1, 2]
    assert res["copy_l1"] > 0
    none = res["rows"]["none"]
    assert [pt["step"] for pt in none["curve"]] == [1, 2]
    for key in ("ridge_trained", "mlp_trained", "diag/l1_own", "diag/action_dependence"):
        assert none["curve"][-1][key] == none[key], key
    assert "ridge_shuffled" in none and "ridge_shuffled" not in none["curve"][0]  # floors once, in the row
    assert none["curve"][0]["diag/l1_own"] != none["curve"][1]["diag/l1_own"]  # a step was taken in between
    assert "ridge_trained" not in res["rows"]["deterministic"]["curve"][0]
    assert "running_curves" not in res  # each finished run's row replaced its points so far
    assert main(["study-report", "--results", str(out)]) == 0
    md = (out / "study.md").read_text()
    assert (out / "probes_vs_steps.png").is_file() and "![probes vs steps](probes_vs_steps.png)" in md
    pt = none["curve"][0]
    assert f"| none | 1 | {pt['ridge_trained']:.3f} | {pt['mlp_trained']:.3f} | {pt['diag/l1_own']:.4f} /" in md
    # A run stopped after its first probe step keeps that point, and the report lists it.
    res["running_curves"] = {"noisy": none["curve"][:1]}
    (out / "study_agent.json").write_text(json.dumps(res))
    assert main(["study-report", "--results", str(out)]) == 0
    assert f"| noisy (unfinished) | 1 | {pt['ridge_trained']:.3f} |" in (out / "study.md").read_text()
    with pytest.raises(SystemExit) as refused:
        main(args + ["--probe-at", "1,2", "--train-steps", "5"])
    assert refused.value.code != 0


def test_training_in_segments_takes_the_steps_of_one_run():
    """The curve's run is one run: training to step 3 then on to 5 (schedule set for 5) leaves
    the same weights as training 5 steps at once."""
    from fastlam.eval.study import StateTraining, StudyConfig, train_on_states
    from fastlam.models import LatentActionWorldModel

    cfg = StudyConfig(world="agent", size=16, width=16, depth=1, action_dim=8)
    states = torch.randn(12, cfg.steps_t, 4, 96, generator=torch.Generator().manual_seed(0))
    models = []
    for segments in ((5,), (3, 5)):
        torch.manual_seed(0)
        model = LatentActionWorldModel(cfg.model_config("none"))
        if segments == (5,):
            train_on_states(model, states, 5, 4, seed=0)
        else:
            training = StateTraining(model, states, 5, 4, seed=0)
            for step in segments:
                training.advance_to(step)
            with pytest.raises(ValueError, match="step"):
                training.advance_to(6)
        models.append(model)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), name


def test_study_command_leaves_the_callers_thread_count(tmp_path):
    """``--threads`` applies to the study only: a caller of main() in the same process keeps its
    own torch thread count (a leaked count changed the CPU reductions of later tests)."""
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    assert main(["study", "--world", "agent", "--source", "procedural", "--kinds", "--test-clips", "16",
                 "--threads", str(target), "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == before
