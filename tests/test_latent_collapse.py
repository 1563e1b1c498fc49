"""A collapsed latent action (the predictor ignores z) is impossible to miss: a warning in the
run's output, ``diag/latent_collapse`` and the warning text in metrics.jsonl, a record in
summary.json (issue 28); a run whose predictor uses z raises none of it."""
import io
import json

import pytest
import torch

from fastlam.config import ConfigError, load_config
from fastlam.configs import LatentCollapseConfig, RegularizerConfig
from fastlam.diagnostics import CollapseWatch, progress_postfix
from fastlam.models import LatentActionWorldModel
from fastlam.train import TrainConfig, train


def _row(step, dep, own=0.05):
    return {"step": step, "diag/action_dependence": dep, "diag/l1_own": own, "diag/l1_other": own * dep,
            "diag/z_var_mean": 0.1}


def test_collapse_needs_the_whole_window_after_the_warmup_and_warns_once_per_episode():
    out = io.StringIO()
    watch = CollapseWatch(LatentCollapseConfig(tolerance=0.01, window=3, warmup=0.5), 100,
                          RegularizerConfig(kind="noisy", beta=5e-5), stream=out)
    assert watch.judged_from == 50
    # Before the warm-up nothing is judged, however flat (an AdaLN-zero predictor starts at x1.0).
    assert all(watch.observe(s, _row(s, 1.0)) == {} for s in (10, 20, 30, 40))
    assert watch.observe(50, _row(50, 1.0)) == {"diag/latent_collapse": False}  # 1 of 3
    assert watch.observe(60, _row(60, 1.02)) == {"diag/latent_collapse": False}  # outside 1%: window restarts
    assert not watch.observe(70, _row(70, 0.995))["diag/latent_collapse"]
    assert not watch.observe(80, _row(80, 1.004))["diag/latent_collapse"]
    assert out.getvalue() == ""
    hit = watch.observe(90, _row(90, 1.0))  # 70, 80, 90 all within 1% of 1.0
    assert hit["diag/latent_collapse"] is True and len(hit["warnings"]) == 1
    text = out.getvalue()
    assert "LATENT COLLAPSE at step 90" in text and "steps 70-90" in text
    assert "model.regularizer.beta (now 5e-05, kind noisy)" in text and "0.0500" in text
    assert progress_postfix({**_row(90, 1.0), **hit})["z"] == "COLLAPSED"
    again = watch.observe(100, _row(100, 1.0))
    assert again == {"diag/latent_collapse": True} and out.getvalue() == text  # once per episode
    rep = watch.report()
    assert rep["detected"] and rep["holds_at_end"] and rep["episodes"] == [{"from_step": 70, "to_step": None}]
    assert [m["step"] for m in rep["last_measurements"]] == [80, 90, 100]
    assert rep["criterion"] == {"tolerance": 0.01, "window": 3, "warmup": 0.5, "judged_from_step": 50}


def test_a_recovered_collapse_is_recorded_and_a_new_one_warns_again():
    out = io.StringIO()
    watch = CollapseWatch(LatentCollapseConfig(window=2, warmup=0.0), 10, stream=out)
    for s, d in ((1, 1.0), (2, 1.0), (3, 1.5), (4, 1.0), (5, 1.0)):
        watch.observe(s, _row(s, d))
    assert out.getvalue().count("LATENT COLLAPSE") == 2 and "used again at step 3" in out.getvalue()
    rep = watch.report()
    assert rep["episodes"] == [{"from_step": 1, "to_step": 3}, {"from_step": 4, "to_step": None}]
    assert "lower the regularizer's strength" in out.getvalue()  # no regularizer config given


def test_used_latents_and_models_without_latents_never_warn():
    out = io.StringIO()
    used = CollapseWatch(LatentCollapseConfig(window=2, warmup=0.0), 10, stream=out)
    for s in range(1, 11):
        assert not used.observe(s, _row(s, 1.9)).get("diag/latent_collapse")
    assert used.report()["detected"] is False and out.getvalue() == ""
    det = CollapseWatch(LatentCollapseConfig(window=1, warmup=0.0), 10, stream=out)
    row = {"step": 5, "diag/action_dependence": 1.0, "diag/l1_own": 0.1, "diag/l1_other": 0.1}  # deterministic
    assert det.observe(5, row) == {} and det.report() is None and out.getvalue() == ""


def test_resumed_rows_prime_the_watch_quietly():
    out = io.StringIO()
    watch = CollapseWatch(LatentCollapseConfig(window=2, warmup=0.0), 10, stream=out)
    watch.prime([_row(1, 1.0), _row(2, 1.0), {"step": 2, "loss": 1.0}])
    assert out.getvalue() == "" and watch.report()["episodes"] == [{"from_step": 1, "to_step": None}]
    assert "warnings" in watch.observe(3, _row(3, 1.0))  # this process's output still gets the warning
    assert watch.report()["episodes"] == [{"from_step": 1, "to_step": None}]  # the same episode


@pytest.mark.parametrize("kw, match", [({"tolerance": -0.1}, r"^latent_collapse.tolerance: expected >= 0"),
                                       ({"window": 0}, r"^latent_collapse.window: expected an int >= 1"),
                                       ({"warmup": 1.5}, r"^latent_collapse.warmup: expected in \[0, 1\]")])
def test_collapse_keys_are_checked(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(latent_collapse=LatentCollapseConfig(**kw)).check()


def _tiny(out_dir, steps=40):
    # regularizer none: nothing pulls z towards collapse, so the only difference between the two
    # runs below is whether z can reach the predictor at all.
    return load_config(TrainConfig, "configs/tiny_cpu.yaml", [
        "data.source=synthetic", "data.synthetic_clips=32", "model.image_size=16", "model.frames=6",
        "model.encoder.patch_size=8", "model.encoder.pool=2", "model.idm.width=16", "model.predictor.width=16",
        "model.regularizer.kind=none", "batch_size=8", "progress=false", "log_every=2", f"steps={steps}",
        "diagnostics_clips=4", "device=cpu", f"out_dir={out_dir}"])


def _rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_whose_predictor_cannot_see_z_warns_in_output_metrics_and_summary(tmp_path, monkeypatch, capfd):
    """The predictor's action embedding zeroed and frozen: z cannot change a prediction (action
    dependence exactly 1.0), as in issue 28's collapsed noisy run."""
    build = LatentActionWorldModel.__init__

    def blind(self, cfg):
        build(self, cfg)
        for p in self.predictor.action_embed.parameters():
            p.data.zero_()
            p.requires_grad_(False)  # the optimisers skip it: it stays zero

    monkeypatch.setattr(LatentActionWorldModel, "__init__", blind)
    summary = train(_tiny(tmp_path / "blind"))
    err = capfd.readouterr().err
    assert err.count("LATENT COLLAPSE at step") == 1 and "the run ended with its latent action collapsed" in err
    rows = _rows(tmp_path / "blind")
    judged = [r for r in rows if "diag/latent_collapse" in r]
    assert judged and judged[0]["step"] == 20  # warm-up: half of 40 steps
    assert all(r["diag/action_dependence"] == pytest.approx(1.0, abs=1e-6) for r in rows)
    assert [r["step"] for r in rows if r.get("warnings")] == [24]  # the third judged measurement
    assert all(r["diag/latent_collapse"] for r in judged[2:])
    on_disk = json.loads((tmp_path / "blind" / "summary.json").read_text())["latent_collapse"]
    assert on_disk == summary["latent_collapse"]
    assert on_disk["detected"] and on_disk["holds_at_end"] and on_disk["episodes"][0]["from_step"] == 20
    assert len(on_disk["last_measurements"]) == 3


@pytest.mark.slow
def test_a_run_whose_predictor_uses_z_does_not_warn(tmp_path, capfd):
    summary = train(_tiny(tmp_path / "used"))
    assert "LATENT COLLAPSE" not in capfd.readouterr().err
    rows = _rows(tmp_path / "used")
    judged = [r for r in rows if "diag/latent_collapse" in r]
    assert judged and not any(r["diag/latent_collapse"] for r in judged)
    assert not any("warnings" in r for r in rows)
    assert min(r["diag/action_dependence"] for r in judged) > 1.01  # z is used after the warm-up
    rec = json.loads((tmp_path / "used" / "summary.json").read_text())["latent_collapse"]
    assert rec == summary["latent_collapse"] and rec["detected"] is False and rec["holds_at_end"] is False


def test_the_dashboard_shows_a_rows_warnings_as_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fastlam.configs import LoggingConfig
    from fastlam.dashboard import Dashboard

    dash = Dashboard(LoggingConfig(tensorboard=True), tmp_path)
    dash.scalars(24, {"step": 24, "diag/latent_collapse": True, "warnings": ["LATENT COLLAPSE at step 24"]})
    dash.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    assert acc.Scalars("diag/latent_collapse")[0].value == 1.0
    texts = acc.Tensors("warnings/text_summary")
    assert texts[0].step == 24 and b"LATENT COLLAPSE at step 24" in texts[0].tensor_proto.string_val[0]
