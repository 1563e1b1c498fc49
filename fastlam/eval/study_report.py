"""``study.md`` and the study's figures from the ``study_*.json`` files of ``python -m fastlam.eval study``.

Per world: the encoder probes and their verdict (issue 28 item 2), the LAM probes of every
kind, ``capacity_vs_leakage.png`` with the paper's figures alongside, and, where kinds were
probed along their run (``--probe-at``), a table of each curve and ``probes_vs_steps.png``:
probe R^2 against steps (log x) on one panel, held-out L1 with own z against the copy baseline
and the action dependence on the others.
"""
from __future__ import annotations

from pathlib import Path

from ..configs import LatentCollapseConfig
from ..inputs import read_json, require_folder
from .common import pyplot, save_figure
from .study import KINDS, PAPER_LEAKAGE, TARGETS, encoder_verdict
from .study_compare import STUDY_KEYS, group_runs, plot_comparison, runs_of_study

__all__ = ["STUDY_KEYS", "encoder_lines", "curve_lines", "plot_curves", "write_study_report"]

COLOURS = {"deterministic": "black", "none": "gray", "noisy": "tab:blue", "sparse": "tab:green", "discrete": "tab:red"}


def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def encoder_lines(st: dict) -> list[str]:
    """The report's encoder probes of one study file (files written before the MLP probe have
    the ridge only) and the verdict line."""
    ridge, mlp, bil = st["encoder_probe"], st.get("encoder_probe_mlp", {}), st.get("encoder_probe_bilinear", {})
    lines = ["Encoder probes (before any LAM; the action from the frozen encoder's states on the same fresh clips "
             "and backgrounds split as the LAM probes):", "",
             "| frozen encoder | ridge from s_(t+1) - s_t | MLP from (s_t, s_(t+1)) | bilinear ridge from "
             "sum_tokens s_t (outer) (s_(t+1) - s_t) |", "|---|---|---|---|"]
    for name, label in (("pixels", "pixels (the LAMs' encoder)"), ("random_tiny_vit", "random tiny ViT (reference)")):
        if name in ridge:
            lines.append(f"| {label} | {_fmt(ridge[name])} | {_fmt(mlp.get(name))} | {_fmt(bil.get(name))} |")
    verdict = _verdict(st)
    return lines + ["", f"**Encoder verdict: {verdict}.**", ""]


def _encoder_scores(st: dict) -> list:
    """The pixels encoder's probe scores of a study file (older files lack the MLP / bilinear)."""
    return [st["encoder_probe"].get("pixels"), st.get("encoder_probe_mlp", {}).get("pixels"),
            st.get("encoder_probe_bilinear", {}).get("pixels")]


def _verdict(st: dict) -> str:
    return encoder_verdict(*_encoder_scores(st))


def _collapse_mark(kind: str, dependence: float) -> str:
    """' (z ignored)' where a kind's latent collapsed by the training runs' criterion
    (:class:`~fastlam.configs.LatentCollapseConfig`'s default tolerance); a deterministic model
    has no z to ignore."""
    if kind != "deterministic" and abs(dependence - 1.0) <= LatentCollapseConfig().tolerance:
        return " (z ignored)"
    return ""


def _best(rows: dict, key: str):
    vals = [r[key] for r in rows.values() if r.get(key) is not None]
    return max(vals) if vals else None


def write_study_report(results: str | Path, out: str | Path | None = None) -> Path:
    """``study.md``, ``capacity_vs_leakage.png`` and (where a kind has a curve)
    ``probes_vs_steps.png`` from the ``study_*.json`` files in ``results``."""
    expected = "the --out folder of 'python -m fastlam.eval study' (holding study_*.json)"
    results = require_folder(results, "--results", expected)
    files = sorted(results.glob("study_*.json"))
    if not files:
        raise FileNotFoundError(f"--results: no study_*.json in {results} (run 'python -m fastlam.eval study' first)")
    studies = [read_json(f, "--results", f"a study_WORLD.json written by 'python -m fastlam.eval study' (or move "
                                          f"this file out of {results})", keys=STUDY_KEYS) for f in files]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 4), squeeze=False)
    lines = ["# Small-scale study: are latent actions actions?", "",
             "Produced by `scripts/small_scale_study.sh` (`python -m fastlam.eval study` per world, then "
             "`study-report`). Probes are fitted on half of the backgrounds and scored on the other half "
             "(held-out R^2; 0 = the held-out mean). Capacity = held-out one-step L1 with the IDM's own z "
             "(lower = more information through z). Leakage ratio = error with a scene cut / without "
             "(higher = less future leakage).", "",
             "## The encoder beside the LAMs", "",
             "Whether the frozen encoder shows the move at all (best of its ridge and MLP probes) next to the best "
             "LAM probes of the world: a LAM cannot learn what its frozen encoder does not show.", "",
             "| world | encoder (best probe) | best LAM ridge z | best LAM MLP (z, s) | verdict |", "|---|---|---|---|---|"]
    for st in studies:
        enc = [v for v in _encoder_scores(st) if v is not None]
        lines.append(f"| `{st['world']}` | {_fmt(max(enc) if enc else None)} | {_fmt(_best(st['rows'], 'ridge_trained'))} | "
                     f"{_fmt(_best(st['rows'], 'mlp_trained'))} | {_verdict(st)} |")
    lines.append("")
    for ax, st in zip(axes[0], studies):
        c = st["config"]
        lines += [f"## World `{st['world']}` ({st['world_preset']}, backgrounds: {st['background_source']})", "",
                  f"{c['size']} px, {c['steps_t']} steps, pixels encoder (patch {c['patch']}, pool {c['pool']}"
                  f"{', token_norm' if c.get('token_norm') else ''}), "
                  f"IDM / predictor width {c['width']} depth {c['depth']}, z in R^{c['action_dim']}, "
                  f"{c['train_steps']} steps x batch {c['batch_size']} on {c['train_clips']} clips, "
                  f"probes on {c['test_clips']} fresh clips, seed {c['seed']}; world nuisances: flicker "
                  f"{c.get('flicker', 0.03)}, {c.get('distractors', 2)} distractors. "
                  f"Target (issue 15): MLP/ridge probe R^2 >= {TARGETS.get(st['world'], 0.6)}.", "",
                  *encoder_lines(st)]
        if not st["rows"]:  # the encoder probes alone (kinds=()): no LAM table yet
            lines += ["No LAM trained for this world yet.", ""]
        else:
            lines += ["| kind | ridge z | shuffled | untrained | MLP (z, s) | shuffled | untrained | distractor R^2 "
                      "| z -> next position R^2 | L1 own / other / zero | action dep. | leakage ratio | train s |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for kind in KINDS:
            r = st["rows"].get(kind)
            if r is None:
                continue
            g = r.get
            lines.append(
                f"| {kind} {r['strength'] or ''} | {_fmt(g('ridge_trained'))} | {_fmt(g('ridge_shuffled'))} | "
                f"{_fmt(g('ridge_untrained'))} | {_fmt(g('mlp_trained'))} | {_fmt(g('mlp_shuffled'))} | "
                f"{_fmt(g('mlp_untrained'))} | {_fmt(g('distractor_ridge'))} | {_fmt(g('ridge_next_position'))} | "
                f"{r['diag/l1_own']:.4f} / "
                f"{r['diag/l1_other']:.4f} / {r['diag/l1_zero']:.4f} | x{r['diag/action_dependence']:.3f}"
                f"{_collapse_mark(kind, r['diag/action_dependence'])} | "
                f"x{r['leakage_ratio']:.2f} | {r['train_seconds']:.0f} |")
            ax.scatter(r["diag/l1_own"], r["leakage_ratio"], color=COLOURS[kind], label=kind, s=40)
        lines += ["", *curve_lines(st)]
        ax.set_xlabel("capacity: held-out one-step L1 with own z (lower = more)")
        ax.set_ylabel("leakage ratio (cut / no cut)")
        ax.axhline(2.0, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"world: {st['world']}")
        if st["rows"]:  # no points, no legend
            ax.legend(fontsize=8)
    fig.tight_layout()
    png = save_figure(fig, results / "capacity_vs_leakage.png")
    lines += ["## The paper's figures alongside (lam-spec.md section 5)", "",
              "| kind (paper, 'high' capacity) | leakage: no cut -> cut (LPIPS) | ratio |", "|---|---|---|"]
    for kind, (a, b) in PAPER_LEAKAGE.items():
        lines.append(f"| {kind} | {a:.2f} -> {b:.2f} | x{b / a:.2f} |")
    lines += ["", "Paper planning (DROID, Delta_xyz m): best LAM (noisy-high) 0.10, V-JEPA 2-AC 0.15. "
              "The simulated-arm planning table is the README's 'Evaluations' sequence (not re-run here).", "",
              f"![capacity vs leakage]({png.name})", ""]
    curves = plot_curves(studies, results / "probes_vs_steps.png")
    if curves is not None:
        lines += [f"![probes vs steps]({curves.name})", ""]
    out = Path(out) if out else results / "study.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def _curves(st: dict) -> dict:
    """{kind: curve points} of the kinds of a study file that were probed along their run; a run
    stopped or still running before its last step ('running_curves') is listed as 'KIND (unfinished)'."""
    runs = sorted(runs_of_study(st), key=lambda r: (not r["finished"], KINDS.index(r["kind"])))
    return {r["kind"] + ("" if r["finished"] else " (unfinished)"): r["curve"] for r in runs}


def curve_lines(st: dict) -> list[str]:
    """The table of each kind's curve (probes, L1 against the copy baseline, action dependence
    at every probe step), or nothing for a study file without curves."""
    curves = _curves(st)
    if not curves:
        return []
    copy_l1 = st.get("copy_l1")
    lines = [f"Probes along one run per kind (`--probe-at`; the cosine schedule set for the last step; copy "
             f"baseline L1 {_fmt(copy_l1, 4)}, predicting s_(t+1) = s_t):", "",
             "| kind | step | ridge z | MLP (z, s) | L1 own / other / zero | below copy | action dep. | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, curve in curves.items():
        for pt in curve:
            own = pt["diag/l1_own"]
            below = "-" if copy_l1 is None else ("yes" if own < copy_l1 else "no")
            lines.append(f"| {kind} | {pt['step']} | {_fmt(pt.get('ridge_trained'))} | {_fmt(pt.get('mlp_trained'))} | "
                         f"{own:.4f} / {pt['diag/l1_other']:.4f} / {pt['diag/l1_zero']:.4f} | {below} | "
                         f"x{pt['diag/action_dependence']:.3f}{_collapse_mark(kind.split()[0], pt['diag/action_dependence'])} | "
                         f"{pt['train_seconds']:.0f} |")
    return lines + [""]


def plot_curves(studies: list[dict], path: Path) -> Path | None:
    """``probes_vs_steps.png``: the probed runs of the study files drawn as ``study-compare``
    draws them (:func:`~fastlam.eval.study_compare.plot_comparison`: probe R^2, held-out L1 over
    the copy baseline's, action dependence against steps), with each world's encoder probe as a
    dotted level. None when no study file has a curve."""
    runs, levels = [], {}
    for st in studies:
        of_study = runs_of_study(st)
        runs += of_study
        enc = [v for v in _encoder_scores(st) if v is not None]
        if enc and of_study:
            levels[f"{st['world']} encoder {max(enc):.2f}"] = max(enc)
    if not runs:
        return None
    return plot_comparison(group_runs(runs), path, levels=levels)
