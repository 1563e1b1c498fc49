"""The small-scale study: does each regularizer's latent action recover the true action?

For one world of :mod:`fastlam.data.worlds` (clips the LAM's tests never trained on: real
video backgrounds, distractors, known actions) and each regularizer kind, train a small LAM
on the frozen ``pixels`` encoder's states, then on *fresh* clips of the same world:

* probes of the true action, fitted on half of the backgrounds and scored on the other half
  (:mod:`fastlam.eval.probes`): ridge from z_t; MLP from (z_t, PCA of s_t); floors: the same
  probes with shuffled fit labels and on an untrained model's z;
* distractor R^2: ridge from z_t to the first distractor's own move (should be near 0);
* action dependence and capacity (held-out one-step L1 with own / other clips' / zero z,
  :func:`fastlam.diagnostics.latent_diagnostics`);
* leakage ratio on a scene-cut splice (:func:`fastlam.eval.leakage.future_leakage`) with
  the second scene from another background;
* before any LAM, the encoder probes (issue 28: "the encoder cannot see it" and "the LAM did
  not learn it" must never be confused): ridge from the state difference s_(t+1) - s_t and an
  MLP from (s_t, s_(t+1)), on the same fresh clips and split, with a verdict against
  :data:`ENCODER_TARGET`. ``kinds=()`` runs them alone (pick the encoder setting first).

Training is fastlam's: the same model, optimisers (Muon + AdamW) and warmup-cosine
schedule as ``fastlam.train``, on encoder states cached once (the encoder is frozen, so this
is the same computation without re-encoding every step).

``python -m fastlam.eval study --world pan --out DIR`` writes ``DIR/study_pan.json`` (rows
merge, so one kind can be re-run alone: ``--kinds discrete``); ``study-report`` draws the
capacity-vs-leakage PNG and writes ``study.md`` with the paper's figures alongside.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import apply_overrides, from_dict, to_dict
from ..configs import LatentCollapseConfig
from ..data.worlds import load_backgrounds, make_world, other_scene
from ..diagnostics import latent_diagnostics
from ..inputs import read_json, require_folder
from ..loop import train_steps
from ..models import EncoderConfig, LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig
from ..optim import OptimConfig, build_optimizers, build_schedulers
from .common import pyplot, save_figure, write_json
from .leakage import future_leakage
from .probes import group_split, mlp_r2, pca_features, ridge_r2

KINDS = ("deterministic", "none", "noisy", "sparse", "discrete")
# The world presets: max_step below / above the 8 px patch gives sub- / multi-patch moves.
WORLDS = {
    "pan": dict(kind="pan", max_step=3),
    "agent": dict(kind="agent", max_step=3),
    "agent_multi": dict(kind="agent", max_step=10),
}
# Each kind at the paper's scaling-run strength (lam-spec.md section 3); discrete: 1024 codes.
STRENGTHS = {"noisy": {"beta": 5e-5}, "sparse": {"l_l1": 0.01}, "discrete": {"num_codes": 1024}}
TARGETS = {"pan": 0.8, "agent": 0.6, "agent_multi": 0.6}
# Issue 28 item 2: an encoder setting is good enough for a LAM study when a probe reads the
# move from its states at least this well on unseen backgrounds.
ENCODER_TARGET = 0.7
PAPER_LEAKAGE = {"sparse": (0.20, 0.50), "noisy": (0.21, 0.54), "discrete": (0.29, 0.68)}


@dataclass
class StudyConfig:
    world: str = "pan"
    kinds: tuple = KINDS
    size: int = 32
    patch: int = 8
    pool: int = 2
    steps_t: int = 6  # time steps per clip (tubelet 2)
    train_clips: int = 384
    test_clips: int = 192
    leakage_clips: int = 64
    train_steps: int = 300
    batch_size: int = 16
    width: int = 48
    depth: int = 2
    action_dim: int = 128
    source: str | None = "data/samples"
    seed: int = 0
    # World nuisances (the ablations of the README's diagnosis): per-frame brightness flicker
    # and the number of independently moving distractors.
    flicker: float = 0.03
    distractors: int = 2
    # The pixels encoder's per-frame standardisation of every token (EncoderConfig.token_norm).
    token_norm: bool = False
    strengths: dict = field(default_factory=lambda: copy.deepcopy(STRENGTHS))
    # ``key.sub=value`` overrides of the LAM's ModelConfig (e.g. ``predictor.width=64``), applied
    # after the study's own settings so any model option reaches the study without a new flag.
    model_overrides: tuple = ()

    def model_config(self, kind: str) -> ModelConfig:
        reg = RegularizerConfig(kind=kind, **self.strengths.get(kind, {}))
        t = TransformerConfig(width=self.width, depth=self.depth, heads=4)
        cfg = ModelConfig(image_size=self.size, frames=2 * self.steps_t, action_dim=self.action_dim,
                          encoder=EncoderConfig(kind="pixels", patch_size=self.patch, tubelet=2, pool=self.pool,
                                                token_norm=self.token_norm),
                          idm=t, predictor=copy.deepcopy(t), regularizer=reg)
        if not self.model_overrides:
            return cfg
        return from_dict(ModelConfig, apply_overrides(to_dict(cfg), list(self.model_overrides)), "model")


def _world(cfg: StudyConfig, n: int, seed: int, backgrounds, src):
    if cfg.world not in WORLDS:
        raise ValueError(f"world: expected one of {tuple(WORLDS)}, got {cfg.world!r}")
    p = WORLDS[cfg.world]
    return make_world(p["kind"], n, steps=cfg.steps_t, tubelet=2, size=cfg.size, agent=6, distractor_size=5,
                      max_step=p["max_step"], distractors=cfg.distractors, flicker=cfg.flicker, backgrounds=backgrounds, background_source=src, seed=seed)


@torch.no_grad()
def _encode(model, video, chunk: int = 64):
    return torch.cat([model.encode(video[i:i + chunk]) for i in range(0, video.shape[0], chunk)])


def train_on_states(model, states: torch.Tensor, steps: int, batch_size: int, seed: int) -> float:
    """fastlam's optimisers and schedule on cached states; returns seconds."""
    ocfg = OptimConfig(adamw_lr=5e-3, muon_lr=0.03, warmup_frac=0.05)
    opts = build_optimizers(model, ocfg)
    scheds = build_schedulers(opts, steps, ocfg)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    train_steps(model, lambda _: model(states=states[torch.randint(0, states.shape[0], (batch_size,), generator=g)]).loss,
                steps, opts, scheds, grad_clip=ocfg.grad_clip)
    return time.perf_counter() - t0


def _probes(z, z0, states, actions, distractor, groups, seed: int, next_position=None) -> dict:
    T1 = actions.shape[1]
    rows = lambda x: x.reshape(-1, x.shape[-1]).float()
    g = groups.repeat_interleave(T1)
    fit, score = group_split(g)
    y = rows(actions)
    s_t = rows(states[:, :-1].flatten(2))
    s_fit, s_score = pca_features(s_t[fit], s_t[score], 32)
    perm = torch.randperm(int(fit.sum()), generator=torch.Generator().manual_seed(seed))
    out = {}
    for name, zz in (("trained", z), ("untrained", z0)):
        x = rows(zz)
        out[f"ridge_{name}"] = ridge_r2(x[fit], y[fit], x[score], y[score])
        # The MLP sees all of z (a PCA of z, like one of the state difference, can drop the
        # agent's directions behind the flicker's and the distractors') and 32 principal
        # components of s_t; early stopping on fit-side groups keeps it from over-fitting.
        xm_fit, xm_score = torch.cat([x[fit], s_fit], 1), torch.cat([x[score], s_score], 1)
        out[f"mlp_{name}"] = mlp_r2(xm_fit, y[fit], xm_score, y[score], seed=seed, groups_fit=g[fit])
        if name == "trained":
            out["ridge_shuffled"] = ridge_r2(x[fit], y[fit][perm], x[score], y[score])
            out["mlp_shuffled"] = mlp_r2(xm_fit, y[fit][perm], xm_score, y[score], seed=seed, groups_fit=g[fit])
            if next_position is not None:
                # What a single agent's z tends to hold instead of the move (tests/test_learning.py's
                # diagnosis): where the agent (camera) is next, which fixes s_{t+1} just as well.
                pn = rows(next_position.float())
                out["ridge_next_position"] = ridge_r2(x[fit], pn[fit], x[score], pn[score])
            if distractor is not None:
                d = rows(distractor)
                out["distractor_ridge"] = ridge_r2(x[fit], d[fit], x[score], d[score])
    return out


def encoder_probe(states: torch.Tensor, actions: torch.Tensor, groups: torch.Tensor) -> float:
    """Ridge R^2 of the action from the whole state difference s_{t+1} - s_t: whether the frozen
    encoder keeps the motion linearly at all (the issue's random ViT: 0.013). No PCA first: the
    top principal directions of the difference are the flicker and the distractors, and a
    64-direction PCA dropped the agent's move (0.42 -> 0.01 on a clean agent world)."""
    d = (states[:, 1:] - states[:, :-1]).flatten(2).reshape(-1, states[:, 0].numel() // states.shape[0]).float()
    y = actions.reshape(-1, actions.shape[-1])
    fit, score = group_split(groups.repeat_interleave(actions.shape[1]))
    return ridge_r2(d[fit], y[fit], d[score], y[score])


def encoder_mlp_probe(states: torch.Tensor, actions: torch.Tensor, groups: torch.Tensor, seed: int = 0,
                      hidden: int = 64) -> float:
    """Held-out R^2 of an MLP from the pair (s_t, s_(t+1)), whole states, no PCA (the reason is
    :func:`encoder_probe`'s): whether the move is in the encoder's states at all, linearly or
    not (an agent's move is where it is in s_(t+1) relative to where it was in s_t, which a
    ridge from the difference reads only for small moves). Early-stopped on fit-side groups
    (:func:`~fastlam.eval.probes.mlp_r2`); ``hidden`` 64 keeps it to seconds on a CPU."""
    pair = torch.cat([states[:, :-1].flatten(2), states[:, 1:].flatten(2)], -1)
    x = pair.reshape(-1, pair.shape[-1]).float()
    y = actions.reshape(-1, actions.shape[-1]).float()
    g = groups.repeat_interleave(actions.shape[1])
    fit, score = group_split(g)
    return mlp_r2(x[fit], y[fit], x[score], y[score], hidden=hidden, seed=seed, groups_fit=g[fit])


def encoder_verdict(ridge: float | None, mlp: float | None) -> str:
    """The report's line on whether the frozen encoder shows the move (the better probe counts)."""
    scores = {name: v for name, v in (("ridge", ridge), ("MLP", mlp)) if v is not None}
    if not scores:
        return "the encoder was not probed"
    name, best = max(scores.items(), key=lambda kv: kv[1])
    if best >= ENCODER_TARGET:
        return f"the encoder shows the move: R^2 {best:.3f} ({name})"
    return (f"the encoder barely shows the move (R^2 {best:.3f} < {ENCODER_TARGET}, best of ridge and MLP): a LAM "
            "cannot learn what its frozen encoder does not show")


def run_study(cfg: StudyConfig, out_dir: str | Path, log=print) -> Path:
    """Probe the encoder, then train and probe every kind of ``cfg.kinds`` on ``cfg.world``;
    merge rows into ``out_dir/study_<world>.json`` (with no kinds: the encoder probes alone)."""
    for k in cfg.kinds:
        if k not in KINDS:
            raise ValueError(f"kinds: expected a subset of {KINDS}, got {k!r}")
    out_dir = Path(out_dir)
    path = out_dir / f"study_{cfg.world}.json"
    result: dict = {"rows": {}}
    p = WORLDS.get(cfg.world, {})
    canvas = cfg.size + 2 * p.get("max_step", 0) * (cfg.steps_t - 1) if p.get("kind") == "pan" else cfg.size
    backgrounds, src = load_backgrounds(cfg.source, canvas, per_video=4, seed=cfg.seed)
    t0 = time.perf_counter()
    train_w = _world(cfg, cfg.train_clips, cfg.seed, backgrounds, src)
    test_w = _world(cfg, cfg.test_clips, cfg.seed + 1, backgrounds, src)
    torch.manual_seed(cfg.seed)
    ref = LatentActionWorldModel(cfg.model_config("none"))
    s_train, s_test = _encode(ref, train_w.video), _encode(ref, test_w.video)
    leak_idx = torch.arange(min(cfg.leakage_clips, cfg.test_clips))
    leak_a = test_w.video[leak_idx]
    leak_b = leak_a[other_scene(test_w.groups[leak_idx])]
    del train_w.video
    vit = LatentActionWorldModel(ModelConfig(image_size=cfg.size, frames=2 * cfg.steps_t,
                                             encoder=EncoderConfig(size="tiny", patch_size=cfg.patch)))
    result.update({
        "world": cfg.world, "world_preset": p, "background_source": src, "config": asdict(cfg),
        "data_seconds": time.perf_counter() - t0,
        "encoder_probe": {"pixels": encoder_probe(s_test, test_w.actions, test_w.groups),
                          "random_tiny_vit": encoder_probe(_encode(vit, test_w.video), test_w.actions, test_w.groups)},
    })
    # The MLP for the LAM's own encoder only: the random ViT is a reference, and its twice as
    # wide states would double the probe's cost.
    result["encoder_probe_mlp"] = {"pixels": encoder_mlp_probe(s_test, test_w.actions, test_w.groups, cfg.seed)}
    result["encoder_verdict"] = encoder_verdict(result["encoder_probe"]["pixels"], result["encoder_probe_mlp"]["pixels"])
    log(f"[{cfg.world}] data ready ({src}); encoder probes, pixels: ridge from s_(t+1) - s_t "
        f"{result['encoder_probe']['pixels']:.3f}, MLP from (s_t, s_(t+1)) {result['encoder_probe_mlp']['pixels']:.3f} "
        f"(random tiny ViT ridge {result['encoder_probe']['random_tiny_vit']:.3f}): {result['encoder_verdict']}")
    if not cfg.kinds:
        _merge_write(path, result, None)
    for kind in cfg.kinds:
        torch.manual_seed(cfg.seed)
        model = LatentActionWorldModel(cfg.model_config(kind))
        untrained = copy.deepcopy(model).eval()
        secs = train_on_states(model, s_train, cfg.train_steps, cfg.batch_size, cfg.seed)
        row = {"train_seconds": secs, "strength": cfg.strengths.get(kind, {})}
        row.update(latent_diagnostics(model, s_test))
        if model.idm is not None:
            z, z0 = model.infer_actions(states=s_test), untrained.infer_actions(states=s_test)
            first_distractor = test_w.distractor_moves[:, :, 0] if cfg.distractors else None
            row.update(_probes(z, z0, s_test, test_w.actions, first_distractor, test_w.groups, cfg.seed,
                               next_position=test_w.positions[:, 1:]))
        leak = future_leakage(model, leak_a, leak_b)
        row["leakage_ratio"] = leak["latent_l1"]["ratio"]
        row["leakage_no_cut"] = leak["latent_l1"]["no_cut"]["mean"]
        row["leakage_cut"] = leak["latent_l1"]["cut"]["mean"]
        result["rows"][kind] = row
        _merge_write(path, result, kind)
        log(f"[{cfg.world}] {kind}: {secs:.0f}s train; ridge {row.get('ridge_trained', float('nan')):.3f} "
            f"mlp {row.get('mlp_trained', float('nan')):.3f} dep x{row['diag/action_dependence']:.3f} "
            f"leak x{row['leakage_ratio']:.2f}")
    return path


def _merge_write(path: Path, result: dict, kind: str | None) -> None:
    """Add ``result``'s row ``kind`` (None: no row, the world's entries only) to the file's rows
    under a lock: several processes (one per kind) may write the same world's file."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = (read_json(path, "--out", f"a study file to merge into (or move {path} aside)")
                  if path.is_file() else {"rows": {}})
        rows = merged.get("rows", {})
        if kind is not None:
            rows[kind] = result["rows"][kind]
        merged.update({k: v for k, v in result.items() if k != "rows"})
        merged["rows"] = rows
        write_json(path, merged)


# What the report reads from every study file (rows are checked one by one as they are drawn).
STUDY_KEYS = ("world", "world_preset", "background_source", "config", "encoder_probe", "rows")


def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def encoder_lines(st: dict) -> list[str]:
    """The report's encoder probes of one study file (files written before the MLP probe have
    the ridge only) and the verdict line."""
    ridge, mlp = st["encoder_probe"], st.get("encoder_probe_mlp", {})
    lines = ["Encoder probes (before any LAM; the action from the frozen encoder's states on the same fresh clips "
             "and backgrounds split as the LAM probes):", "",
             "| frozen encoder | ridge from s_(t+1) - s_t | MLP from (s_t, s_(t+1)) |", "|---|---|---|"]
    for name, label in (("pixels", "pixels (the LAMs' encoder)"), ("random_tiny_vit", "random tiny ViT (reference)")):
        if name in ridge:
            lines.append(f"| {label} | {_fmt(ridge[name])} | {_fmt(mlp.get(name))} |")
    verdict = encoder_verdict(ridge.get("pixels"), mlp.get("pixels"))
    return lines + ["", f"**Encoder verdict: {verdict}.**", ""]


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
    """``study.md`` and ``capacity_vs_leakage.png`` from the ``study_*.json`` files in ``results``."""
    expected = "the --out folder of 'python -m fastlam.eval study' (holding study_*.json)"
    results = require_folder(results, "--results", expected)
    files = sorted(results.glob("study_*.json"))
    if not files:
        raise FileNotFoundError(f"--results: no study_*.json in {results} (run 'python -m fastlam.eval study' first)")
    studies = [read_json(f, "--results", f"a study_WORLD.json written by 'python -m fastlam.eval study' (or move "
                                          f"this file out of {results})", keys=STUDY_KEYS) for f in files]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 4), squeeze=False)
    colours = {"deterministic": "black", "none": "gray", "noisy": "tab:blue", "sparse": "tab:green",
               "discrete": "tab:red"}
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
        enc = [st["encoder_probe"].get("pixels"), st.get("encoder_probe_mlp", {}).get("pixels")]
        enc = [v for v in enc if v is not None]
        lines.append(f"| `{st['world']}` | {_fmt(max(enc) if enc else None)} | {_fmt(_best(st['rows'], 'ridge_trained'))} | "
                     f"{_fmt(_best(st['rows'], 'mlp_trained'))} | "
                     f"{encoder_verdict(st['encoder_probe'].get('pixels'), st.get('encoder_probe_mlp', {}).get('pixels'))} |")
    lines.append("")
    for ax, st in zip(axes[0], studies):
        c = st["config"]
        lines += [f"## World `{st['world']}` ({st['world_preset']}, backgrounds: {st['background_source']})", "",
                  f"{c['size']} px, {c['steps_t']} steps, pixels encoder (patch {c['patch']}, pool {c['pool']}), "
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
            ax.scatter(r["diag/l1_own"], r["leakage_ratio"], color=colours[kind], label=kind, s=40)
        lines.append("")
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
    out = Path(out) if out else results / "study.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
