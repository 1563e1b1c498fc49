"""Data-parallel training on CPU (DeepSpeed ZeRO and torch DDP): 2 processes over gloo, against
the single-process trainer.

Every run trains the same tiny LAM on synthetic sprite clips with a constant learning rate
(``optim.min_lr_frac=1``, ``warmup_frac=0``), so a run stopped early follows the same schedule as a shorter one,
and with ``model.regularizer.kind=none``: its loss is a per-clip mean, so two ranks' halves of
a global batch average to exactly the single-process objective (the noisy regularizer samples
noise per rank and the sparse one uses batch statistics: data-parallel runs of those differ
from one process by design).

Tolerance against one process: ``rtol=2e-3`` on the loss. The same Muon (quintic
Newton-Schulz in bf16) and AdamW run on both sides; the gradients differ only in fp32
summation order (two half-batch backward passes reduced over gloo vs one full batch), and
bf16 Newton-Schulz turns those last-bit differences into ~1e-3 relative differences of single
update elements. Resume after kill -9 is compared bit for bit (same world size, same
reduction order).

The first DeepSpeed start JIT-builds a small communication op: ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/fastlam/torch_extensions``) keeps it for later runs.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from subprocess_guard import ChildStalled, StallWatch, wait_guarded

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: DS_BUILD_OPS=0 pip install deepspeed==0.19.8")
psutil = pytest.importorskip("psutil")

from fastlam import distributed as fdist  # noqa: E402
from fastlam.config import ConfigError, load_config  # noqa: E402
from fastlam.distributed import checkpoints  # noqa: E402
from fastlam.models import LatentActionWorldModel  # noqa: E402
from fastlam.optim import OptimConfig  # noqa: E402
from fastlam.train import ResumableBatches, TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY = textwrap.dedent("""
    model:
      image_size: 32
      frames: 8
      action_dim: 16
      encoder: {size: tiny, patch_size: 16, tubelet: 2, frame_causal: true}
      idm: {width: 32, depth: 1, heads: 2}
      predictor: {width: 32, depth: 2, heads: 2}
      regularizer: {kind: none}
    data: {source: synthetic, synthetic_clips: 32}
    optim: {min_lr_frac: 1.0, warmup_frac: 0.0}  # constant: the same schedule for any number of steps
    batch_size: 8
    steps: 4
    log_every: 1
    ckpt_every: 2
    progress: false
""")

# A worker = `python -m fastlam.train`, plus one test-only fault: with FASTLAM_TEST_HANG_TAG
# set, rank 0 stops right before publishing that checkpoint as `latest` (its shards are all
# written) and waits to be killed, like a node lost in the middle of a save.
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import fastlam.distributed as fd

    hang = os.environ.get("FASTLAM_TEST_HANG_TAG")
    if hang:
        publish = fd.DeepSpeedRunner._publish

        def _publish(self, ckpt_dir, tag, state, keep):
            if tag == hang:
                Path(os.environ["FASTLAM_TEST_MARKER"]).write_text(tag)
                time.sleep(3600)
            return publish(self, ckpt_dir, tag, state, keep)

        fd.DeepSpeedRunner._publish = _publish

    from fastlam.train import main
    sys.exit(main(sys.argv[1:]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    (d / "tiny.yaml").write_text(TINY)
    (d / "worker.py").write_text(WORKER)
    z3 = json.loads((REPO / "configs/deepspeed/zero3.json").read_text())
    # The tiny model's tensors are all below the shipped persistence threshold (kept whole on
    # every rank, as biases are in a real model): 0 makes ZeRO-3 partition every one of them.
    z3["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (d / "zero3_tiny.json").write_text(json.dumps(z3))
    return d


def _launch(workdir: Path, out: Path, *overrides: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                       str(Path.home() / ".cache/fastlam/torch_extensions"))})
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(workdir / "worker.py"), "--config", str(workdir / "tiny.yaml"), f"out_dir={out}", *overrides]
    log = open(out.parent / f"{out.name}.log", "w")
    # A session of its own: the stall guard watches, and kills, the launcher and both ranks together.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _log(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text()[-4000:]


def _wait(proc: subprocess.Popen, out: Path) -> None:
    try:
        rc = wait_guarded(proc)  # no wall-clock limit: only a launch that stopped working is killed
    except ChildStalled as e:
        raise AssertionError(f"{e}:\n{_log(out)}") from None
    assert rc == 0, f"launch failed (rc={rc}):\n{_log(out)}"


def _kill9(proc: subprocess.Popen) -> None:
    procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def _wait_for(cond, proc: subprocess.Popen, out: Path, what: str) -> None:
    watch = StallWatch(proc)
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc={proc.returncode}) before {what}:\n{_log(out)}")
        try:
            watch.check()
        except ChildStalled as e:
            raise AssertionError(f"waiting for {what}: {e}:\n{_log(out)}") from None
        time.sleep(0.2)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}  # a resumed run's rows overwrite the killed run's


def _single(workdir: Path, out: Path, steps: int) -> dict:
    cfg = load_config(TrainConfig, workdir / "tiny.yaml", [f"out_dir={out}", f"steps={steps}",
                                                             "distributed.backend=none"])
    train(cfg)
    return _losses(out)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return LatentActionWorldModel.from_checkpoint(directory).state_dict()


def _assert_same_training(w_ds: dict, w_single: dict, workdir: Path) -> None:
    """The exported weights are the model one process trains: the same loss on a fixed batch
    (rel 2e-3, as for the training curves), every frozen tensor identical, and every trained
    tensor moved from the shared seeded initialisation the same way to within half of how far
    it moved (a tensor left at its init, or from the wrong shard, is off by 100% or more).
    Elementwise tolerances would be meaningless: torch's and DeepSpeed's bf16 Newton-Schulz,
    on the same fp32 input, differ by ~5% in single elements of one Muon update, and AdamW's
    first steps are +-lr wherever a gradient is near zero, whatever its size."""
    cfg = _cfg(workdir)
    torch.manual_seed(cfg.seed)
    model = LatentActionWorldModel(cfg.model)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    assert w_ds.keys() == w_single.keys() == init.keys()
    for key in init:
        moved = (w_single[key] - init[key]).norm()
        if moved == 0:  # the frozen encoder
            assert torch.equal(w_ds[key], w_single[key]), key
        else:
            assert (w_ds[key] - w_single[key]).norm() <= 0.5 * moved, key
    from fastlam.data.synthetic import make_sprite_clips

    video, _ = make_sprite_clips(8, steps=4, tubelet=2, size=32, seed=123)
    losses = []
    for weights in (w_ds, w_single):
        model.load_state_dict(weights)
        with torch.no_grad():
            losses.append(model.eval()(video).loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=2e-3), losses


@pytest.mark.slow
def test_zero2_matches_one_process_and_resumes_exactly_after_kill9_mid_save(workdir, tmp_path):
    zero2 = "distributed.deepspeed_config=configs/deepspeed/zero2.json"
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    run_full = _launch(workdir, full, zero2)
    single = _single(workdir, tmp_path / "single", steps=4)
    _wait(run_full, full)

    ds = _losses(full)
    assert sorted(ds) == [1, 2, 3, 4]
    for step in ds:
        assert ds[step] == pytest.approx(single[step], rel=2e-3), (step, ds, single)
    assert ds[4] < ds[1]  # it trains
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    # Throughput of the whole job: 8 clips per step; 4 steps x 2 x 2 patches = 16 tokens per clip.
    assert all(r["tokens_per_s"] == pytest.approx(16 * r["clips_per_s"]) and r["clips_per_s"] > 0 for r in rows)

    # Same run, killed with SIGKILL while saving its step-4 checkpoint: every shard is on
    # disk, `latest` not yet replaced.
    marker = tmp_path / "hung"
    run = _launch(workdir, crashed, zero2, env_extra={"FASTLAM_TEST_HANG_TAG": "step_0000004",
                                                      "FASTLAM_TEST_MARKER": str(marker)})
    _wait_for(marker.exists, run, crashed, "the step-4 save")
    _kill9(run)
    ckpt = crashed / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_0000002"
    assert (ckpt / "step_0000004").is_dir() and not (ckpt / "step_0000004" / fdist.STATE_FILE).exists()

    resumed = _launch(workdir, crashed, zero2, "--resume")
    _wait(resumed, crashed)
    assert "resumed from" in _log(crashed) and "step_0000002" in _log(crashed)
    again = _losses(crashed)
    assert [again[s] for s in (3, 4)] == [ds[s] for s in (3, 4)]  # bit-identical in fp32
    (w_full, w_resumed) = _weights(full / "final"), _weights(crashed / "final")
    for k in w_full:
        assert torch.equal(w_full[k], w_resumed[k]), k
    # The consolidated export is the model a single process would have trained.
    _assert_same_training(w_resumed, _weights(tmp_path / "single" / "final"), workdir)


def _resume_to_step_4_reproduces(workdir: Path, short: Path, full: Path, *overrides: str) -> dict:
    """Resume the 2-step run ``short`` to step 4: its losses and final weights must be the
    uninterrupted 4-step run ``full``'s, bit for bit. Returns ``full``'s final weights."""
    resumed = _launch(workdir, short, *overrides, "steps=4", "--resume")
    _wait(resumed, short)
    got, again = _losses(full), _losses(short)
    assert [again[s] for s in (1, 2, 3, 4)] == [got[s] for s in (1, 2, 3, 4)]
    w_full, w_resumed = _weights(full / "final"), _weights(short / "final")
    for k in w_full:
        assert torch.equal(w_full[k], w_resumed[k]), k
    return w_full


@pytest.mark.slow
def test_ddp_matches_one_process_and_resumes_exactly(workdir, tmp_path):
    # Plain data parallelism (torch DDP, fastlam's own Muon + AdamW, gloo on CPU): the same
    # trainer as one process, with gradients averaged over the two ranks' halves of a batch.
    ddp = "distributed.backend=ddp"
    full, short = tmp_path / "full", tmp_path / "short"
    run_full = _launch(workdir, full, ddp)
    run_short = _launch(workdir, short, ddp, "steps=2")  # stops after its step-2 checkpoint
    single = _single(workdir, tmp_path / "single", steps=4)
    _wait(run_full, full)
    _wait(run_short, short)
    got = _losses(full)
    assert sorted(got) == [1, 2, 3, 4]
    for step in got:
        assert got[step] == pytest.approx(single[step], rel=2e-3), (step, got, single)
    assert got[4] < got[1]
    # Two ranks really ran: rank 0's checkpoint carries both ranks' RNG states.
    state = torch.load(full / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    assert len(state["rng_ranks"]) == 2 and state["step"] == 4

    # The constant schedule makes the 2-step run the first half of the 4-step one: resuming
    # it to step 4 on the same world size reproduces the uninterrupted run bit for bit.
    w_full = _resume_to_step_4_reproduces(workdir, short, full, ddp)
    _assert_same_training(w_full, _weights(tmp_path / "single" / "final"), workdir)


@pytest.mark.slow
def test_zero3_sharded_encoder_sigterm_checkpoint_and_export(workdir, tmp_path):
    out = tmp_path / "z3"
    run = _launch(workdir, out, f"distributed.deepspeed_config={workdir / 'zero3_tiny.json'}",
                  "distributed.encoder=sharded", "steps=1000", "ckpt_every=1000", "activation_checkpointing=true",
                  "grad_accum_steps=2")
    _wait_for(lambda: (out / "metrics.jsonl").is_file() and len(_losses(out)) >= 3, run, out, "3 steps")
    workers = psutil.Process(run.pid).children(recursive=True)
    assert len([p for p in workers if "worker.py" in " ".join(p.cmdline())]) == 2
    for p in workers:  # what a cluster scheduler does before it preempts a job
        if "worker.py" in " ".join(p.cmdline()):
            p.send_signal(signal.SIGTERM)
    _wait(run, out)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["preempted"] and summary["world_size"] == 2 and summary["backend"] == "deepspeed"
    k = summary["steps"]
    assert 3 <= k < 1000
    tag = f"step_{k:07d}"
    assert (out / "checkpoints" / "latest").read_text().strip() == tag
    memory = json.loads((out / "memory.json").read_text())
    assert memory["zero_stage"] == 3 and len(memory["per_rank"]) == 2

    single = _single(workdir, tmp_path / "single", steps=k)
    ds = _losses(out)
    for step in range(1, k + 1):
        assert ds[step] == pytest.approx(single[step], rel=2e-3), (step, ds, single)

    # Consolidated fp32 export of the preempted checkpoint, in a fresh process-free call.
    exported = fdist.export_consolidated(out / "checkpoints" / tag, tmp_path / "export")
    w_ds = _weights(exported)
    assert all(v.dtype == torch.float32 for v in w_ds.values())
    _assert_same_training(w_ds, _weights(tmp_path / "single" / "final"), workdir)


@pytest.mark.slow
def test_zero3_muon_resumes_exactly_in_a_fresh_process(workdir, tmp_path):
    # ZeRO-3 with DeepSpeed's Muon, resumed in a new process, against the uninterrupted run.
    # Its torch.compile'd Newton-Schulz used to run a shape-specialised kernel on the first
    # call of a process and dynamic-shape kernels after: the resumed run's first step rounded
    # one update differently (fastlam.distributed.static_shape_compiles). The model has
    # configs/tiny_cpu.yaml's widths, whose matrix shapes showed it; the shipped ZeRO-3 config
    # keeps its small tensors whole (persistent) on every rank, as the report's run did.
    z3 = ("distributed.deepspeed_config=configs/deepspeed/zero3.json", "model.image_size=64", "model.frames=16",
          "model.action_dim=128", "model.idm.width=64", "model.idm.depth=2", "model.idm.heads=4",
          "model.predictor.width=96", "model.predictor.heads=4")
    full, short = tmp_path / "full", tmp_path / "short"
    run_full = _launch(workdir, full, *z3)
    run_short = _launch(workdir, short, *z3, "steps=2")  # its step-2 checkpoint is the full run's
    _wait(run_full, full)
    _wait(run_short, short)
    _resume_to_step_4_reproduces(workdir, short, full, *z3)


# ---- configuration errors, before anything starts ------------------------------------------
def _cfg(workdir, *overrides):
    return load_config(TrainConfig, workdir / "tiny.yaml", list(overrides))


def _ds_json(tmp_path, **fields) -> str:
    data = json.loads((REPO / "configs/deepspeed/zero2.json").read_text())
    data.update(fields)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_zero_config_that_contradicts_the_training_config(workdir, tmp_path):
    cfg = _cfg(workdir, f"distributed.deepspeed_config={_ds_json(tmp_path, train_batch_size=16)}")
    with pytest.raises(ConfigError, match="train_batch_size=16 contradicts"):
        fdist.preflight(cfg, "deepspeed", 2, "cpu")
    cfg = _cfg(workdir, "precision=fp32", f"distributed.deepspeed_config={_ds_json(tmp_path, bf16={'enabled': True})}")
    with pytest.raises(ConfigError, match="bf16.enabled=True contradicts"):
        fdist.preflight(cfg, "deepspeed", 2, "cpu")
    cfg = _cfg(workdir, f"distributed.deepspeed_config={_ds_json(tmp_path, fp16={'enabled': True})}")
    with pytest.raises(ConfigError, match="fp16"):
        fdist.preflight(cfg, "deepspeed", 2, "cpu")
    cfg = _cfg(workdir, f"distributed.deepspeed_config={_ds_json(tmp_path, optimizer={'type': 'Adam'})}")
    with pytest.raises(ConfigError, match="optimizer"):
        fdist.preflight(cfg, "deepspeed", 2, "cpu")
    cfg = _cfg(workdir, f"distributed.deepspeed_config={_ds_json(tmp_path, zero_optimization={'stage': 0})}")
    with pytest.raises(ConfigError, match="stage must be 1, 2 or 3"):
        fdist.preflight(cfg, "deepspeed", 2, "cpu")
    cfg = _cfg(workdir, "distributed.deepspeed_config=configs/deepspeed/zero2.json", "distributed.encoder=sharded")
    with pytest.raises(ConfigError, match="stage 3"):
        fdist.preflight(cfg, "deepspeed", 2, "cpu")
    ok = fdist.preflight(_cfg(workdir, "distributed.deepspeed_config=configs/deepspeed/zero3.json",
                              "grad_accum_steps=2"), "deepspeed", 2, "cpu")
    assert (ok["train_batch_size"], ok["train_micro_batch_size_per_gpu"], ok["gradient_accumulation_steps"]) == (8, 2, 2)
    assert ok["bf16"]["enabled"] is False and ok["zero_optimization"]["stage"] == 3


def test_world_size_that_does_not_divide_the_batch_fails_before_training(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = _cfg(workdir, f"out_dir={tmp_path / 'never'}", "distributed.backend=ddp")
    with pytest.raises(ConfigError, match=r"batch_size=8 .* not divisible by world_size \(3\)"):
        train(cfg)
    assert not (tmp_path / "never").exists()


def test_resume_without_a_complete_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="latest"):
        fdist.read_latest(tmp_path)
    (tmp_path / "latest").write_text("step_0000010\n")
    (tmp_path / "step_0000010").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        fdist.read_latest(tmp_path)
    (tmp_path / "step_0000010" / fdist.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        fdist.read_latest(tmp_path)


def test_publish_points_latest_at_a_complete_tag_and_keeps_the_newest(tmp_path):
    (tmp_path / "step_0000001").mkdir()  # a crash mid-save: never published, never rotated away
    for step in (2, 4, 6):
        tag = checkpoints.tag_name(step)
        (tmp_path / tag).mkdir()
        assert not checkpoints.is_published(tmp_path, tag)
        checkpoints.publish(tmp_path, tag, {"step": step}, keep=2)
        assert checkpoints.is_published(tmp_path, tag)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000001", "step_0000004", "step_0000006"]
    assert fdist.read_latest(tmp_path) == ("step_0000006", {"step": 6})


def test_launch_checks_take_only_the_settings_they_read():
    zero2 = fdist.DistributedConfig(deepspeed_config=str(REPO / "configs/deepspeed/zero2.json"))
    common = dict(batch_size=8, grad_accum_steps=2, precision="auto", world_size=2)
    with pytest.raises(ConfigError, match="sharded needs the deepspeed backend"):
        fdist.check_launch(fdist.DistributedConfig(encoder="sharded"), OptimConfig(), backend="ddp",
                           device_type="cpu", **common)
    assert fdist.check_launch(zero2, OptimConfig(), backend="ddp", device_type="cpu", **common) is None
    ds = fdist.check_launch(zero2, OptimConfig(grad_clip=0.5, use_muon=False), backend="deepspeed",
                            device_type="cuda", **common)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"], ds["bf16"]["enabled"]) == (2, 0.5, True)
    # With Muon, DeepSpeed would clip the orthogonalised updates: the clip is off instead.
    ds = fdist.check_launch(zero2, OptimConfig(grad_clip=0.5), backend="deepspeed", device_type="cpu", **common)
    assert (ds["gradient_clipping"], ds["bf16"]["enabled"]) == (0.0, False)


def test_rank_shards_are_disjoint_and_make_up_the_global_batch():
    whole = iter(ResumableBatches(40, 8, seed=3, position=5))
    shards = [iter(ResumableBatches(40, 8, seed=3, position=5, rank=r, world_size=2)) for r in range(2)]
    for _ in range(12):  # crosses epoch boundaries
        a, b = next(shards[0]), next(shards[1])
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert a + b == next(whole)
    with pytest.raises(ValueError, match="world_size"):
        ResumableBatches(40, 8, seed=0, rank=0, world_size=3)
