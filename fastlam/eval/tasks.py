"""The per-task runners of ``python -m fastlam.eval``: each takes the parsed arguments of its
sub-command (``fastlam.eval.cli`` builds the parser) and runs the evaluation through the
modules of ``fastlam.eval``, returning the path of what it wrote into ``--out``."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import load_config
from ..data.dataset import list_videos
from ..inputs import InputError
from ..models.decoder import StateDecoder
from ..nn.lpips import LPIPS
from ..trainer import TrainConfig
from . import action_data, controller, study, study_compare, study_report
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
    arm = args.env == "arm"
    if args.action_prior < 0 or (args.action_prior and not arm):
        raise ValueError(f"--action-prior: expected a weight >= 0, for 'plan arm' only; got {args.action_prior} "
                         f"for 'plan {args.env}'")
    model = load_lam(args.checkpoint, args.expect_regularizer)
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
            res[name] = plan_arm(world, st, b["actions"], pr, horizon=horizon, cfg=cem_cfg, seed=args.seed,
                                 action_prior=args.action_prior)
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
    # The thread count is process-wide: put it back, so a caller of main() in the same process
    # (a notebook, a test) keeps its own.
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_study(args)
    finally:
        torch.set_num_threads(previous)


def _run_study(args) -> Path:
    kinds = study.KINDS if args.kinds is None else tuple(args.kinds)  # --kinds alone: encoder probes only
    if args.probe_at and args.train_steps is not None and args.train_steps != max(args.probe_at):
        raise ValueError(f"--train-steps {args.train_steps}: with --probe-at the run trains to its largest step "
                         f"({max(args.probe_at)}); leave --train-steps out or make it {max(args.probe_at)}")
    train_steps = max(args.probe_at) if args.probe_at else (300 if args.train_steps is None else args.train_steps)
    if args.source != "procedural":
        # The library falls back to generated textures; from the command line a missing source
        # (a fresh clone before the samples are fetched) would silently give other numbers than
        # the README's, so it is refused before any work.
        try:
            list_videos(args.source)
        except ValueError as e:
            raise InputError(f"--source: {e}; fetch the bundled samples the README's figures use with "
                             f"'python -m fastlam.data.samples --dest data/samples', or pass --source procedural "
                             f"for generated textures") from None
    cfg = study.StudyConfig(world=args.world, kinds=kinds, train_steps=train_steps, probe_at=tuple(args.probe_at),
                      train_clips=args.train_clips, test_clips=args.test_clips, seed=args.seed,
                      batch_size=args.batch_size, width=args.width, depth=args.depth,
                      flicker=args.flicker, distractors=args.distractors, token_norm=args.token_norm,
                      size=args.size, patch=args.patch, pool=args.pool,
                      model_overrides=tuple(args.model_overrides),
                      source=None if args.source == "procedural" else args.source)
    return study.run_study(cfg, args.out)


def run_study_report(args) -> Path:
    return study_report.write_study_report(args.results, args.out)


def run_study_compare(args) -> Path:
    return study_compare.write_study_comparison(args.results, args.out)


def run_report(args) -> Path:
    return write_report(args.results, args.out)
