"""The study's encoder probes (issue 28 item 2): before any LAM, does the frozen encoder show
the move? Ridge from s_(t+1) - s_t, an MLP from (s_t, s_(t+1)) and a ridge from the bilinear
feature sum_tokens s_t (outer) (s_(t+1) - s_t), printed in the study report with a verdict
beside the LAM probes, so "the encoder cannot see it" and "the LAM did not learn it" are never
confused; each world preset names the encoder setting the probes chose."""
import json
import shutil
from pathlib import Path

import pytest

from fastlam.eval.cli import main
from fastlam.eval.study import ENCODER_TARGET, WORLDS, StudyConfig, encoder_verdict, run_study
from fastlam.eval.study_report import write_study_report

SHOWS, BARELY = "the encoder shows the move", "the encoder barely shows the move"


def test_verdict_takes_the_better_probe_against_the_target():
    assert encoder_verdict(0.2, 0.75) == f"{SHOWS}: R^2 0.750 (MLP)"
    assert encoder_verdict(0.81, None) == f"{SHOWS}: R^2 0.810 (ridge)"
    low = encoder_verdict(0.025, 0.01)
    assert low.startswith(f"{BARELY} (R^2 0.025 < {ENCODER_TARGET}")
    assert "a LAM cannot learn what its frozen encoder does not show" in low
    assert encoder_verdict(None, None) == "the encoder was not probed"
    assert encoder_verdict(-0.3, 0.1, 0.72) == f"{SHOWS}: R^2 0.720 (bilinear ridge)"
    assert "best of ridge / MLP / bilinear ridge" in encoder_verdict(-0.3, 0.1, 0.5)


def _encoder_only(out: Path, patch: int, pool: int, world: str = "agent_multi") -> str:
    # A clean world at 16 px (no flicker, no distractors): small enough for seconds on a CPU,
    # and a 2x2 grid of 8 px patches keeps an agent's multi-patch move readable.
    cfg = StudyConfig(world=world, kinds=(), size=16, patch=patch, pool=pool, train_clips=8, test_clips=128,
                      leakage_clips=8, source=None, flicker=0.0, distractors=0)
    run_study(cfg, out, log=lambda _: None)
    return write_study_report(out).read_text()


@pytest.mark.slow
def test_report_shows_both_encoder_probes_and_the_verdict_flips_for_a_blind_encoder(tmp_path):
    sighted = _encoder_only(tmp_path / "sighted", patch=8, pool=8)
    res = json.loads((tmp_path / "sighted" / "study_agent_multi.json").read_text())
    assert res["rows"] == {} and res["encoder_verdict"].startswith(SHOWS)
    assert max(res["encoder_probe"]["pixels"], res["encoder_probe_mlp"]["pixels"]) >= ENCODER_TARGET
    for text in ("| frozen encoder | ridge from s_(t+1) - s_t | MLP from (s_t, s_(t+1)) |",
                 f"| pixels (the LAMs' encoder) | {res['encoder_probe']['pixels']:.3f} | "
                 f"{res['encoder_probe_mlp']['pixels']:.3f} |",
                 f"**Encoder verdict: {res['encoder_verdict']}.**", "## The encoder beside the LAMs",
                 "No LAM trained for this world yet."):
        assert text in sighted, text
    # One token averaging the whole 16 px frame: the agent's move inside it is gone.
    blind = _encoder_only(tmp_path / "blind", patch=16, pool=16)
    res = json.loads((tmp_path / "blind" / "study_agent_multi.json").read_text())
    assert res["encoder_verdict"].startswith(BARELY)
    assert max(res["encoder_probe"]["pixels"], res["encoder_probe_mlp"]["pixels"]) < 0.2
    assert f"**Encoder verdict: {res['encoder_verdict']}.**" in blind and SHOWS not in blind


def test_report_reads_study_files_from_before_the_mlp_probe(tmp_path):
    """The committed study results have the ridge probe only: the report still draws them, with
    the verdict from the ridge and '-' for the MLP."""
    src = Path("benchmarks/results/small_scale_study/study_agent.json")
    shutil.copy(src, tmp_path / src.name)
    md = write_study_report(tmp_path).read_text()
    ridge = json.loads(src.read_text())["encoder_probe"]["pixels"]
    assert f"| pixels (the LAMs' encoder) | {ridge:.3f} | - |" in md
    assert f"**Encoder verdict: {encoder_verdict(ridge, None)}.**" in md
    assert "| noisy" in md and "(z ignored)" not in md  # deterministic's x1.000 is no collapse: it has no z
    res = json.loads(src.read_text())
    res["rows"]["noisy"]["diag/action_dependence"] = 1.004  # within the training runs' 1% of x1.0
    (tmp_path / src.name).write_text(json.dumps(res))
    md = write_study_report(tmp_path).read_text()
    assert [line.split(" ")[1] for line in md.splitlines() if "(z ignored)" in line] == ["noisy"]


@pytest.mark.slow
def test_bilinear_probe_reads_a_pan_that_no_linear_map_of_the_difference_reads(tmp_path):
    """A camera pan changes the state by about -a . grad(s), bilinear in action and image: on a
    clean pan the ridge from s_(t+1) - s_t stays near 0 (measured -0.10), while the ridge from
    the token-summed outer product s_t (outer) (s_(t+1) - s_t), the Lucas-Kanade right-hand side up
    to a linear map, reads the move (measured 0.80); the verdict names the probe that did."""
    md = _encoder_only(tmp_path, patch=8, pool=2, world="pan")
    res = json.loads((tmp_path / "study_pan.json").read_text())
    ridge, bil = res["encoder_probe"]["pixels"], res["encoder_probe_bilinear"]["pixels"]
    assert ridge < 0.1 and bil >= ENCODER_TARGET, (ridge, bil)
    assert res["encoder_verdict"] == f"{SHOWS}: R^2 {bil:.3f} (bilinear ridge)"
    assert f"| {bil:.3f} |" in md and "bilinear ridge from sum_tokens s_t (outer) (s_(t+1) - s_t)" in md


def test_world_presets_name_the_encoder_setting_and_flags_override(tmp_path):
    """Each world preset names its pixels encoder (size, patch, pool, token_norm); StudyConfig
    takes it unless a value is given, and the command line's flags reach the record."""
    for world, preset in WORLDS.items():
        enc = preset["encoder"]
        cfg = StudyConfig(world=world)
        assert (cfg.size, cfg.patch, cfg.pool, cfg.token_norm) == (enc["size"], enc["patch"], enc["pool"],
                                                                  enc["token_norm"])
        m = cfg.model_config("none")
        assert (m.image_size, m.encoder.patch_size, m.encoder.pool, m.encoder.token_norm) == (
            enc["size"], enc["patch"], enc["pool"], enc["token_norm"])
    cfg = StudyConfig(world="agent", size=16, patch=4, pool=1, token_norm=not WORLDS["agent"]["encoder"]["token_norm"])
    assert (cfg.size, cfg.patch, cfg.pool, cfg.token_norm) == (16, 4, 1, not WORLDS["agent"]["encoder"]["token_norm"])
    out = tmp_path / "enc"
    assert main(["study", "--world", "agent", "--source", "procedural", "--train-clips", "8", "--test-clips", "16",
                 "--size", "16", "--patch", "4", "--pool", "2", "--token-norm", "--out", str(out), "--kinds"]) == 0
    c = json.loads((out / "study_agent.json").read_text())["config"]
    assert (c["size"], c["patch"], c["pool"], c["token_norm"]) == (16, 4, 2, True)
    assert main(["study", "--world", "agent", "--source", "procedural", "--train-clips", "8", "--test-clips", "16",
                 "--size", "16", "--no-token-norm", "--out", str(out), "--kinds"]) == 0
    c = json.loads((out / "study_agent.json").read_text())["config"]
    assert (c["size"], c["patch"], c["token_norm"]) == (16, WORLDS["agent"]["encoder"]["patch"], False)

