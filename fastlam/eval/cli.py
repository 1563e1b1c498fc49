"""``python -m fastlam.eval <task> ...``: the paper's evaluations from the command line.

Every task writes a JSON file with a fixed name (and PNGs where it draws) into ``--out``;
``report`` gathers them into one Markdown file. See the README's "Evaluations" section for
the whole sequence (generate -> train -> controller -> ac-baseline -> plan -> report).
"""
from __future__ import annotations

import argparse
import sys

from ..inputs import output_file, output_folder
from .ac_baseline import ACBaselineConfig
from .controller import ControllerTrainConfig
from .fitting import RandomBatchRecipe
# The runners live in fastlam.eval.tasks; imported under the names callers used from this module.
from .tasks import (
    run_ac_baseline,
    run_capacity,
    run_controller,
    run_generate,
    run_leakage,
    run_plan,
    run_report,
    run_sample,
    run_study,
    run_study_compare,
    run_study_report,
    run_sweep,
    run_transfer,
    run_visualize,
)


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


def step_list(text: str) -> tuple[int, ...]:
    """'300,1000,3000' -> (300, 1000, 3000): training steps, each >= 1."""
    try:
        steps = tuple(int(x) for x in text.split(","))
    except ValueError:
        steps = ()
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps >= 1 (e.g. 300,1000,3000), got {text!r}")
    return steps


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

    def fitting(p, recipe: RandomBatchRecipe, batch_of: str):
        # The flags of a task that fits a small model with the evaluations' recipe
        # (fastlam.eval.fitting): one meaning in every such task, defaults from the task's recipe.
        p.add_argument("--iterations", type=int, default=recipe.iterations,
                       help="training iterations (default: %(default)s)")
        p.add_argument("--batch-size", type=int, default=recipe.batch_size,
                       help=f"{batch_of} per iteration (default: %(default)s)")
        p.add_argument("--lr", type=float, default=recipe.lr, help="peak AdamW learning rate (default: %(default)s)")
        p.add_argument("--log-every", type=int, default=0,
                       help="print the training loss every N iterations (default: 0, never)")

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
    fitting(p, ControllerTrainConfig(), "(state, action, latent) pairs")
    p.add_argument("--warmup", type=int, default=ControllerTrainConfig.warmup,
                   help="iterations of linear learning-rate warm-up (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=ControllerTrainConfig.weight_decay,
                   help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--width", type=int, default=256,
                   help="controller width, and the hidden size of the actions-only MLP (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4,
                   help="attention heads of the controller; must divide --width (default: %(default)s)")
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
    fitting(p, ACBaselineConfig(), "windows")
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
    p.add_argument("--action-prior", type=float, default=0.0,
                   help="arm: plan with a Gaussian prior on the actions of this weight, the goal distance taken "
                        "relative to the zero plan's (fastlam.eval.planning.goal_cost_with_prior); 0 is the paper's "
                        "protocol (default: %(default)s)")
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
                        "OUT/study_WORLD.json, so one kind can be re-run alone; --kinds with no names runs only "
                        "the encoder probes (does the frozen encoder show the move?)")
    p.add_argument("--out", required=True, help="folder for study_WORLD.json (created if missing)")
    p.add_argument("--source", default="data/samples", help="background videos, or 'procedural' for textures")
    p.add_argument("--train-steps", type=int, default=None,
                   help="training steps per kind (default: 300, or the largest of --probe-at)")
    p.add_argument("--probe-at", type=step_list, default=(), metavar="STEPS",
                   help="comma-separated steps (e.g. 300,1000,3000) at which to probe one run per kind, trained to "
                        "the largest with its schedule set for that count; each row gets a 'curve'")
    p.add_argument("--train-clips", type=int, default=384, help="clips to train on (default: %(default)s)")
    p.add_argument("--test-clips", type=int, default=192,
                   help="fresh clips the probes are fitted and scored on (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per training step (default: %(default)s)")
    p.add_argument("--width", type=int, default=48, help="IDM and predictor width")
    p.add_argument("--depth", type=int, default=2, help="IDM and predictor depth")
    p.add_argument("--flicker", type=float, default=0.03, help="per-frame brightness flicker amplitude (0: none)")
    p.add_argument("--distractors", type=int, default=2, help="independently moving distractor squares")
    p.add_argument("--size", type=int, default=None,
                   help="frame size in pixels (default: the world preset's encoder setting)")
    p.add_argument("--patch", type=int, default=None, help="pixels encoder patch size (default: the preset's)")
    p.add_argument("--pool", type=int, default=None,
                   help="pixels encoder average pooling inside each patch, dividing --patch (default: the preset's)")
    p.add_argument("--token-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="pixels encoder standardising each frame of every token (model.encoder.token_norm; "
                        "default: the preset's)")
    p.add_argument("--set", dest="model_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the LAM's model config, repeatable (e.g. --set predictor.depth=3); "
                        "applied to every kind after the flags above")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.set_defaults(fn=run_study)

    p = sub.add_parser("study-report", help="study.md + capacity_vs_leakage.png from the study_*.json files")
    p.add_argument("--results", required=True,
                   help="folder holding the study_*.json files (the --out of 'study'); the PNG is written there")
    p.add_argument("--out", default=None, help="Markdown file to write (default: RESULTS/study.md)")
    p.set_defaults(fn=run_study_report, out_is="file")

    p = sub.add_parser("study-compare", help="one table and figure of the probed study runs under several folders, "
                                             "grouped by setting with the spread over seeds")
    p.add_argument("--results", required=True, nargs="+", metavar="DIR",
                   help="folders searched recursively for the study_*.json files of 'study --probe-at' runs")
    p.add_argument("--out", required=True, help="Markdown file to write; the figure goes beside it as .png")
    p.set_defaults(fn=run_study_compare, out_is="file")

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
