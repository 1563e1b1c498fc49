"""Issue 28 item 2: pick each study world's frozen encoder setting by the encoder probes alone.

Runs `python -m fastlam.eval study --world W --kinds` (no LAM: the encoder probes only, on the
study's fresh clips with its backgrounds split into fit / score halves) over a grid of pixels
encoder settings, --jobs processes of one thread at a time, keeps each run's JSON as
OUT/<world>_<source>_s<size>_p<patch>_q<pool>_tn<0|1>.json (a run already there is not
redone) and writes OUT/encoder_sweep.md: one table per world, best probe first, and the
setting that reaches the target (or the best one).

    .venv/bin/python scripts/encoder_sweep.py [--out DIR] [--worlds pan agent] [--jobs 2]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastlam.eval.study import ENCODER_TARGET, WORLDS  # noqa: E402  (the repo's own package, run from a checkout)

SIZES = (32, 48, 64)
# (patch, pool): the ridge from the difference sees the same pixels for (8, 2) and (4, 2) (and
# for (8, 1) and (4, 1)); the grouping into tokens matters to token_norm and the bilinear probe.
PATCH_POOL = ((8, 2), (4, 2), (4, 1))
SOURCES = {"samples": "data/samples", "procedural": "procedural"}


def grid(worlds, sizes=SIZES):
    for world, src in itertools.product(worlds, SOURCES):
        # Procedural textures at 32 px only: they are the control for the real-video backgrounds.
        for size in (sizes if src == "samples" else (32,)):
            for (patch, pool), tn in itertools.product(PATCH_POOL, (0, 1)):
                yield dict(world=world, source=src, size=size, patch=patch, pool=pool, token_norm=tn)


def tag(s):
    return f"{s['world']}_{s['source']}_s{s['size']}_p{s['patch']}_q{s['pool']}_tn{s['token_norm']}"


def launch(s, out: Path, seed: int):
    tmp = Path(tempfile.mkdtemp(prefix="sweep_", dir=out))
    cmd = [sys.executable, "-m", "fastlam.eval", "study", "--world", s["world"], "--source", SOURCES[s["source"]],
           "--size", str(s["size"]), "--patch", str(s["patch"]), "--pool", str(s["pool"]),
           "--token-norm" if s["token_norm"] else "--no-token-norm", "--seed", str(seed), "--threads", "1",
           "--out", str(tmp), "--kinds"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = open(tmp / "log.txt", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), tmp


def best_probe(r):
    scores = {"ridge": r["encoder_probe"]["pixels"], "MLP": r["encoder_probe_mlp"]["pixels"],
              "bilinear": r.get("encoder_probe_bilinear", {}).get("pixels")}
    scores = {k: v for k, v in scores.items() if v is not None}
    name = max(scores, key=scores.get)
    return name, scores[name]


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def write_table(out: Path, worlds) -> Path:
    lines = ["# Encoder sweep: which frozen pixels encoder shows each world's move", "",
             "Made by `scripts/encoder_sweep.py` (encoder probes only, `python -m fastlam.eval study --kinds`, "
             "one thread each): the action from the frozen states of 192 fresh clips, fitted on half of the "
             "backgrounds and scored on the other half (held-out R^2). ridge: from s_(t+1) - s_t; MLP: from "
             "(s_t, s_(t+1)); bilinear: ridge from sum over tokens of s_t (outer) (s_(t+1) - s_t) ('-': tokens "
             f"wider than the probe takes). Target {ENCODER_TARGET}. tokens x width: what a LAM would train on "
             "per time step (its cost grows with both).", ""]
    for world in worlds:
        rows = []
        for f in sorted(out.glob(f"{world}_*.json")):
            r = json.loads(f.read_text())
            if r.get("world") != world:
                continue  # agent_multi_* files also match agent_*
            c = r["config"]
            n_tok = (c["size"] // c["patch"]) ** 2
            width = 3 * 2 * (c["patch"] // c["pool"]) ** 2
            name, best = best_probe(r)
            src = "procedural" if c["source"] is None else "samples"
            rows.append((best, name, src, c, n_tok, width, r))
        if not rows:
            continue
        rows.sort(key=lambda t: -t[0])
        lines += [f"## `{world}`", "", "| best | probe | backgrounds | size | patch | pool | token_norm | tokens x width "
                  "| ridge | MLP | bilinear |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for best, name, src, c, n_tok, width, r in rows:
            lines.append(f"| {best:.3f} | {name} | {src} | {c['size']} | {c['patch']} | {c['pool']} | "
                         f"{'on' if c['token_norm'] else 'off'} | {n_tok} x {width} | {fmt(r['encoder_probe']['pixels'])} | "
                         f"{fmt(r['encoder_probe_mlp']['pixels'])} | {fmt(r.get('encoder_probe_bilinear', {}).get('pixels'))} |")
        real = [t for t in rows if t[2] == "samples"]
        best, name, _, c, n_tok, width, _ = real[0] if real else rows[0]
        verdict = "reaches" if best >= ENCODER_TARGET else "misses"
        pre = WORLDS[world]["encoder"]
        at_preset = [t for t in real if all(t[3][k] == pre[k] for k in pre)]
        lines += ["", f"Best on real-video backgrounds: size {c['size']}, patch {c['patch']}, pool {c['pool']}, "
                  f"token_norm {'on' if c['token_norm'] else 'off'}: {name} R^2 {best:.3f} ({verdict} {ENCODER_TARGET}).",
                  "", f"The preset (`WORLDS['{world}']` in fastlam/eval/study.py): size {pre['size']}, patch "
                  f"{pre['patch']}, pool {pre['pool']}, token_norm {'on' if pre['token_norm'] else 'off'}"
                  + (f": {at_preset[0][1]} R^2 {at_preset[0][0]:.3f}" if at_preset else "")
                  + " (the README's study section says why).", ""]
    path = out / "encoder_sweep.md"
    path.write_text("\n".join(lines))
    return path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Issue 28 item 2: the study's encoder probes alone ('python -m fastlam.eval study --kinds') "
                    "over a grid of pixels encoder settings per world (frame size, patch, pooling, token_norm, "
                    "real-video and procedural backgrounds), one JSON per setting and OUT/encoder_sweep.md, "
                    "a table per world, best probe first. Settings already in OUT are not run again.")
    ap.add_argument("--out", default="benchmarks/results/small_scale_study/encoder_sweep",
                    help="folder for the JSONs and the table (default: %(default)s)")
    ap.add_argument("--worlds", nargs="+", default=["pan", "agent", "agent_multi"],
                    help="study worlds to sweep (default: %(default)s)")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                    help="frame sizes on the real-video backgrounds (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=2, help="study processes at once, one thread each (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="the study's seed (default: %(default)s)")
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the JSONs already there")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    todo = [] if args.table_only else [s for s in grid(args.worlds, args.sizes) if not (out / f"{tag(s)}.json").is_file()]
    running, failed = [], []
    while todo or running:
        while todo and len(running) < args.jobs:
            s = todo.pop(0)
            running.append((s, *launch(s, out, args.seed)))
        s, proc, tmp = running.pop(0)
        if proc.wait() == 0:
            shutil.move(str(tmp / f"study_{s['world']}.json"), out / f"{tag(s)}.json")
            print(f"{tag(s)}: {(tmp / 'log.txt').read_text().strip().splitlines()[-2]}", flush=True)
            shutil.rmtree(tmp)
        else:
            failed.append(tag(s))
            print(f"{tag(s)} FAILED, log kept in {tmp}", flush=True)
    print(f"wrote {write_table(out, args.worlds)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
