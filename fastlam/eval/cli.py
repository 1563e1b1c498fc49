"""``python -m fastlam.eval <task> ...``: the paper's evaluations from the command line.

Every task writes a JSON file with a fixed name (and PNGs where it draws) into ``--out``;
``report`` gathers them into one Markdown file. See the README's "Evaluations" section for
the whole sequence (generate -> train -> controller -> ac-baseline -> plan -> report).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..config import load_config
from ..inputs import output_file, output_folder
from ..models.decoder import StateDecoder
from ..nn.lpips import LPIPS
from ..trainer import TrainConfig
from . import action_data, controller, study
from .action_data import integrate_actions
from .capacity import PAPER_GRIDS, capacity_sweep, compare_capacity
from .common import encode_batched, load_clips, load_lam, pyplot, save_figure, write_json
from .leakage import future_leakage
from .planning import (
    ACBaselineConfig,
    ACRollout,
    CEMConfig,
    LatentRollout,
    SimulatorRollout,
    StandardizedACPredictor,
    ate_rpe,
    cost_landscape,
    delta_xyz,
    plan_arm,
    plan_nav,
    relative_poses,
    train_ac_baseline,
)
from .pybullet_arm import generate_pybullet_arm
from .report import write_report
from .sampling import embedding_plot, sample_latents, sampling_stats
from .transfer import cycle_transfer
from .visualize import visualize


def _traj(model, data: str, steps: int, stride: int | None = None):
    ds = action_data.TrajectoryDataset(data, steps=steps, tubelet=model.cfg.encoder.tubelet,
                                       size=model.cfg.image_size, stride=stride)
    return ds


def _split(ds, val_frac: float = 0.2):
    """Held-out episodes: the last ``val_frac`` of them (at least one) never train anything."""
    n_ep = len(ds.episodes)
    n_val = max(1, round(n_ep * val_frac)) if n_ep > 1 else 0
    cut = n_ep - n_val
    train = [i for i, (e, _) in enumerate(ds.index) if e < cut]
    val = [i for i, (e, _) in enumerate(ds.index) if e >= cut] or train
    return train, val


# ---- tasks --------------------------------------------------------------------------------
def run_generate(args) -> Path:
    fn = {"pybullet-arm": generate_pybullet_arm, "arm": action_data.generate_arm,
          "nav": action_data.generate_nav}[args.env]
    root = fn(args.out, episodes=args.episodes, steps=args.steps, size=args.size, seed=args.seed,
              mp4_fps=None if args.no_mp4 else 4.0)
    print(f"wrote {args.episodes} {args.env} episodes to {root}")
    return root


def run_capacity(args) -> Path:
    models = {Path(c).name if Path(c).name != "final" else Path(c).parent.name: load_lam(c, args.expect_regularizer)
              for c in args.checkpoint}
    first = next(iter(models.values()))
    video = load_clips(args.data, first.cfg, args.clips, seed=args.seed)
    res = compare_capacity(models, video)
    res["checkpoints"] = args.checkpoint
    return write_json(Path(args.out) / "capacity.json", res)


def run_sweep(args) -> Path:
    cfg = load_config(TrainConfig, args.config, args.overrides)
    values = args.values or PAPER_GRIDS[args.kind]
    video = load_clips(args.data or cfg.data.source, cfg.model, args.clips, seed=args.seed)
    res = capacity_sweep(cfg, args.kind, values, args.out, video)
    print(f"capacity curve: {res['png']}")
    return Path(args.out) / "capacity_sweep.json"


def _pixel_metric(args, model):
    """(decoder, lpips_fn) from --decoder / --lpips-*; (None, None) when not both are given."""
    if not args.decoder or not args.lpips_backbone:
        if args.decoder or args.lpips_backbone:
            print("LPIPS not computed: it needs both --decoder and --lpips-backbone")
        return None, None
    decoder = _load_decoder(args.decoder, model)
    lp = LPIPS.from_files(args.lpips_backbone, args.lpips_linear, args.lpips_net)
    return decoder.frames, lp.video


def _load_decoder(path: str, model):
    decoder = StateDecoder.from_checkpoint(path)
    enc = model.cfg.encoder
    if (decoder.cfg.state_dim, decoder.cfg.patch_size, decoder.cfg.image_size) != (
            model.encoder.width, enc.patch_size, model.cfg.image_size):
        raise ValueError(f"--decoder: {path} decodes {decoder.cfg.state_dim}-d states of {decoder.cfg.image_size} px "
                         f"(patch {decoder.cfg.patch_size}); the LAM's encoder gives {model.encoder.width}-d states of "
                         f"{model.cfg.image_size} px (patch {enc.patch_size}): train a decoder for this LAM")
    return decoder


def _decoded_ratio_task(args, measure, json_name: str, labels: tuple[str, str], check_clips=None) -> Path:
    """leakage and transfer: ``measure(model, video, decoder=, lpips_fn=)`` on held-out clips, its
    latent-L1 ratio (and, given --decoder and --lpips-backbone, its LPIPS ratio) printed after
    ``labels`` and the result written to ``json_name``. ``check_clips(video)`` runs before the
    decoder and LPIPS weights are loaded, so too few clips fail first."""
    model = load_lam(args.checkpoint, args.expect_regularizer)
    video = load_clips(args.data, model.cfg, args.clips, seed=args.seed)
    if check_clips is not None:
        check_clips(video)
    decoder, lpips_fn = _pixel_metric(args, model)
    res = measure(model, video, decoder=decoder, lpips_fn=lpips_fn)
    res["checkpoint"] = args.checkpoint
    print(f"{labels[0]} x{res['latent_l1']['ratio']:.3f}")
    if res.get("lpips"):
        print(f"{labels[1]} x{res['lpips']['ratio']:.3f}")
    return write_json(Path(args.out) / json_name, res)


def run_leakage(args) -> Path:
    def two_clips(video):
        if video.shape[0] < 2:
            raise ValueError("--clips: the splice needs at least 2 clips (the second scene comes from another clip)")

    def splice_leakage(model, video, **pixel_metric):
        return future_leakage(model, video, video.roll(1, dims=0), cut_step=args.cut_step, **pixel_metric)

    return _decoded_ratio_task(args, splice_leakage, "leakage.json",
                               ("leakage ratio (latent L1):", "leakage ratio (LPIPS):    "), check_clips=two_clips)


def run_transfer(args) -> Path:
    return _decoded_ratio_task(args, cycle_transfer, "transfer.json", ("cycle / own error:", "cycle / own (LPIPS):"))


def run_visualize(args) -> Path:
    model = load_lam(args.checkpoint, args.expect_regularizer)
    decoder = _load_decoder(args.decoder, model)
    video = load_clips(args.data, model.cfg, args.clips, seed=args.seed)
    files = visualize(model, decoder, video, args.out, samples=args.samples, seed=args.seed)
    files["checkpoint"], files["decoder"] = args.checkpoint, args.decoder
    print(f"rollouts: {files['rollouts_sheet']}")
    if "transfer" in files:
        print(f"transfer: {files['transfer']['png']}")
    return write_json(Path(args.out) / "visualize.json", files)


def controller_data(model, data: str, steps: int | None = None):
    """(train, val) pairs (states, actions, IDM latents) from an action-labelled dataset."""
    if model.idm is None:
        raise ValueError("checkpoint: a 'deterministic' model has no latent actions to control")
    steps = steps or model.cfg.frames // model.cfg.encoder.tubelet
    ds = _traj(model, data, steps)
    if ds.action_dim is None:
        raise ValueError(f"--data: {data} has no actions.npy; a controller run needs action-labelled trajectories")
    tr, va = _split(ds)
    out = []
    for idx in (tr, va):
        b = ds.batch(idx)
        states = encode_batched(model, b["video"])
        z = model.infer_actions(states=states)
        out.append(controller.controller_pairs(states, b["actions"], z))
    return out


def run_controller(args) -> Path:
    torch.manual_seed(args.seed)
    model = load_lam(args.checkpoint, args.expect_regularizer)
    (s_tr, a_tr, z_tr), (s_va, a_va, z_va) = controller_data(model, args.data)
    tcfg = controller.ControllerTrainConfig(iterations=args.iterations, warmup=args.warmup,
                                            batch_size=args.batch_size, lr=args.lr,
                                            weight_decay=args.weight_decay, seed=args.seed)
    var = float(z_va.var(0, unbiased=False).sum())
    res, curves = {"pairs_train": int(s_tr.shape[0]), "pairs_val": int(s_va.shape[0]),
                   "latent_variance": var, "train": vars(tcfg)}, {}
    for kind in ("state", "mlp"):
        ccfg = controller.ControllerConfig(kind=kind, state_dim=s_tr.shape[-1], action_dim=a_tr.shape[-1],
                                           latent_dim=z_tr.shape[-1], width=args.width, heads=args.heads,
                                           mlp_hidden=args.width)
        ctrl = controller.build_controller(ccfg)
        curves[kind] = controller.train_controller(ctrl, s_tr, a_tr, z_tr, tcfg, log_every=args.log_every)
        err = controller.controller_error(ctrl, s_va, a_va, z_va)
        folder = Path(args.out) / ("controller" if kind == "state" else "controller_mlp")
        res[kind] = {"val_l2": err, "val_fvu": err / max(var, 1e-12), "train_l2_last": curves[kind][-1],
                     "dir": str(controller.save_controller(ctrl, folder))}
        print(f"controller {kind}: held-out L2 {err:.4f} (fraction of variance unexplained {err / max(var, 1e-12):.3f})")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, c in curves.items():
        ax.plot(c, label="state + action" if kind == "state" else "actions only")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("L2 to IDM latents")
    ax.legend()
    fig.tight_layout()
    res["png"] = str(save_figure(fig, Path(args.out) / "controller_loss.png"))
    res["checkpoint"] = args.checkpoint
    return write_json(Path(args.out) / "controller.json", res)


def run_ac_baseline(args) -> Path:
    model = load_lam(args.checkpoint)
    steps = args.steps or model.cfg.frames // model.cfg.encoder.tubelet
    ds = _traj(model, args.data, steps)
    kind = ds.kind or ("recon" if ds.action_dim == 3 else "droid")
    tr, _ = _split(ds)
    b = ds.batch(tr)
    if "proprio" not in b:
        raise ValueError(f"--data: {args.data} has no proprio.npy; the action-conditioned baseline needs it")
    states = encode_batched(model, b["video"])
    cfg = ACBaselineConfig(width=args.width, depth=args.depth, heads=args.heads, iterations=args.iterations,
                           batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    ac, losses = train_ac_baseline(states, b["actions"], b["proprio"], cfg, kind=kind, log_every=args.log_every)
    d = ac.save_pretrained(Path(args.out) / "ac_baseline")
    print(f"AC baseline: L1 {losses[0]:.4f} -> {losses[-1]:.4f}; saved to {d}")
    return write_json(Path(args.out) / "ac_baseline.json",
                      {"dir": str(d), "kind": kind, "loss_first": losses[0], "loss_last": losses[-1],
                       "config": vars(cfg), "checkpoint": args.checkpoint})


def run_plan(args) -> Path:
    model = load_lam(args.checkpoint, args.expect_regularizer)
    arm = args.env == "arm"
    horizon = args.horizon or (3 if arm else 8)
    ds = _traj(model, args.data, horizon + 1, stride=horizon + 1)
    if ds.action_dim is None:
        raise ValueError(f"--data: {args.data} has no actions.npy; planning is scored against recorded actions")
    _, val = _split(ds)
    val = (val if args.split == "val" else list(range(len(ds))))[: args.episodes]
    b = ds.batch(val)
    states = encode_batched(model, b["video"])
    defaults = (300, 10, 15) if arm else (120, 10, 1)
    cem_cfg = CEMConfig(samples=args.samples or defaults[0], top_k=args.top_k or defaults[1],
                        iterations=args.iterations or defaults[2])
    proprio = b.get("proprio")
    res = {"checkpoint": args.checkpoint, "data": args.data}
    worlds = {}
    if args.controller:
        ctrl = controller.load_controller(args.controller)
        if ctrl.cfg.action_dim != ds.action_dim:
            raise ValueError(f"--controller: trained for {ctrl.cfg.action_dim}-d actions, the data has {ds.action_dim}-d")
        worlds["lam_controller"] = (LatentRollout(model, ctrl), states, None)
    if args.ac_baseline:
        ac = StandardizedACPredictor.from_pretrained(args.ac_baseline)
        if ac.cfg.action_dim != ds.action_dim:
            raise ValueError(f"--ac-baseline: trained for {ac.cfg.action_dim}-d actions, the data has {ds.action_dim}-d")
        if proprio is None:
            raise ValueError(f"--data: {args.data} has no proprio.npy, which the action-conditioned baseline needs")
        worlds["ac_baseline"] = (ACRollout(ac, "droid" if arm else "recon"), states,
                                 proprio if arm else relative_poses(proprio))
    if args.oracle:
        worlds["oracle"] = (_oracle_worlds(model, args.data, ds, val, b, arm), states, proprio)
    if not worlds:
        raise ValueError("plan: pass --controller (LAM + controller), --ac-baseline and/or --oracle")
    for name, (world, st, pr) in worlds.items():
        if arm:
            res[name] = plan_arm(world, st, b["actions"], pr, horizon=horizon, cfg=cem_cfg, seed=args.seed)
            cl = res[name]["cost_landscape"] = cost_landscape(world, st, b["actions"], pr, horizon=horizon,
                                                              seed=args.seed)
            print(f"{name}: Delta_xyz {res[name]['delta_xyz']:.4f} m over {res[name]['episodes']} episodes; recorded "
                  f"actions cost less than zero in {cl['true_below_zero']:.0%} of windows, "
                  f"{cl['random_below_true']:.0%} of other recorded sequences cost less than them")
        else:
            res[name] = plan_nav(world, st, b["actions"], pr, steps=horizon, cfg=cem_cfg, seed=args.seed)
            print(f"{name}: ATE {res[name]['ate']:.3f}  RPE {res[name]['rpe']:.3f}")
    if arm:
        zero = delta_xyz(torch.zeros_like(b["actions"][:, :horizon]), b["actions"][:, :horizon])
        res["zero_plan"] = {"delta_xyz": float(zero.mean()), "episodes": int(zero.numel())}
    else:
        gt = b["actions"][:, :horizon]
        totals = integrate_actions(torch.zeros(gt.shape[0], 3), gt)[:, -1].mean(0)
        plan = (totals / horizon).expand(horizon, 3)
        ate, rpe = ate_rpe(integrate_actions(torch.zeros(gt.shape[0], 3), plan.expand(gt.shape[0], -1, -1)),
                           integrate_actions(torch.zeros(gt.shape[0], 3), gt))
        res["mean_prior"] = {"ate": float(ate.mean()), "rpe": float(rpe.mean())}
    return write_json(Path(args.out) / ("plan_arm.json" if arm else "plan_nav.json"), res)


def _oracle_worlds(model, data: str, ds, windows: list[int], batch: dict, arm: bool) -> list:
    """One :class:`SimulatorRollout` per planning window: the window's own scene rendered from
    its recorded start state and encoded by the LAM's frozen encoder."""
    if not arm:
        raise ValueError("--oracle: only the simulated arm ('plan arm') can be re-rendered")
    if "proprio" not in batch:
        raise ValueError(f"--data: {data} has no proprio.npy, which the oracle renders from")
    worlds = []
    for k, i in enumerate(windows):
        r = action_data.arm_renderer(data, ds.episodes[ds.index[i][0]]["path"])
        if r.size != model.cfg.image_size:
            raise ValueError(f"--oracle: the data was rendered at {r.size} px, the LAM's encoder takes "
                             f"{model.cfg.image_size} px")
        worlds.append(SimulatorRollout(r.render, model.encode, batch["video"][k, :, 0],
                                       tubelet=model.cfg.encoder.tubelet))
    return worlds


def run_sample(args) -> Path:
    model = load_lam(args.checkpoint, args.expect_regularizer)
    video = load_clips(args.data, model.cfg, args.clips, seed=args.seed)
    inferred = model.infer_actions(states=encode_batched(model, video)).flatten(0, 1)
    g = torch.Generator().manual_seed(args.seed)
    sampled = sample_latents(model, args.samples, generator=g, langevin_iterations=args.langevin_iterations)
    png = embedding_plot(sampled, inferred, Path(args.out) / "latent_embedding.png",
                         title=f"{model.cfg.regularizer.kind}: sampled vs inferred latent actions")
    return write_json(Path(args.out) / "sampling.json",
                      {"regularizer": model.cfg.regularizer.kind, "samples": args.samples,
                       "inferred": int(inferred.shape[0]), "stats": sampling_stats(sampled, inferred),
                       "png": str(png), "checkpoint": args.checkpoint})


def run_study(args) -> Path:
    torch.set_num_threads(args.threads)
    cfg = study.StudyConfig(world=args.world, kinds=tuple(args.kinds or study.KINDS), train_steps=args.train_steps,
                      train_clips=args.train_clips, test_clips=args.test_clips, seed=args.seed,
                      batch_size=args.batch_size, width=args.width, depth=args.depth,
                      flicker=args.flicker, distractors=args.distractors, token_norm=args.token_norm,
                      source=None if args.source == "procedural" else args.source)
    return study.run_study(cfg, args.out)


def run_study_report(args) -> Path:
    return study.write_study_report(args.results, args.out)


def run_report(args) -> Path:
    return write_report(args.results, args.out)


# ---- parser -------------------------------------------------------------------------------
LAM_HELP = ("LAM to evaluate: a training run's final/ folder (model.safetensors + config.json) or a training "
            "checkpoint .pt (e.g. RUN/checkpoints/latest.pt)")
DATA_HELP = ("held-out video: a folder of videos, a text file listing video paths (one per line), one video "
             "file, or 'synthetic' for generated sprite clips")
TRAJ_HELP = ("action-labelled episodes: the folder written by 'generate arm' / 'generate nav' (episode_NNNNN/ "
             "subfolders with frames, actions.npy and proprio.npy)")
OUT_HELP = "folder to write the results into (created if missing)"
SEED_HELP = "random seed (default: %(default)s)"
KIND_HELP = ("refuse a checkpoint trained with another regularizer: none, deterministic, sparse, noisy or "
             "discrete (default: accept any)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fastlam.eval",
        description="The paper's evaluations of a latent action world model. Every task writes a JSON file with "
                    "a fixed name (and PNGs where it draws) into --out; 'report' gathers them into one Markdown "
                    "file. The README's Evaluations section gives the whole sequence (generate, train, "
                    "controller, ac-baseline, plan, report).")
    sub = ap.add_subparsers(dest="task", required=True, metavar="TASK",
                            help="the evaluation to run (python -m fastlam.eval TASK --help for its options)")

    def common(p, checkpoint=True, data=True, out=True):
        if checkpoint:
            p.add_argument("--checkpoint", required=True, help=LAM_HELP)
            p.add_argument("--expect-regularizer", default=None, help=KIND_HELP)
        if data:
            p.add_argument("--data", required=True, help=DATA_HELP)
        if out:
            p.add_argument("--out", required=True, help=OUT_HELP)
        p.add_argument("--seed", type=int, default=0, help=SEED_HELP)

    p = sub.add_parser("generate", help="render simulated action-labelled episodes (no download)")
    p.add_argument("env", choices=("arm", "nav", "pybullet-arm"),
                   help="arm / nav: fastlam's own CPU renderers; pybullet-arm: KUKA iiwa (needs pybullet)")
    p.add_argument("--out", required=True,
                   help="folder to write the episodes into (created if missing): one episode_NNNNN/ subfolder per "
                        "episode and meta.json")
    p.add_argument("--episodes", type=int, default=32, help="number of episodes to render (default: %(default)s)")
    p.add_argument("--steps", type=int, default=24,
                   help="control steps (actions) per episode; each episode has steps + 1 frames "
                        "(default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for the scenes and the actions (default: %(default)s)")
    p.add_argument("--no-mp4", action="store_true", help="write only frames.npy (no frames.mp4 for the trainer)")
    p.set_defaults(fn=run_generate)

    p = sub.add_parser("capacity", help="one-step IDM prediction error of one or more checkpoints")
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="one or more LAMs to compare (each a run's final/ folder or a training checkpoint .pt); "
                        "their errors are comparable only when they share the frozen encoder")
    p.add_argument("--expect-regularizer", default=None, help=KIND_HELP + "; applies to every checkpoint")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, help=OUT_HELP + "; writes capacity.json")
    p.add_argument("--clips", type=int, default=16, help="held-out clips to measure on (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed choosing the clips (default: %(default)s, which training does not use)")
    p.set_defaults(fn=run_capacity)

    p = sub.add_parser("sweep", help="train one model per regularizer strength and draw the capacity curve")
    p.add_argument("--config", required=True, help="training YAML shared by every run (see configs/)")
    p.add_argument("--kind", required=True, choices=("sparse", "noisy", "discrete"),
                   help="the regularizer whose strength is swept")
    p.add_argument("--values", type=float, nargs="*", default=None, help="strengths (default: the paper's grid)")
    p.add_argument("--data", default=None, help="held-out clips (default: the config's data.source)")
    p.add_argument("--clips", type=int, default=16, help="held-out clips to measure on (default: %(default)s)")
    p.add_argument("--out", required=True,
                   help="folder for one training run per strength, capacity_sweep.json and capacity_curve.png")
    p.add_argument("--seed", type=int, default=1, help="seed choosing the held-out clips (default: %(default)s)")
    p.add_argument("overrides", nargs="*", help="key.sub=value training overrides for every run")
    p.set_defaults(fn=run_sweep)

    for name, fn, help_ in (("leakage", run_leakage, "scene-cut splice: error with / without the cut"),
                            ("transfer", run_transfer, "A -> B -> A cycle of latent actions")):
        p = sub.add_parser(name, help=help_)
        common(p)
        p.add_argument("--clips", type=int, default=16,
                       help="held-out clips (default: %(default)s)" + ("; at least 2" if name == "leakage" else ""))
        if name == "leakage":
            p.add_argument("--cut-step", type=int, default=None, help="time step of the cut (default: the middle)")
        p.add_argument("--decoder", default=None,
                       help="pixel decoder (python -m fastlam.train_decoder's final/ folder) for LPIPS; needs "
                            "--lpips-backbone too")
        p.add_argument("--lpips-backbone", default=None,
                       help="local torchvision AlexNet/VGG16 state dict (.pth) for LPIPS (nothing is downloaded)")
        p.add_argument("--lpips-linear", default=None, help="local lpips v0.1 per-layer weights (alex.pth / vgg.pth)")
        p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"),
                       help="LPIPS backbone architecture, matching --lpips-backbone (default: %(default)s)")
        p.set_defaults(fn=fn)

    p = sub.add_parser("visualize", help="decoded rollouts, action transfer and sampled actions as MP4/GIF/PNG")
    common(p)
    p.add_argument("--decoder", required=True, help="pixel decoder: python -m fastlam.train_decoder's final/ folder")
    p.add_argument("--clips", type=int, default=4, help="held-out clips (the first two also make the transfer strip)")
    p.add_argument("--samples", type=int, default=4, help="rollouts with sampled latent actions (0: none)")
    p.set_defaults(fn=run_visualize)

    p = sub.add_parser("controller", help="train the controller and the actions-only baseline against IDM latents")
    common(p, data=False)
    p.add_argument("--data", required=True, help=TRAJ_HELP + "; the last 20%% of the episodes are held out")
    p.add_argument("--iterations", type=int, default=3000, help="training iterations (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=300,
                   help="iterations of linear learning-rate warm-up (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="(state, action, latent) pairs per iteration (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.04, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--width", type=int, default=256,
                   help="controller width, and the hidden size of the actions-only MLP (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4,
                   help="attention heads of the controller; must divide --width (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=0,
                   help="print the training loss every N iterations (default: 0, never)")
    p.set_defaults(fn=run_controller)

    p = sub.add_parser("ac-baseline", help="train the action-conditioned (V-JEPA 2-AC style) baseline on true actions")
    p.add_argument("--checkpoint", required=True, help="LAM whose frozen encoder produces the states")
    p.add_argument("--data", required=True, help=TRAJ_HELP + " (needs proprio.npy)")
    p.add_argument("--out", required=True, help=OUT_HELP + "; the baseline goes to OUT/ac_baseline/")
    p.add_argument("--steps", type=int, default=None,
                   help="time steps per training window (default: the LAM's frames / tubelet)")
    p.add_argument("--width", type=int, default=96, help="predictor width (default: %(default)s)")
    p.add_argument("--depth", type=int, default=2, help="predictor blocks (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4,
                   help="attention heads; must divide --width (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per iteration (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=0,
                   help="print the training loss every N iterations (default: 0, never)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.set_defaults(fn=run_ac_baseline)

    p = sub.add_parser("plan", help="CEM planning: arm (Delta_xyz) or navigation (ATE / RPE)")
    p.add_argument("env", choices=("arm", "nav"),
                   help="arm: reach the goal state, scored by Delta_xyz in metres; nav: reach the goal view, "
                        "scored by ATE / RPE")
    common(p, data=False)
    p.add_argument("--data", required=True, help=TRAJ_HELP)
    p.add_argument("--controller", default=None, help="controller folder from the 'controller' task")
    p.add_argument("--ac-baseline", default=None, help="ac_baseline folder from the 'ac-baseline' task")
    p.add_argument("--episodes", type=int, default=64, help="planning problems (windows of horizon + 1 steps)")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="val: the held-out last 20%% of the episodes (never seen by controller / baseline "
                        "training); all: every episode (for a separately generated test set)")
    p.add_argument("--oracle", action="store_true",
                   help="arm: also plan with the true simulator re-rendered and encoded by the frozen encoder "
                        "(data from 'generate arm'): Delta_xyz near 0 shows that the planner and the cost work")
    p.add_argument("--horizon", type=int, default=None, help="planning horizon in steps (default: arm 3, nav 8)")
    p.add_argument("--samples", type=int, default=None,
                   help="CEM action sequences sampled per iteration (default: arm 300, nav 120)")
    p.add_argument("--top-k", type=int, default=None,
                   help="CEM elite sequences kept per iteration (default: 10)")
    p.add_argument("--iterations", type=int, default=None, help="CEM iterations (default: arm 15, nav 1)")
    p.set_defaults(fn=run_plan)

    p = sub.add_parser("sample", help="sample latent actions from the model's prior; 2-D plot vs inferred ones")
    common(p)
    p.add_argument("--clips", type=int, default=16,
                   help="held-out clips whose inferred latents are plotted (default: %(default)s)")
    p.add_argument("--samples", type=int, default=256, help="latent actions to sample (default: %(default)s)")
    p.add_argument("--langevin-iterations", type=int, default=500,
                   help="Langevin steps per sample for the sparse prior (default: %(default)s)")
    p.set_defaults(fn=run_sample)

    p = sub.add_parser("study", help="small-scale study: train each regularizer on a held-out world, probe the true action")
    p.add_argument("--world", default="pan", choices=("pan", "agent", "agent_multi"),
                   help="the procedural world whose true action is probed (default: %(default)s)")
    p.add_argument("--kinds", nargs="*", default=None,
                   help="regularizer kinds (default: deterministic none noisy sparse discrete); rows merge into "
                        "OUT/study_WORLD.json, so one kind can be re-run alone")
    p.add_argument("--out", required=True, help="folder for study_WORLD.json (created if missing)")
    p.add_argument("--source", default="data/samples", help="background videos, or 'procedural' for textures")
    p.add_argument("--train-steps", type=int, default=300, help="training steps per kind (default: %(default)s)")
    p.add_argument("--train-clips", type=int, default=384, help="clips to train on (default: %(default)s)")
    p.add_argument("--test-clips", type=int, default=192,
                   help="fresh clips the probes are fitted and scored on (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per training step (default: %(default)s)")
    p.add_argument("--width", type=int, default=48, help="IDM and predictor width")
    p.add_argument("--depth", type=int, default=2, help="IDM and predictor depth")
    p.add_argument("--flicker", type=float, default=0.03, help="per-frame brightness flicker amplitude (0: none)")
    p.add_argument("--distractors", type=int, default=2, help="independently moving distractor squares")
    p.add_argument("--token-norm", action="store_true",
                   help="pixels encoder standardising each frame of every token (model.encoder.token_norm)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.set_defaults(fn=run_study)

    p = sub.add_parser("study-report", help="study.md + capacity_vs_leakage.png from the study_*.json files")
    p.add_argument("--results", required=True,
                   help="folder holding the study_*.json files (the --out of 'study'); the PNG is written there")
    p.add_argument("--out", default=None, help="Markdown file to write (default: RESULTS/study.md)")
    p.set_defaults(fn=run_study_report, out_is="file")

    p = sub.add_parser("report", help="write report.md from the JSON files under a results folder")
    p.add_argument("--results", required=True,
                   help="folder searched recursively for the tasks' JSON files (capacity.json, leakage.json, ...)")
    p.add_argument("--out", default=None, help="report path (default: RESULTS/report.md)")
    p.set_defaults(fn=run_report, out_is="file")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        if args.out is not None:  # before any work: an --out that cannot be written fails now
            (output_file if getattr(args, "out_is", "folder") == "file" else output_folder)(args.out, "--out")
        path = args.fn(args)
    # InputError, CheckpointError and ConfigError are ValueErrors: a bad file or setting is one line.
    except (ValueError, FileNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
