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
merge, so one kind can be re-run alone: ``--kinds discrete``); ``--probe-at 300,1000,3000`` probes
each kind's one run along the way (a ``curve`` in its row). ``study-report``
(:mod:`fastlam.eval.study_report`) draws the PNGs and writes ``study.md``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import apply_overrides, from_dict, to_dict
from ..data.worlds import load_backgrounds, make_world, other_scene
from ..diagnostics import latent_diagnostics
from ..inputs import read_json
from ..loop import train_steps
from ..models import EncoderConfig, LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig
from ..optim import OptimConfig, build_optimizers, build_schedulers
from .common import write_json
from .leakage import future_leakage
from .probes import group_split, mlp_r2, pca_features, ridge_r2

KINDS = ("deterministic", "none", "noisy", "sparse", "discrete")
# The world presets: max_step below / above the 8 px patch gives sub- / multi-patch moves. Each preset names the pixels encoder setting its states are made with (issue 28 item 2: chosen
# by the encoder probe before any LAM, benchmarks/results/small_scale_study/encoder_sweep/);
# StudyConfig's size / patch / pool / token_norm left None take it, a value given overrides it.
WORLDS = {
    # The pan keeps 32 px although the encoder probes read 64 px better (0.792 vs 0.579): the
    # LAM's own z reads the move far better at 32 px within 3,000 steps (ridge 0.93 +- 0.02 over
    # seeds 0-2 against 0.09 / 0.46 at 64 px, seed 0; README, "Probes along one run").
    "pan": dict(kind="pan", max_step=3, encoder=dict(size=32, patch=8, pool=2, token_norm=False)),
    "agent": dict(kind="agent", max_step=3, encoder=dict(size=32, patch=8, pool=2, token_norm=False)),
    "agent_multi": dict(kind="agent", max_step=10, encoder=dict(size=32, patch=8, pool=2, token_norm=False)),
}
ENCODER_FIELDS = ("size", "patch", "pool", "token_norm")
# What an unknown world (refused by _world, with its name) is configured with until then.
FALLBACK_ENCODER = dict(size=32, patch=8, pool=2, token_norm=False)
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
    # The pixels encoder (None: the world preset's setting, WORLDS[world]["encoder"]).
    size: int | None = None
    patch: int | None = None
    pool: int | None = None
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
    # The pixels encoder's per-frame standardisation of every token (EncoderConfig.token_norm;
    # None: the preset's).
    token_norm: bool | None = None
    strengths: dict = field(default_factory=lambda: copy.deepcopy(STRENGTHS))
    # ``key.sub=value`` overrides of the LAM's ModelConfig (e.g. ``predictor.width=64``), applied
    # after the study's own settings so any model option reaches the study without a new flag.
    model_overrides: tuple = ()
    # Steps at which to probe one run per kind (issue 28 item 3: probes against steps); the run
    # trains to the largest (its schedule set for that count), which is the row's final step.
    probe_at: tuple = ()

    def __post_init__(self):
        if self.probe_at:
            if any(not isinstance(x, int) or x < 1 for x in self.probe_at):
                raise ValueError(f"probe_at: expected steps >= 1, got {self.probe_at}")
            self.probe_at = tuple(sorted(set(self.probe_at)))
            self.train_steps = self.probe_at[-1]
        preset = WORLDS.get(self.world, {}).get("encoder", {})
        for name in ENCODER_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, preset.get(name, FALLBACK_ENCODER[name]))

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


class StateTraining:
    """fastlam's optimisers and warmup-cosine schedule on cached states, for ``steps`` steps in
    all, run in segments (:meth:`advance_to`) so a run can be probed along the way: the
    schedule is set for the whole count and the batch generator carries over, so the steps
    are the ones a single :func:`train_on_states` call of ``steps`` would take."""

    def __init__(self, model, states: torch.Tensor, steps: int, batch_size: int, seed: int):
        self.model, self.states, self.steps, self.batch_size = model, states, steps, batch_size
        self.ocfg = OptimConfig(adamw_lr=5e-3, muon_lr=0.03, warmup_frac=0.05)
        self.opts = build_optimizers(model, self.ocfg)
        self.scheds = build_schedulers(self.opts, steps, self.ocfg)
        self.g = torch.Generator().manual_seed(seed)
        self.done = 0

    def advance_to(self, step: int) -> float:
        """Train up to ``step`` (<= ``steps``) steps in all; returns the seconds it took."""
        if not self.done <= step <= self.steps:
            raise ValueError(f"step: expected {self.done} <= step <= {self.steps}, got {step}")
        st, n = self.states, self.states.shape[0]
        t0 = time.perf_counter()
        train_steps(self.model, lambda _: self.model(states=st[torch.randint(0, n, (self.batch_size,), generator=self.g)]).loss,
                    step - self.done, self.opts, self.scheds, grad_clip=self.ocfg.grad_clip)
        self.done = step
        return time.perf_counter() - t0


def train_on_states(model, states: torch.Tensor, steps: int, batch_size: int, seed: int) -> float:
    """fastlam's optimisers and schedule on cached states; returns seconds."""
    return StateTraining(model, states, steps, batch_size, seed).advance_to(steps)


def _probes(z, z0, states, actions, distractor, groups, seed: int, next_position=None, floors: bool = True) -> dict:
    """The LAM probes of one model's z; ``floors=False`` (a point of a curve): the trained
    model's ridge and MLP only, the floors and side probes being the final row's."""
    T1 = actions.shape[1]
    rows = lambda x: x.reshape(-1, x.shape[-1]).float()
    g = groups.repeat_interleave(T1)
    fit, score = group_split(g)
    y = rows(actions)
    s_t = rows(states[:, :-1].flatten(2))
    s_fit, s_score = pca_features(s_t[fit], s_t[score], 32)
    perm = torch.randperm(int(fit.sum()), generator=torch.Generator().manual_seed(seed))
    out = {}
    for name, zz in (("trained", z), ("untrained", z0)) if floors else (("trained", z),):
        x = rows(zz)
        out[f"ridge_{name}"] = ridge_r2(x[fit], y[fit], x[score], y[score])
        # The MLP sees all of z (a PCA of z, like one of the state difference, can drop the
        # agent's directions behind the flicker's and the distractors') and 32 principal
        # components of s_t; early stopping on fit-side groups keeps it from over-fitting.
        xm_fit, xm_score = torch.cat([x[fit], s_fit], 1), torch.cat([x[score], s_score], 1)
        out[f"mlp_{name}"] = mlp_r2(xm_fit, y[fit], xm_score, y[score], seed=seed, groups_fit=g[fit])
        if name == "trained" and floors:
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


# Above this token width the bilinear feature (width^2 per row) is not computed: patch 8 without
# pooling has 384-d tokens, 147k features a row, over a gigabyte for the study's clips.
BILINEAR_MAX_WIDTH = 128


def encoder_bilinear_probe(states: torch.Tensor, actions: torch.Tensor, groups: torch.Tensor) -> float | None:
    """Ridge R^2 of the action from sum over tokens of s_t (outer) (s_(t+1) - s_t), or None for
    tokens wider than :data:`BILINEAR_MAX_WIDTH`.

    Why this feature: a camera pan by a changes the state by about -a . grad(s), bilinear in
    the action and the image, so no linear map of the difference reads a (the ridge scores
    below 0 on the pan). The token-summed outer product holds, up to a fixed linear map (a
    token's spatial gradient is a linear function of its own pooled pixels), the right-hand side
    of the Lucas-Kanade normal equations, sum(grad s * ds) = -M a, with M the scene's structure
    tensor: linear in a wherever M varies little between scenes. It uses no knowledge of the
    pixel layout, so it probes any encoder's tokens. Fitted and scored on the same split as
    :func:`encoder_probe`; nothing about it is chosen on the score side."""
    if states.shape[-1] > BILINEAR_MAX_WIDTH:
        return None
    s_t, diff = states[:, :-1].float(), (states[:, 1:] - states[:, :-1]).float()
    c = torch.einsum("btni,btnj->btij", s_t, diff).flatten(2)
    x = c.reshape(-1, c.shape[-1])
    y = actions.reshape(-1, actions.shape[-1])
    fit, score = group_split(groups.repeat_interleave(actions.shape[1]))
    return ridge_r2(x[fit], y[fit], x[score], y[score])


def encoder_verdict(ridge: float | None, mlp: float | None, bilinear: float | None = None) -> str:
    """The report's line on whether the frozen encoder shows the move (the best probe counts)."""
    scores = {name: v for name, v in (("ridge", ridge), ("MLP", mlp), ("bilinear ridge", bilinear)) if v is not None}
    if not scores:
        return "the encoder was not probed"
    name, best = max(scores.items(), key=lambda kv: kv[1])
    if best >= ENCODER_TARGET:
        return f"the encoder shows the move: R^2 {best:.3f} ({name})"
    return (f"the encoder barely shows the move (R^2 {best:.3f} < {ENCODER_TARGET}, best of {' / '.join(scores)}): a LAM "
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
    if cfg.source is not None and src == "procedural textures":
        log(f"warning: source {cfg.source!r} has no readable video; the backgrounds are procedural textures "
            f"(recorded as background_source; not comparable with runs on videos)")
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
    result["encoder_probe_bilinear"] = {"pixels": encoder_bilinear_probe(s_test, test_w.actions, test_w.groups)}
    result["encoder_verdict"] = encoder_verdict(result["encoder_probe"]["pixels"], result["encoder_probe_mlp"]["pixels"],
                                                result["encoder_probe_bilinear"]["pixels"])
    log(f"[{cfg.world}] data ready ({src}); encoder probes, pixels: ridge from s_(t+1) - s_t "
        f"{result['encoder_probe']['pixels']:.3f}, MLP from (s_t, s_(t+1)) {result['encoder_probe_mlp']['pixels']:.3f}, "
        f"bilinear ridge {result['encoder_probe_bilinear']['pixels'] or float('nan'):.3f} "
        f"(random tiny ViT ridge {result['encoder_probe']['random_tiny_vit']:.3f}): {result['encoder_verdict']}")
    if not cfg.kinds:
        _merge_write(path, result, None)
    # The copy baseline (predict s_(t+1) = s_t): what a predictor must beat before z can matter.
    result["copy_l1"] = float((s_test[:, 1:] - s_test[:, :-1]).abs().mean())
    for kind in cfg.kinds:
        torch.manual_seed(cfg.seed)
        model = LatentActionWorldModel(cfg.model_config(kind))
        untrained = copy.deepcopy(model).eval()
        training = StateTraining(model, s_train, cfg.train_steps, cfg.batch_size, cfg.seed)
        curve, secs = [], 0.0
        for step in cfg.probe_at[:-1]:
            secs += training.advance_to(step)
            curve.append(_curve_point(model, s_test, test_w, cfg, step, secs))
            log(f"[{cfg.world}] {kind} step {step}: ridge {curve[-1].get('ridge_trained', float('nan')):.3f} "
                f"mlp {curve[-1].get('mlp_trained', float('nan')):.3f} L1 {curve[-1]['diag/l1_own']:.4f} "
                f"(copy {result['copy_l1']:.4f}) dep x{curve[-1]['diag/action_dependence']:.3f}")
            _merge_write(path, result, kind, running_curve=curve)
        secs += training.advance_to(cfg.train_steps)
        row = {"train_seconds": secs, "strength": cfg.strengths.get(kind, {})}
        row.update(latent_diagnostics(model, s_test))
        if model.idm is not None:
            z, z0 = model.infer_actions(states=s_test), untrained.infer_actions(states=s_test)
            first_distractor = test_w.distractor_moves[:, :, 0] if cfg.distractors else None
            row.update(_probes(z, z0, s_test, test_w.actions, first_distractor, test_w.groups, cfg.seed,
                               next_position=test_w.positions[:, 1:]))
        if cfg.probe_at:
            # The final step's point is the row itself (its keys, the floors aside).
            curve.append({"step": cfg.train_steps, **{k: row[k] for k in CURVE_KEYS if k in row}})
            row["curve"] = curve
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


# What a curve records at each probe step (the final row has these and more).
CURVE_KEYS = ("train_seconds", "ridge_trained", "mlp_trained", "diag/l1_own", "diag/l1_other", "diag/l1_zero",
              "diag/action_dependence", "diag/posterior_sigma", "diag/posterior_snr")


def _curve_point(model, s_test, test_w, cfg: StudyConfig, step: int, secs: float) -> dict:
    """One point of a kind's curve: the trained model's ridge and MLP probes on the fresh clips
    and its held-out L1 with own / other clips' / zero z (action dependence)."""
    point = {"step": step, "train_seconds": secs}
    diag = latent_diagnostics(model, s_test)
    point.update({k: diag[k] for k in CURVE_KEYS if k in diag})
    if model.idm is not None:
        z = model.infer_actions(states=s_test)
        point.update(_probes(z, None, s_test, test_w.actions, None, test_w.groups, cfg.seed, floors=False))
    return point


def _merge_write(path: Path, result: dict, kind: str | None, running_curve: list | None = None) -> None:
    """Add ``result``'s row ``kind`` (None: no row, the world's entries only) to the file's rows
    under a lock: several processes (one per kind) may write the same world's file. With
    ``running_curve``: no row yet, the points so far of ``kind``'s curve go under
    ``running_curves`` (a long run that is stopped keeps what it measured); a row replaces them."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = (read_json(path, "--out", f"a study file to merge into (or move {path} aside)")
                  if path.is_file() else {"rows": {}})
        rows, running = merged.get("rows", {}), merged.get("running_curves", {})
        if running_curve is not None:
            running[kind] = running_curve
        elif kind is not None:
            rows[kind] = result["rows"][kind]
            running.pop(kind, None)
        merged.update({k: v for k, v in result.items() if k != "rows"})
        merged["rows"] = rows
        if running:
            merged["running_curves"] = running
        else:
            merged.pop("running_curves", None)
        write_json(path, merged)
