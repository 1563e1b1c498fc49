"""A trained model is never lost and a bad config never runs: config types and ranges are
checked up front (errors name the key, exit code 2, no traceback), an out_dir holding a run is
refused unless --resume / --overwrite says what to do, --overwrite moves the old run aside,
metrics never go backwards, printed paths exist, a resumed run reports its true first loss."""
import json
import sys
from pathlib import Path

import pytest
from subprocess_guard import run_guarded

from fastlam.config import ConfigError, load_config
from fastlam.config_checks import validate_train_config
from fastlam.run_folder import RunFolderError, prepare_out_dir, truncate_metrics
from fastlam.train import TrainConfig, main, train

TINY = [
    "data.source=synthetic", "data.synthetic_clips=8", "model.image_size=16", "model.frames=4",
    "model.encoder.kind=vit", "model.encoder.patch_size=8", "model.encoder.width=16", "model.encoder.depth=1", "model.encoder.heads=2",
    "model.idm.width=16", "model.idm.depth=1", "model.idm.heads=2",
    "model.predictor.width=16", "model.predictor.depth=1", "model.predictor.heads=2", "model.action_dim=8",
    "batch_size=2", "progress=false", "log_every=2", "ckpt_every=2", "keep_checkpoints=1",
]


def tiny(out, *extra) -> TrainConfig:
    return load_config(TrainConfig, "configs/tiny_cpu.yaml", TINY + [f"out_dir={out}"] + list(extra))


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- config types ---------------------------------------------------------------------------
@pytest.mark.parametrize("override, value", [
    ("optim.adamw_lr=5e-3", 5e-3),          # YAML 1.1 reads this as a string
    ("optim.muon_lr=1E-2", 1e-2),
    ("optim.weight_decay=4e-02", 0.04),
    ("optim.weight_decay=0", 0.0),          # an int where a float is expected
    ("data.fps=+.5", 0.5),
])
def test_yaml_float_spellings_are_floats(override, value):
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml", [override])
    key = override.split("=")[0].split(".")
    got = getattr(getattr(cfg, key[0]), key[1])
    assert type(got) is float and got == pytest.approx(value)


def test_optionals_lists_dicts_and_literals():
    import typing
    from dataclasses import dataclass, field

    from fastlam.config import from_dict

    @dataclass
    class C:
        names: list[str] = field(default_factory=list)
        sizes: dict[str, int] = field(default_factory=dict)
        mode: typing.Literal["a", "b"] = "a"
        ratio: float | None = None

    c = from_dict(C, {"names": ["x"], "sizes": {"k": 2}, "mode": "b", "ratio": "1e-3"})
    assert (c.names, c.sizes, c.mode, c.ratio) == (["x"], {"k": 2}, "b", 1e-3)
    assert from_dict(C, {"ratio": None}).ratio is None
    for data, match in [({"names": ["x", 3]}, r"names\[1\]: expected str"),
                        ({"sizes": {"k": "big"}}, r"sizes.k: expected int"),
                        ({"mode": "c"}, r"mode: expected one of 'a', 'b', got 'c'"),
                        ({"ratio": "abc"}, r"ratio: expected float or None")]:
        with pytest.raises(ConfigError, match=match):
            from_dict(C, data)


# ---- config ranges and choices --------------------------------------------------------------
@pytest.mark.parametrize("override, match", [
    ("batch_size=0", r"batch_size: expected >= 1, got 0"),
    ("steps=-5", r"steps: expected >= 1, got -5"),
    ("log_every=0", r"log_every: expected >= 1"),
    ("ckpt_every=0", r"ckpt_every: expected >= 1"),
    ("keep_checkpoints=0", r"keep_checkpoints: expected >= 1"),
    ("grad_accum_steps=0", r"grad_accum_steps: expected >= 1"),
    ("optim.adamw_lr=0", r"optim.adamw_lr: expected > 0"),
    ("optim.muon_lr=-1e-3", r"optim.muon_lr: expected > 0"),
    ("optim.weight_decay=-1", r"optim.weight_decay: expected >= 0"),
    ("optim.warmup_frac=1.5", r"optim.warmup_frac: expected in \[0, 1\]"),
    ("optim.adamw_betas=[0.9, 1.0]", r"optim.adamw_betas\[1\]: expected in \[0, 1\)"),
    ("data.fps=0", r"data.fps: expected > 0"),
    ("data.crop=middle", r"data.crop: expected one of random, center, got 'middle'"),
    ("data.loader=fast", r"data.loader: expected one of auto, dali, dali_stream, torch, got .fast."),
    ("data.num_workers=-1", r"data.num_workers: expected >= 0"),
    ("model.regularizer.kind=sparce", r"model.regularizer.kind: expected one of .*sparse.*, got 'sparce'"),
    ("model.regularizer.mean_term=odd", r"model.regularizer.mean_term: expected one of signed"),
    ("model.loss=l3", r"model.loss: expected one of l1, l2"),
    ("model.encoder.size=enormous", r"model.encoder.size: expected one of"),
    ("model.predictor.heads=5", r"model.predictor.width: expected a multiple of model.predictor.heads=5"),
    ("model.image_size=60", r"model.image_size: expected a multiple of model.encoder.patch_size=16"),
    ("model.frames=15", r"model.frames: expected a multiple of model.encoder.tubelet=2"),
    ("precision=fp8", r"precision: expected one of auto, bf16, fp32"),
    ("device=gpu0", r"device: expected auto, cpu, cuda or cuda:N"),
    ("distributed.backend=mpi", r"distributed.backend: expected one of"),
    ("model.encoder.checkpoint=no/such/vjepa2.pt", r"model.encoder.checkpoint: no file at no/such/vjepa2.pt"),
])
def test_out_of_range_values_name_the_key(override, match):
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml", [override])
    with pytest.raises(ConfigError, match=match):
        validate_train_config(cfg)


def test_shipped_configs_validate():
    for name in ("configs/tiny_cpu.yaml", "configs/paper_vitl.yaml", "configs/eval_arm_tiny.yaml"):
        validate_train_config(load_config(TrainConfig, name))


@pytest.mark.parametrize("override", ["batch_size=0", "steps=-5", "model.regularizer.kind=sparce",
                                      "optim.weight_decay=abc"])
def test_cli_user_error_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, override):
    with pytest.raises(SystemExit) as e:
        main(["--config", "configs/tiny_cpu.yaml", f"out_dir={tmp_path / 'run'}", override])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and override.split("=")[0] in err
    assert not (tmp_path / "run").exists()


def test_cli_bad_value_in_a_subprocess_has_no_traceback(tmp_path):
    proc = run_guarded([sys.executable, "-m", "fastlam.train", "--config", "configs/tiny_cpu.yaml",
                           f"out_dir={tmp_path / 'run'}", "batch_size=0"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "batch_size: expected >= 1, got 0" in proc.stderr
    assert not (tmp_path / "run").exists()


# ---- the run folder -------------------------------------------------------------------------
@pytest.mark.slow
def test_rerun_refuses_then_overwrite_moves_aside_and_resume_keeps_metrics_monotonic(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", "configs/tiny_cpu.yaml", *TINY, f"out_dir={run}", "steps=4"]) == 0
    out = capsys.readouterr().out
    printed = [line.split(":", 1)[1].split("(")[0].strip() for line in out.splitlines()
               if line.startswith(("checkpoint:", "model:", "loss curve:"))]
    assert len(printed) == 3 and all(Path(p).is_absolute() and Path(p).exists() for p in printed), out
    # Where the run goes is the first thing printed, absolute, before any set-up.
    assert out.splitlines()[0] == f"run folder: {run.resolve()} (new run)", out[:300]
    assert steps_logged(run) == [1, 2, 4]
    model_bytes = (run / "final" / "model.safetensors").read_bytes()
    first = json.loads((run / "summary.json").read_text())["first_loss"]

    # A plain rerun (the README's train_tiny.sh steps=2 after a finished run) changes nothing.
    snapshot = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(SystemExit) as e:
        main(["--config", "configs/tiny_cpu.yaml", *TINY, f"out_dir={run}", "steps=2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "already holds a run (step 4, a final model)" in err
    assert "--resume" in err and "out_dir=" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == snapshot

    # --resume to a larger step: the metrics continue where the run left off, first loss kept.
    assert main(["--config", "configs/tiny_cpu.yaml", *TINY, f"out_dir={run}", "steps=6", "--resume"]) == 0
    assert steps_logged(run) == [1, 2, 4, 6]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["first_loss"] == first and summary["steps"] == 6
    assert f"loss {first:.4f} ->" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"steps: the run .* is at step 6 already"):
        train(tiny(run, "steps=2"), resume=True)

    # --overwrite: the old run moves to a timestamped sibling, intact; the new one starts fresh.
    assert main(["--config", "configs/tiny_cpu.yaml", *TINY, f"out_dir={run}", "steps=2", "--overwrite"]) == 0
    assert "moved the previous run" in capsys.readouterr().out
    old = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(old) == 1
    assert steps_logged(old[0]) == [1, 2, 4, 6] and (old[0] / "final" / "model.safetensors").is_file()
    assert steps_logged(run) == [1, 2]
    assert (old[0] / "final" / "model.safetensors").read_bytes() != model_bytes  # the resumed run's weights
    with pytest.raises(RunFolderError, match="pass one"):
        train(tiny(run, "steps=2"), resume=True, overwrite=True)


def test_check_flag_judges_config_and_run_folder_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", "configs/tiny_cpu.yaml", *TINY, f"out_dir={run}"]
    assert main([*args, "--check"]) == 0
    assert capsys.readouterr().out.strip() == f"config ok; run folder: {run.resolve()}"
    assert not run.exists()
    for extra, message in ((["batch_size=0"], "batch_size: expected >= 1"),
                           (["--resume"], "--resume: no checkpoint")):
        with pytest.raises(SystemExit) as e:
            main([*args, *extra, "--check"])
        assert e.value.code == 2 and message in capsys.readouterr().err
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("steps: 4\n")
    snapshot = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        main([*args, "--check"])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*args, "--check", "--overwrite"]) == 0  # would move it aside: --check moves nothing
    assert sorted(p.name for p in tmp_path.rglob("*")) == snapshot


def test_train_tiny_refuses_an_existing_run_before_any_set_up(tmp_path):
    """scripts/train_tiny.sh runs the --check first when the environment exists: a rerun into a
    finished run is refused without the set-up's pip and extension steps."""
    repo = Path(__file__).resolve().parents[1]
    if Path(sys.executable).resolve() != (repo / ".venv" / "bin" / "python").resolve():
        pytest.skip("the suite does not run in the repository's .venv, which train_tiny.sh uses")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("steps: 4\n")
    proc = run_guarded(["bash", str(repo / "scripts" / "train_tiny.sh"), f"out_dir={run}"])
    assert proc.returncode == 2 and "already holds a run" in proc.stderr, proc.stderr[-2000:]
    assert "[setup" not in proc.stderr and "sample videos" not in proc.stdout


def test_resume_after_a_crash_drops_rows_logged_after_the_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 4, 6)) + '{"step": 8, "lo')
    truncate_metrics(metrics, 4)
    assert steps_logged(tmp_path) == [1, 2, 4]


def test_config_yaml_is_not_written_for_an_invalid_config_in_an_existing_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("steps: 200\n")
    for bad in ("model.regularizer.kind=sparce", "batch_size=0"):
        with pytest.raises(ConfigError):
            train(tiny(run, bad))
        with pytest.raises(ConfigError):
            train(tiny(run, bad), overwrite=True)
    assert (run / "config.yaml").read_text() == "steps: 200\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_empty_or_unrelated_folder_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert prepare_out_dir(tmp_path, resume=False, overwrite=False) is None
    assert prepare_out_dir(tmp_path / "new", resume=False, overwrite=True) is None


def test_pruning_never_removes_the_checkpoint_it_returns(tmp_path):
    """A leftover newer step file (e.g. from an older run) must not make the file just written
    the one pruned: the checkpoint path training prints always exists."""
    import torch

    from fastlam import distributed as fdist
    from fastlam.models import LatentActionWorldModel
    from fastlam.local_runner import LocalRunner

    cfg = tiny(tmp_path, "steps=2")
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "step_0000200.pt").write_bytes(b"left over")
    runner = LocalRunner(LatentActionWorldModel(cfg.model), cfg, fdist.DistEnv("none"), torch.device("cpu"))
    path = runner.save(ckpts, 2, 2, {"rng": {"torch": torch.get_rng_state()}, "model_config": "{}"}, keep=1)
    assert path.is_file() and path.name == "step_0000002.pt"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.pt", "step_0000002.pt"]
