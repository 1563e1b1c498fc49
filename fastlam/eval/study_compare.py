"""Curves of several study runs side by side: ``python -m fastlam.eval study-compare``.

A ``study --probe-at`` run is one *setting* (world, regularizer kind, its ``--set`` overrides
and the step count its schedule was set for) at one seed, in its own ``--out`` folder; issue 28
asks for every option's curve at 30,000 steps, so the question "did any option reach the target,
and where" spans many folders. This gathers the ``study_*.json`` files under the given folders
(recursively: seeds usually sit in sub-folders), groups the runs by setting, and writes

* a Markdown table per probe step and setting: ridge and MLP probe R^2 as mean +- sd [min, max]
  over the seeds, held-out L1 with own z over the copy baseline's L1, action dependence;
* a summary per setting: the probes at its last step, the best ridge at any step, and whether
  the world's target (issue 15: pan 0.8, agents 0.6) was reached;
* a figure (the Markdown's path with ``.png``): the three panels of ``probes_vs_steps.png``,
  one line per setting through the seed mean, the seeds' range shaded.

Runs stopped before their last step (``running_curves``) join as their own setting, marked
unfinished. The same setting and seed twice is refused (its spread would count one run twice).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

from ..inputs import InputError, read_json, require_folder
from .common import pyplot, save_figure
from .study import TARGETS, StudyConfig

__all__ = ["STUDY_KEYS", "collect_runs", "runs_of_study", "group_runs", "summarise", "plot_comparison",
           "write_study_comparison"]

# What the reports read from every study file (rows are checked one by one as they are drawn).
STUDY_KEYS = ("world", "world_preset", "background_source", "config", "encoder_probe", "rows")

# The per-point figures compared (the curve's keys) and how the table names them.
_PROBES = (("ridge_trained", "ridge z"), ("mlp_trained", "MLP (z, s)"))


def collect_runs(folders) -> list[dict]:
    """One record per probed run in the ``study_*.json`` files under ``folders``: world, kind,
    overrides, train_steps, seed, finished, curve, copy_l1 and the file it came from."""
    expected = "a folder holding the --out folders of 'python -m fastlam.eval study --probe-at'"
    runs, seen = [], set()
    for folder in folders:
        folder = require_folder(folder, "--results", expected)
        for f in sorted(folder.rglob("study_*.json")):
            if f.resolve() in seen:  # overlapping folders name a file once
                continue
            seen.add(f.resolve())
            st = read_json(f, "--results", "a study_WORLD.json written by 'python -m fastlam.eval study'",
                           keys=STUDY_KEYS)
            runs += runs_of_study(st, f)
    if not runs:
        raise InputError(f"--results: no study run with a curve under {', '.join(str(f) for f in folders)} "
                         "(run 'python -m fastlam.eval study --probe-at STEPS' first)")
    return runs


# Config entries that are not part of a setting: the seed (the spread is over it), what the
# label shows on its own (world, kind, overrides, steps), the probe steps (where the curve is
# read, not how the run trains) and the strengths (only the run's own kind's counts).
_NOT_SETTING = {"seed", "world", "kinds", "model_overrides", "train_steps", "probe_at", "strengths"}


def _normal(value):
    return json.loads(json.dumps(value))  # tuples and lists alike, as the study file holds them


def _flags(world: str, cfg: dict) -> tuple[str, ...]:
    """The study flags of a run that differ from the study's defaults for its world (e.g.
    ``flicker=0``), so runs of different worlds' nuisances or encoders never share a setting."""
    default = _normal(asdict(StudyConfig(world=world)))
    return tuple(f"{k}={cfg[k]}" for k in sorted(cfg) if k not in _NOT_SETTING and k in default
                 and _normal(cfg[k]) != default[k])


def _strength_flag(world: str, cfg: dict, kind: str) -> tuple[str, ...]:
    if kind not in cfg.get("strengths", {}):  # written without it: the study's default
        return ()
    ours = _normal(cfg["strengths"][kind])
    default = _normal(asdict(StudyConfig(world=world))["strengths"].get(kind))
    return () if ours == default else (f"strength={ours}",)


def runs_of_study(st: dict, file=None) -> list[dict]:
    """The probed runs of one loaded study file (see :func:`collect_runs`)."""
    cfg, runs = st["config"], []
    base = {"world": st["world"], "overrides": tuple(cfg.get("model_overrides", ())),
            "train_steps": int(cfg["train_steps"]), "seed": int(cfg["seed"]),
            "copy_l1": st.get("copy_l1"), "file": file}
    curves = [(kind, row["curve"], True) for kind, row in st["rows"].items() if row.get("curve")]
    curves += [(kind, curve, False) for kind, curve in st.get("running_curves", {}).items()
               if curve and not st["rows"].get(kind, {}).get("curve")]  # a finished row replaces its points
    for kind, curve, finished in curves:
        runs.append({**base, "kind": kind, "finished": finished, "curve": curve,
                     "flags": _flags(st["world"], cfg) + _strength_flag(st["world"], cfg, kind)})
    return runs


def setting_label(run: dict) -> str:
    changes = [*run.get("flags", ()), *run["overrides"]]
    over = " ".join(changes) if changes else "paper recipe"
    done = "" if run["finished"] else " (unfinished)"
    return f"{run['world']} {run['kind']}, {over}, {run['train_steps']} steps{done}"


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """{setting label: its runs sorted by seed}, in the order the settings were first met."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        runs_of = groups.setdefault(setting_label(run), [])
        twin = next((r for r in runs_of if r["seed"] == run["seed"]), None)
        if twin is not None:
            raise InputError(f"--results: {twin['file']} and {run['file']} are the same setting "
                             f"({setting_label(run)}) at the same seed {run['seed']}; pass the folder of one of them")
        runs_of.append(run)
    return {label: sorted(rs, key=lambda r: r["seed"]) for label, rs in groups.items()}


def summarise(values: list[float]) -> dict | None:
    """mean, sample sd (0 for one value), min, max and n of ``values`` (None when empty)."""
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def _fmt(s: dict | None, nd: int = 3) -> str:
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{nd}f}"
    return f"{s['mean']:.{nd}f} +- {s['sd']:.{nd}f} [{s['min']:.{nd}f}, {s['max']:.{nd}f}]"


def _at_step(runs: list[dict], step: int, key: str) -> list[float]:
    out = []
    for r in runs:
        pt = next((p for p in r["curve"] if p["step"] == step), None)
        if pt is None:
            continue
        if key == "l1_over_copy":
            if r["copy_l1"] and pt.get("diag/l1_own") is not None:
                out.append(pt["diag/l1_own"] / r["copy_l1"])
        elif pt.get(key) is not None:
            out.append(float(pt[key]))
    return out


def _steps(runs: list[dict]) -> list[int]:
    return sorted({p["step"] for r in runs for p in r["curve"]})


def _curve_stats(runs: list[dict]) -> dict[str, list[tuple[int, dict]]]:
    """{figure key: [(step, summary over the seeds that reached it)]} of one setting."""
    keys = [k for k, _ in _PROBES] + ["l1_over_copy", "diag/action_dependence"]
    out = {}
    for key in keys:
        pts = [(s, summarise(_at_step(runs, s, key))) for s in _steps(runs)]
        out[key] = [(s, v) for s, v in pts if v is not None]
    return out


def comparison_lines(groups: dict[str, list[dict]]) -> list[str]:
    """The Markdown of the comparison: the summary per setting, then every probe step."""
    lines = ["# Study runs compared", "",
             "Written by `python -m fastlam.eval study-compare`. Mean +- sample sd [min, max] over the seeds "
             "listed; held-out probes of the true action (R^2; 0 = the held-out mean); L1 / copy below 1 = "
             "the predictor beats copying s_t; action dependence = L1 with other clips' z / own z (1.0: z "
             "ignored).", "",
             "## At the end of each run", "",
             "| setting | seeds | last step | ridge z | MLP (z, s) | best seed-mean probe (probe, step) | target | "
             "reached |", "|---|---|---|---|---|---|---|---|"]
    stats_of = {label: _curve_stats(runs) for label, runs in groups.items()}
    for label, runs in groups.items():
        stats = stats_of[label]
        last = _steps(runs)[-1]
        ridge_last = dict(stats["ridge_trained"]).get(last)
        mlp_last = dict(stats["mlp_trained"]).get(last)
        # The target holds "at some budget": the best seed mean of either probe at any step.
        peaks = [(v["mean"], name, s) for key, name in _PROBES for s, v in stats[key]]
        best = max(peaks) if peaks else None
        target = TARGETS.get(runs[0]["world"])
        verdict = "-" if target is None or best is None else ("yes" if best[0] >= target else "no")
        lines.append(f"| {label} | {', '.join(str(r['seed']) for r in runs)} | {last} | {_fmt(ridge_last)} | "
                     f"{_fmt(mlp_last)} | {'-' if best is None else f'{best[0]:.3f} ({best[1]}, {best[2]})'} | "
                     f"{'-' if target is None else target} | {verdict} |")
    lines += ["", "## Along each run", "",
              "| setting | step | seeds | ridge z | MLP (z, s) | L1 own / copy | action dep. |",
              "|---|---|---|---|---|---|---|"]
    for label, runs in groups.items():
        stats = {k: dict(v) for k, v in stats_of[label].items()}
        for step in _steps(runs):
            n = sum(any(p["step"] == step for p in r["curve"]) for r in runs)
            lines.append(f"| {label} | {step} | {n} | {_fmt(stats['ridge_trained'].get(step))} | "
                         f"{_fmt(stats['mlp_trained'].get(step))} | {_fmt(stats['l1_over_copy'].get(step))} | "
                         f"{_fmt(stats['diag/action_dependence'].get(step), 2)} |")
    return lines + [""]


def plot_comparison(groups: dict[str, list[dict]], path: Path, levels: dict[str, float] | None = None) -> Path:
    """Probe R^2 (ridge solid, MLP dashed), L1 / copy and action dependence against steps (log
    x); a line per setting through the seed mean, the seeds' range shaded where there are several.
    ``levels``: dotted reference lines on the probe panel, {name: R^2} (default: each world's
    target)."""
    plt = pyplot()
    legend_in = 0.2 * (len(groups) + 1)  # inches of legend below the panels, one line per setting
    fig, (ax_r2, ax_l1, ax_dep) = plt.subplots(1, 3, figsize=(17, 4.5 + legend_in))
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    for i, (label, runs) in enumerate(groups.items()):
        colour = cmap(i % cmap.N)
        stats = _curve_stats(runs)
        for ax, key, style in ((ax_r2, "ridge_trained", "-"), (ax_r2, "mlp_trained", "--"),
                               (ax_l1, "l1_over_copy", "-"), (ax_dep, "diag/action_dependence", "-")):
            pts = stats[key]
            if not pts:
                continue
            steps = [s for s, _ in pts]
            name = f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            if key == "mlp_trained":
                name = None  # the ridge line carries the setting's name; dashed = MLP, in the axis label
            ax.plot(steps, [v["mean"] for _, v in pts], style, marker="o", markersize=3, color=colour, label=name)
            if len(runs) > 1:
                ax.fill_between(steps, [v["min"] for _, v in pts], [v["max"] for _, v in pts], color=colour, alpha=0.12)
    if levels is None:
        worlds = sorted({r["world"] for rs in groups.values() for r in rs})
        levels = {f"{w} target {TARGETS[w]}": TARGETS[w] for w in worlds if w in TARGETS}
    for name, level in levels.items():
        ax_r2.axhline(level, color="black", linestyle=":", linewidth=1)
        ax_r2.annotate(name, (0.01, level), xycoords=("axes fraction", "data"), fontsize=7)
    ax_r2.axhline(0.0, color="gray", linewidth=0.5)
    # Below -1 a probe is far worse than the mean and the scale would flatten the lines that matter.
    if ax_r2.get_ylim()[0] < -1.0:
        ax_r2.set_ylim(bottom=-1.0)
    ax_l1.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax_dep.axhline(1.0, color="black", linestyle=":", linewidth=1)
    for ax, ylabel in ((ax_r2, "held-out R^2 of the true action (ridge z solid, MLP (z, s) dashed; below -1 cut)"),
                       (ax_l1, "held-out L1 with own z / copy baseline L1"),
                       (ax_dep, "action dependence (L1 other z / own z)")):
        ax.set_xscale("log")
        ax.set_xlabel("training steps")
        ax.set_ylabel(ylabel, fontsize=8)
    frac = legend_in / (4.5 + legend_in)
    fig.tight_layout(rect=(0, frac, 1, 1))
    fig.legend(*ax_r2.get_legend_handles_labels(), loc="lower center", fontsize=8, frameon=False)
    return save_figure(fig, path)


def write_study_comparison(results, out: str | Path) -> Path:
    """``out`` (Markdown) and ``out`` with ``.png`` comparing the probed runs under the folders
    ``results``; returns the Markdown's path."""
    groups = group_runs(collect_runs(results))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot_comparison(groups, out.with_suffix(".png"))
    out.write_text("\n".join(comparison_lines(groups) + [f"![runs compared]({png.name})", ""]))
    return out
