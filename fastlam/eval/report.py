"""One Markdown report from the evaluations' JSON files, tables in the paper's layout.

Every evaluation command writes a JSON file with a fixed name into its ``--out`` folder;
:func:`write_report` finds them under a results folder (recursively), puts one table per
protocol next to the paper's reference figures, and links the PNGs it finds.
"""
from __future__ import annotations

from pathlib import Path

from ..inputs import read_json, require_folder

PAPER = {
    "leakage": "paper (Kinetics, LPIPS): sparse-high 0.20 -> 0.50, noisy-high 0.21 -> 0.54, discrete-high 0.29 -> 0.68 (x2.0-2.5)",
    "transfer": "paper (Kinetics): sparse-high x1.30, noisy-high x1.34, discrete-high x1.07",
    "arm": "paper (DROID, 64 episodes): best LAM (noisy-high) 0.10, V-JEPA 2-AC 0.15, best action-labelled model 0.05",
    "nav": "paper (RECON): LAM noisy-high ATE 1.40 / RPE 0.40; NWM 1.13 / 0.35; NoMaD 1.93 / 0.52",
}


# The top-level entries each task's JSON file must have for its table (a file of that name
# from somewhere else is named in the error instead of failing deep inside the table code).
_KEYS = {"capacity.json": ("models",), "capacity_sweep.json": ("kind", "param", "points"),
         "leakage.json": ("latent_l1", "regularizer"), "transfer.json": ("latent_l1", "regularizer"),
         "controller.json": (), "plan_arm.json": (), "plan_nav.json": (), "sampling.json": ("regularizer", "stats")}


def _load(results: Path, name: str) -> list[tuple[Path, dict]]:
    expected = f"the {name} that python -m fastlam.eval writes (or move this file out of the results folder)"
    return [(p, read_json(p, "--results", expected, keys=_KEYS[name])) for p in sorted(results.rglob(name))]


def _fmt(x, digits=4) -> str:
    if x is None:
        return "-"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}g}"
    return str(x)


def _lpips_cells(lp: dict | None, a: str, b: str) -> str:
    if not lp:
        return "not computed | not computed | - |"
    return f"{_fmt(lp[a]['mean'])} | {_fmt(lp[b]['mean'])} | x{_fmt(lp['ratio'], 3)} |"


def _lpips_note(rows) -> str:
    if all(r.get("lpips") for _, r in rows):
        return "LPIPS: decoded predictions against the real frames (fastlam.nn.lpips, local weights)."
    return ("LPIPS not computed for some rows: it needs a pixel decoder (`--decoder`) and LPIPS weights on disk "
            "(`--lpips-backbone`, `--lpips-linear`); fastlam downloads nothing and never reports a number "
            "from random weights.")


def _two_condition_table(title: str, rows, rel, a: tuple[str, str], b: tuple[str, str], *, paper: str) -> list[str]:
    """The splice evaluations' table (leakage: no cut / cut; transfer: own / cycle): each
    condition's latent L1 and LPIPS and their ratios; ``a`` and ``b`` are (JSON key, column
    label)."""
    (ka, la), (kb, lb) = a, b
    lines = [f"## {title}", "",
             f"| model | regularizer | {la} (L1) | {lb} (L1) | ratio (L1) | {la} (LPIPS) | {lb} (LPIPS) | ratio (LPIPS) |",
             "|---|---|---|---|---|---|---|---|"]
    for path, r in rows:
        l1, lp = r["latent_l1"], r.get("lpips")
        lines.append(f"| `{rel(path.parent)}` | {r['regularizer']} | {_fmt(l1[ka]['mean'])} | "
                     f"{_fmt(l1[kb]['mean'])} | x{_fmt(l1['ratio'], 3)} | " + _lpips_cells(lp, ka, kb))
    return lines + ["", f"{paper}.", _lpips_note(rows), ""]


def _mean_sd(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.4f} +- {sd:.4f} [{min(xs):.4f}, {max(xs):.4f}]"


def _action_prior(r: dict) -> float:
    """The planner's action-prior weight of a ``plan_arm.json`` (0: the paper's protocol)."""
    return max((float(v.get("action_prior", 0.0)) for v in r.values() if isinstance(v, dict)), default=0.0)


def _plan_arm_over_runs(rows) -> list[str]:
    """With two or more arm planning runs (seeds of ``scripts/arm_planning.sh``): each method's
    mean Delta_xyz over runs, +- the sample sd over runs, with the range, and in how many runs
    it beats the zero plan. Only runs planned on the same test windows are comparable, so the
    rows are grouped by the zero plan's Delta_xyz (a property of the windows alone) and by the
    planner's action prior (runs planned another way are not seeds of one method)."""
    groups: dict[tuple, list[dict]] = {}
    for _, r in rows:
        if "zero_plan" in r:
            key = (round(r["zero_plan"]["delta_xyz"], 6), r["zero_plan"]["episodes"], _action_prior(r))
            groups.setdefault(key, []).append(r)
    lines = []
    for (zero, episodes, prior), runs in groups.items():
        if len(runs) < 2:
            continue
        planner = f", action prior {prior:g}" if prior else ""
        lines += [f"## Planning, arm, over {len(runs)} runs on the same {episodes} windows{planner}", "",
                  "| method | Delta_xyz (m): mean +- sd over runs [min, max] | runs below the zero plan |",
                  "|---|---|---|"]
        for key, label in (("lam_controller", "LAM + controller"), ("ac_baseline", "action-conditioned baseline")):
            xs = [r[key]["delta_xyz"] for r in runs if key in r]
            if xs:
                lines.append(f"| {label} | {_mean_sd(xs)} | {sum(x < zero for x in xs)} of {len(xs)} |")
        lines += [f"| zero action (reference) | {zero:.4f} | - |", ""]
    return lines


def write_report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` (default: inside ``results``) and return its path."""
    results = require_folder(results, "--results", "the folder holding the evaluations' --out folders")
    out = Path(out) if out else results / "report.md"
    rel = lambda p: Path(p).resolve().relative_to(out.parent.resolve()) if Path(p).resolve().is_relative_to(
        out.parent.resolve()) else Path(p).resolve()
    lines = ["# fastlam evaluation report", "",
             ("Errors are L1 distances in the frozen encoder's latent space (mean over tokens and channels) "
              "unless stated otherwise."), ""]
    found = False

    for path, r in _load(results, "capacity.json"):
        found = True
        lines += [f"## Capacity: one-step IDM prediction error (`{rel(path)}`)", "",
                  "| model | regularizer | one-step error | std |", "|---|---|---|---|"]
        for name, row in r["models"].items():
            e = row["one_step_error"]
            lines.append(f"| {name} | {row['regularizer']} | {_fmt(e['mean'])} | {_fmt(e['std'])} |")
        if "warning" in r:
            lines.append(f"\n*{r['warning']}*")
        lines.append("")
    for path, r in _load(results, "capacity_sweep.json"):
        found = True
        lines += [f"## Capacity curve: {r['kind']} (`{rel(path)}`)", "", f"| {r['param']} | one-step error |", "|---|---|"]
        for p in r["points"]:
            lines.append(f"| {_fmt(p[r['param']])} | {_fmt(p['one_step_error']['mean'])} |")
        for name, row in r.get("references", {}).items():
            lines.append(f"| {'unconstrained' if name == 'none' else name} (reference) | "
                         f"{_fmt(row['one_step_error']['mean'])} |")
        if r.get("png"):
            lines += ["", f"![capacity curve]({rel(r['png'])})"]
        lines.append("")
    for task, title, conditions in (("leakage", "Future leakage: scene-cut splice", (("no_cut", "no cut"), ("cut", "cut"))),
                                    ("transfer", "Cycle consistency / transfer: A -> B -> A",
                                     (("own", "A own"), ("cycle", "cycle")))):
        rows = _load(results, f"{task}.json")
        if rows:
            found = True
            lines += _two_condition_table(title, rows, rel, *conditions, paper=PAPER[task])
    for path, r in _load(results, "controller.json"):
        found = True
        lines += [f"## Controller: real action -> latent action (`{rel(path)}`)", "",
                  "| controller | held-out L2 | fraction of latent variance unexplained |", "|---|---|---|"]
        for name in ("state", "mlp"):
            if name in r:
                label = "state + action (paper)" if name == "state" else "actions-only MLP"
                lines.append(f"| {label} | {_fmt(r[name]['val_l2'])} | {_fmt(r[name]['val_fvu'], 3)} |")
        if r.get("png"):
            lines += ["", f"![controller training]({rel(r['png'])})"]
        lines.append("")
    for path, r in _load(results, "plan_arm.json"):
        found = True
        prior = _action_prior(r)
        planner = f", planned with action prior {prior:g} (not the paper's protocol)" if prior else ""
        lines += [f"## Planning, arm (DROID protocol{planner}) (`{rel(path)}`)", "",
                  "| method | Delta_xyz (m) | episodes | recorded actions cost < zero plan's | other recorded sequences costing less "
                  "| planned vs recorded move: corr x / y / z, scale |",
                  "|---|---|---|---|---|---|"]
        for key, label in (("lam_controller", "LAM + controller"), ("ac_baseline", "action-conditioned baseline (true actions)"),
                           ("oracle", "oracle: the simulator re-rendered (upper bound)")):
            if key in r:
                cl = r[key].get("cost_landscape")
                extra = (f"{cl['true_below_zero']:.0%} | {cl['random_below_true']:.0%}" if cl else "- | -")
                al = r[key].get("alignment")
                align = (" / ".join(_fmt(c, 2) for c in al["corr_xyz"]) + f", x{_fmt(al['scale'], 2)}" if al else "-")
                lines.append(f"| {label} | {_fmt(r[key]['delta_xyz'])} | {r[key]['episodes']} | {extra} | {align} |")
        if "zero_plan" in r:
            lines.append(f"| zero action (reference) | {_fmt(r['zero_plan']['delta_xyz'])} | {r['zero_plan']['episodes']} "
                         "| - | - | - |")
        lines += ["", "The last two columns ask whether the world model's goal cost points at the recorded actions "
                  "(`cost_landscape`): CEM can only beat the zero plan where the recorded actions cost less than it. "
                  "The last: the planned 3-step moves against the recorded ones over windows (`plan_alignment`): "
                  "correlation per axis, and the least-squares scale of the plan (below 1: the right direction, "
                  "too far: a world model that under-responds to actions).",
                  "", PAPER["arm"] + ".", ""]
    lines += _plan_arm_over_runs(_load(results, "plan_arm.json"))
    for path, r in _load(results, "plan_nav.json"):
        found = True
        lines += [f"## Planning, navigation (RECON protocol) (`{rel(path)}`)", "", "| method | ATE | RPE |", "|---|---|---|"]
        for key, label in (("lam_controller", "LAM + controller"), ("ac_baseline", "action-conditioned baseline"),
                           ("mean_prior", "mean straight-line move (reference)")):
            if key in r:
                lines.append(f"| {label} | {_fmt(r[key]['ate'])} | {_fmt(r[key]['rpe'])} |")
        lines += ["", PAPER["nav"] + ".", ""]
    for path, r in _load(results, "sampling.json"):
        found = True
        lines += [f"## Sampled latent actions ({r['regularizer']}) (`{rel(path)}`)", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in r["stats"].items()]
        if r.get("png"):
            lines += ["", f"![sampled vs inferred]({rel(r['png'])})"]
        lines.append("")
    if not found:
        raise FileNotFoundError(f"--results: no evaluation JSON files under {results}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
