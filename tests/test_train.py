"""The training entry point: runs, logs, checkpoints atomically, resumes exactly, and the
README command (shortened) makes the loss fall on the real sample videos."""
import json
from pathlib import Path

import pytest
import torch

from fastlam.config import ConfigError, load_config
from fastlam.models import LatentActionWorldModel
from fastlam.train import TrainConfig, main, train
from simulated_crash import crash_in_forward

SYNTHETIC = [
    "data.source=synthetic", "data.synthetic_clips=64", "model.image_size=32", "model.frames=8",
    "model.encoder.patch_size=8", "model.idm.width=32", "model.predictor.width=32", "batch_size=4",
    "progress=false", "log_every=1",
]


def cfg_for(tmp_path, *extra) -> TrainConfig:
    return load_config(TrainConfig, "configs/tiny_cpu.yaml", SYNTHETIC + [f"out_dir={tmp_path}"] + list(extra))


def read_metrics(run: Path):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_throughput_counts_training_and_data_waits_but_not_paused_work(monkeypatch):
    """clips/s covers the loop's own time (waiting for data included, as a share) and leaves
    out what the loop does besides training (diagnostics, checkpoints): on a fake clock."""
    from fastlam import distributed as fdist

    clock = [100.0]
    monkeypatch.setattr(fdist.time, "perf_counter", lambda: clock[0])
    model = LatentActionWorldModel(cfg_for(Path("unused")).model)
    speed = fdist.Throughput(model, torch.device("cpu"), world_size=1)
    with speed.waiting():
        clock[0] += 1.0   # 1 s waiting for the batch
    clock[0] += 1.0       # 1 s of training step
    speed.add(8)
    with speed.paused():
        clock[0] += 30.0  # a checkpoint: not training time
    row = speed.window()
    assert row["clips_per_s"] == pytest.approx(8 / 2.0) and row["data_wait_frac"] == pytest.approx(0.5)
    clock[0] += 4.0
    speed.add(8)
    assert speed.window() == pytest.approx({"clips_per_s": 2.0, "tokens_per_s": 2.0 * speed.tokens_per_clip,
                                            "data_wait_frac": 0.0})


@pytest.mark.slow
def test_run_writes_everything(tmp_path):
    summary = train(cfg_for(tmp_path, "steps=6", "ckpt_every=3"))
    assert summary["steps"] == 6
    for name in ("config.yaml", "metrics.jsonl", "loss_curve.png", "summary.json", "checkpoints/latest.pt",
                 "final/model.safetensors", "final/config.json"):
        assert (tmp_path / name).is_file(), name
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["clips_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in rows)
    # The recorded config is the resolved one, and it loads back.
    assert load_config(TrainConfig, tmp_path / "config.yaml").steps == 6
    model = LatentActionWorldModel.from_checkpoint(tmp_path / "final")
    assert model.infer_actions(torch.rand(1, 3, 8, 32, 32)).shape == (1, 3, 128)
    LatentActionWorldModel.from_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert not list((tmp_path / "checkpoints").glob(".*.tmp")), "no temporary files left behind"


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(cfg_for(full, "steps=6", "ckpt_every=3"))

    # The same run, crashing in step 4 (after the step-3 checkpoint), then resumed.
    part = tmp_path / "part"
    crash_in_forward(lambda: train(cfg_for(part, "steps=6", "ckpt_every=3")), 4, monkeypatch)
    train(cfg_for(part, "steps=6", "ckpt_every=3"), resume=True)

    a = [(r["step"], r["loss"]) for r in read_metrics(full)]
    b = [(r["step"], r["loss"]) for r in read_metrics(part)]
    assert b == a, "a resumed run must reproduce the uninterrupted one exactly (fp32, CPU)"


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        train(cfg_for(tmp_path, "steps=2"), resume=True)
    assert not list(tmp_path.iterdir()), "nothing written"


def test_cli_rejects_unknown_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", "configs/tiny_cpu.yaml", f"out_dir={tmp_path}", "model.predictor.widht=8"])
    assert e.value.code == 2
    assert "model.predictor.widht" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists(), "nothing runs on a bad config"


def test_synthetic_pan_source_trains_and_bad_sprite_count_is_named(tmp_path):
    summary = train(cfg_for(tmp_path / "pan", "steps=2", "data.synthetic_sprites=8", "data.synthetic_wrap=true"))
    assert summary["steps"] == 2
    with pytest.raises(ConfigError, match="data.synthetic_sprites"):
        train(cfg_for(tmp_path / "bad", "steps=1", "data.synthetic_sprites=0"))
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_empty_video_folder_is_a_clear_error(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(ValueError, match="source"):
        train(load_config(TrainConfig, "configs/tiny_cpu.yaml", [f"data.source={tmp_path / 'videos'}",
                                                                  f"out_dir={tmp_path / 'run'}"]))


SAMPLES = Path("data/samples")


@pytest.mark.slow
@pytest.mark.skipif(not any(SAMPLES.glob("*.mp4")), reason="sample videos not fetched (python -m fastlam.data.samples)")
def test_readme_training_command_shortened(tmp_path, capsys):
    """The README's first command, shortened: real video, the tiny_cpu config, loss falls."""
    rc = main(["--config", "configs/tiny_cpu.yaml", f"out_dir={tmp_path}", "steps=30", "log_every=5",
               "ckpt_every=1000", "progress=false"])
    assert rc == 0
    rows = read_metrics(tmp_path)
    first, last = rows[0]["pred_loss"], sum(r["pred_loss"] for r in rows[-2:]) / 2
    assert last < 0.8 * first, f"prediction loss did not fall: {first:.4f} -> {last:.4f}"
    out = capsys.readouterr().out
    assert "checkpoint:" in out and "loss curve:" in out
