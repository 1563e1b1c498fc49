"""The LAM trainer: one loop for a single process, DDP and DeepSpeed (:func:`train`) and the
checks before it (:func:`check_run`); ``fastlam/train.py`` is the command line over it, and
evaluations and scripts import what they need from here. Its parts live beside it, one concern
a module: the data it feeds (``train_data``), the local runner and its checkpoints
(``local_runner``), the device (``devices``), what a finished run writes (``run_summary``).

One loop for all three (``fastlam.distributed`` holds what only multi-process runs need):
``batch_size`` is the global batch per optimizer step, split over ranks and
``grad_accum_steps`` micro-batches; metrics are written by rank 0. SIGTERM makes every run
finish its step, save a checkpoint and return (``--resume`` continues it).

The run directory (``out_dir``) receives the resolved config (``config.yaml``), a JSONL
metrics log, atomic checkpoints (``checkpoints/step_XXXXXXX.pt`` and ``latest.pt``), the final
model (``final/model.safetensors`` + ``config.json``, loadable with
``LatentActionWorldModel.from_checkpoint``) and a loss-curve PNG. DeepSpeed runs write
DeepSpeed checkpoint directories (``checkpoints/step_XXXXXXX/`` and ``checkpoints/latest``)
and export consolidated fp32 weights to ``final/``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from fastlam import distributed as fdist
from fastlam import run_folder
from fastlam.config import ConfigError, to_dict
from fastlam.config_checks import validate_train_config
# The run configuration lives with every other (fastlam.configs); imported here under the names
# users imported from the trainer (fastlam.trainer.TrainConfig, DataConfig).
from fastlam.configs import DataConfig, TrainConfig
from fastlam.dashboard import Dashboard
from fastlam.data.manifest import check_manifest_files
from fastlam.data.shards import ShardStream, load_stream_state, merge_states, prune_stream_states, save_stream_state
from fastlam.data.state_store import StateStream, is_state_store
from fastlam.devices import autocast_for, resolve_device
from fastlam.diagnostics import TrainDiagnostics, progress_postfix
from fastlam.inputs import one_line
from fastlam.local_runner import LocalRunner, rng_state, set_rng_state
from fastlam.models import LatentActionWorldModel
from fastlam.models.vjepa2 import load_vjepa2_encoder
from fastlam.muon import muon_step_flops
from fastlam.run_summary import plot_losses, write_memory, write_summary
from fastlam.step_metrics import NonFiniteWindow
# The trainer's parts, under the names scripts and tests imported from here before the split.
from fastlam.train_data import ResumableBatches, build_dataset, check_state_store, iter_batches, use_dali

__all__ = ["DataConfig", "TrainConfig", "ResumableBatches", "build_dataset", "check_state_store", "iter_batches",
           "use_dali", "resolve_device", "autocast_for", "plot_losses", "LocalRunner", "check_run", "train"]


def check_run(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> tuple[str, dict | None]:
    """Every check that needs no model, data or process group, writing nothing: the config,
    the distributed set-up and ``out_dir`` against ``resume`` / ``overwrite``. Returns the
    distributed backend and the settled DeepSpeed config (None without DeepSpeed)."""
    validate_train_config(cfg)
    backend = fdist.resolve_backend(cfg.distributed)
    # Settle every configuration mismatch before a process group, a model or data exist.
    ds_config = fdist.preflight(cfg, backend, int(os.environ.get("WORLD_SIZE", "1") or 1),
                                resolve_device(cfg.device).type)
    # Data checks that can fail (a manifest that is no manifest, or whose videos moved) come
    # before out_dir is touched: a failed start leaves no run folder to clean up.
    check_manifest_files(cfg.data.source)
    run_folder.check_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite)
    return backend, ds_config


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg``; ``resume`` continues the run in ``cfg.out_dir``, ``overwrite`` moves a
    run found there aside (``<out_dir>.old-<time>``) first. Without either, an ``out_dir``
    that holds a run is a :class:`~fastlam.run_folder.RunFolderError`."""
    backend, ds_config = check_run(cfg, resume=resume, overwrite=overwrite)
    # Every rank checks the folder before the process group forms (so before rank 0 writes).
    moved = run_folder.prepare_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite,
                                       is_main=int(os.environ.get("RANK", "0") or 0) == 0)
    if moved is not None:
        print(f"--overwrite: moved the previous run in {cfg.out_dir} to {moved.resolve()}")
    if int(os.environ.get("RANK", "0") or 0) == 0:
        # First, before any slow set-up: where to look while the run goes on.
        print(f"run folder: {Path(cfg.out_dir).resolve()} ({'resuming' if resume else 'new run'})", flush=True)
    env = fdist.init_process_group(cfg.distributed, backend)
    try:
        summary = _train(cfg, env, resume, ds_config)
    except BaseException:
        fdist.shutdown(env, clean=False)
        raise
    fdist.shutdown(env)
    return summary


def _train(cfg: TrainConfig, env: fdist.DistEnv, resume: bool, ds_config: dict | None) -> dict:
    out = Path(cfg.out_dir).resolve()  # every path the run reports is absolute
    ckpt_dir = out / "checkpoints"
    device = resolve_device(cfg.device)
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
    torch.manual_seed(cfg.seed)

    try:
        dataset = build_dataset(cfg)  # fails early (empty folder, unreadable files) before any work
    except ValueError as e:
        raise ConfigError(f"data.source: {e}") from None
    if not use_dali(cfg, device) and hasattr(dataset, "__len__") and len(dataset) < cfg.batch_size:
        raise ConfigError(f"batch_size: expected at most the dataset's {len(dataset)} clips, got {cfg.batch_size}")
    model = LatentActionWorldModel(cfg.model)
    if cfg.model.encoder.checkpoint:
        try:
            load_vjepa2_encoder(model.encoder, cfg.model.encoder.checkpoint)
        except (ValueError, KeyError) as e:  # weights of another shape or layout: a config mistake
            raise ConfigError(f"model.encoder.checkpoint: {cfg.model.encoder.checkpoint} does not fit "
                              f"model.encoder ({type(e).__name__}: {one_line(e)})") from None
    model.predictor.checkpoint_blocks = cfg.activation_checkpointing
    model.check_video_range = False  # the loaders give [0, 1] by construction: no per-step host sync
    model.to(device).train()
    if isinstance(dataset, StateStream):
        if env.backend == "deepspeed":
            raise ConfigError("data.source: training from a state store runs with the local runner "
                              "(single process or DDP), not DeepSpeed yet")
        check_state_store(dataset, model, cfg)
    if env.world_size > 1:
        # Same weights on every rank (seeded above), but each rank's own noise stream.
        torch.manual_seed(cfg.seed + 1_000_003 * env.rank)
    if env.backend == "deepspeed":
        runner = fdist.DeepSpeedRunner(model, cfg, env, device, ds_config)
    else:
        runner = LocalRunner(model, cfg, env, device)

    step, position = 0, 0
    if resume and not run_folder.has_checkpoint(out):  # let through by check_out_dir: see there
        if env.is_main:
            print(f"--resume: no checkpoint in {ckpt_dir} was completed; starting from step 0")
    elif resume:
        state = runner.load(ckpt_dir)
        step, position = int(state["step"]), int(state["data_position"])
        set_rng_state(state["rng"])
        if step > cfg.steps:
            raise ConfigError(f"steps: the run in {out} is at step {step} already; pass steps=N with N >= {step} "
                              "to continue it")
        if env.is_main:
            print(f"resumed from {ckpt_dir / state['tag']} at step {step}")

    shards = isinstance(dataset, ShardStream)
    data_state = load_stream_state(ckpt_dir, step) if shards and resume else None
    metrics_file = out / "metrics.jsonl"
    if env.is_main:  # the config is valid and the model built: now the run folder may be written
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if resume:
            run_folder.truncate_metrics(metrics_file, step)
    batches = iter_batches(cfg, dataset, device, env, position, data_state)
    model_config = json.dumps(to_dict(cfg.model))

    def checkpoint(at_step: int) -> Path:
        # Data state, then the model checkpoint (which moves latest), then pruning: a kill at any
        # point leaves latest naming a step whose data state is on disk (fastlam.data.stream_state).
        if shards:  # collective: every rank's consumed clips, merged (any world size resumes)
            live = getattr(dataset, "loader_state", None)  # None before the first batch
            merged = merge_states(fdist.all_gather_objects(env, live() if live else data_state))
            if env.is_main and merged is not None:
                save_stream_state(ckpt_dir, at_step, merged)
        path = runner.save(ckpt_dir, at_step, position, {"rng": rng_state(), "model_config": model_config},
                           cfg.keep_checkpoints)
        if shards and env.is_main:
            prune_stream_states(ckpt_dir, cfg.keep_checkpoints, at_step)
        return path


    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and env.is_main), mininterval=2.0, file=sys.stdout)
    speed = fdist.Throughput(model, device, env.world_size)
    # Muon's Newton-Schulz FLOPs per optimizer step on each process (each orthogonalises every
    # matrix), reported beside the model's MFU, not inside it, and as a share of the model FLOPs
    # one process computes per step. (The DeepSpeed runner's optimizer lives in its engine: not counted.)
    muon_flops = muon_step_flops(getattr(runner, "opts", []))
    muon_share = muon_flops * env.world_size / (speed.flops_per_clip * cfg.batch_size)
    first, last, preempted, measured = None, None, False, False
    nonfinite = NonFiniteWindow()
    log = metrics_file.open("a") if env.is_main else None
    dash = Dashboard(cfg.logging, out, to_dict(cfg), enabled=env.is_main, log_every=cfg.log_every)
    diag = _diagnostics(cfg, env)
    try:
        with fdist.StopFlag() as stop:
            while step < cfg.steps:
                with speed.waiting():
                    video = next(batches)
                position += 1
                if not isinstance(dataset, StateStream):  # the dashboard's strips draw video
                    dash.remember_clip(video)
                last = runner.train_step(video.to(device, non_blocking=True))
                nonfinite.add(last.finite, step + 1)
                first = last if first is None else first
                step += 1
                speed.add(cfg.batch_size)
                stop_now = stop.requested
                # Step 1 is always logged: the run's first loss stays on record across resumes.
                at_log = step % cfg.log_every == 0 or step in (1, cfg.steps)
                at_ckpt = step % cfg.ckpt_every == 0 and step < cfg.steps
                if env.distributed:
                    # Ranks must agree on stopping at the same step: one collective per step
                    # (a single float; DDP runs synchronise in every backward anyway).
                    stop_now = fdist.all_reduce_sum(env, [float(stop_now)])[0] > 0
                if at_log or at_ckpt or stop_now:
                    nonfinite.check(step, ckpt_dir)  # the only host sync of a step, every log_every
                if (log is not None or env.distributed) and (at_log or stop_now):
                    sums, metrics, grad_norm = last.read()
                    if env.distributed:
                        # The global batch's mean losses for rank 0's log (every rank joins).
                        keys = sorted(metrics)
                        red = fdist.all_reduce_sum(env, sums + [metrics[k] for k in keys])
                        sums = [v / env.world_size for v in red[:3]]
                        metrics = {k: v / env.world_size for k, v in zip(keys, red[3:])}
                if log is not None and (at_log or stop_now):
                    rates = speed.window()
                    row = {"step": step, "loss": sums[0], "pred_loss": sums[1], "reg_loss": sums[2],
                           "grad_norm": grad_norm, **rates, "lr": runner.lrs}
                    if "mfu" in rates and muon_flops:  # steps/s x Muon FLOPs per step / one device's peak
                        row["muon_mfu"] = rates["clips_per_s"] / cfg.batch_size * muon_flops / speed.peak
                    row.update(metrics)
                    if hasattr(dataset, "bad_files"):
                        row["bad_files"] = len(dataset.bad_files)
                    if diag is not None:
                        with speed.paused():
                            row.update(diag(model, step))  # with the latent-collapse verdict
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    dash.scalars(step, row)
                    bar.set_postfix(loss=f"{sums[0]:.4f}", clips_s=f"{rates['clips_per_s']:.1f}",
                                    **(progress_postfix(row) if diag is not None else {}))
                bar.update(1)
                with speed.paused():
                    dash.strip(step, model)
                    if env.backend == "deepspeed" and not measured:
                        write_memory(out, env, runner)  # collective: every rank, once
                        measured = True
                if stop_now:
                    preempted = True
                    break
                if at_ckpt:
                    with speed.paused():
                        checkpoint(step)
    finally:
        if log is not None:
            log.close()
        dash.close()
    nonfinite.check(step, ckpt_dir)
    first_loss = first.read()[0][0] if first is not None else None
    last_loss = last.read()[0][0] if last is not None else None
    bar.close()
    final_ckpt = checkpoint(step)
    summary = {"steps": step, "first_loss": first_loss, "last_loss": last_loss, "checkpoint": str(final_ckpt),
               "model": None, "loss_curve": None, "device": str(device), "backend": env.backend,
               "world_size": env.world_size, "preempted": preempted, "muon_flops_per_step": muon_flops,
               "muon_flops_share": muon_share}
    if preempted:
        if env.is_main:
            print(f"\nstopped by signal at step {step}: checkpoint {final_ckpt} (continue with --resume)")
    else:
        final_dir = runner.export(ckpt_dir, Path(final_ckpt).name, out / "final")
        summary["model"] = str(final_dir) if final_dir else None
    if diag is not None:  # rank 0: whether z collapsed, with the numbers (None: nothing judged)
        summary["latent_collapse"] = diag.finish()
    if env.is_main:
        write_summary(summary, out, metrics_file, last_loss, dataset)
    return summary


def _diagnostics(cfg: TrainConfig, env: fdist.DistEnv):
    """The latent-use diagnostics (fastlam.diagnostics) on rank 0, or None: off when
    ``diagnostics_clips`` is 0 and under DeepSpeed (ZeRO-3 shards the weights rank 0 would need)."""
    if cfg.diagnostics_clips < 0:
        raise ConfigError(f"diagnostics_clips: expected an int >= 0, got {cfg.diagnostics_clips}")
    if not env.is_main or cfg.diagnostics_clips == 0 or env.backend == "deepspeed":
        return None
    if is_state_store(cfg.data.source):
        print("diagnostics off: a state store holds encoder states, not the video clips they need")
        return None

    try:
        return TrainDiagnostics.for_config(cfg, cfg.diagnostics_clips)
    except (ValueError, RuntimeError) as e:  # never stop a run for its diagnostics
        print(f"diagnostics off: no held-out clips from data.source ({type(e).__name__}: {e})")
        return None
