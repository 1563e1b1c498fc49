"""Time the attention kernels' tile candidates on this GPU and write a tuned table for it.

    python -m benchmarks.tune_tiles --out DIR [--quick] [--dry-run] [--budget-s S] [--install]

For every bf16 key of ``fastlam.kernels.tile_candidates.CANDIDATES`` (head dims 64 and 128,
the plain kernels that the default RoPE pre-pass launches first, then the RoPE-fused ones) it
times the default tile and each candidate at the paper's shapes: B=4 x 16 heads x 8 frames of
256 tokens at hd64 and of 258 tokens (V-JEPA 2-AC's frames) at hd128, frame-causal mask; the
full run times every key at both frame lengths. ``fwd`` keys time the forward; ``bwd_kv`` and
``bwd_q`` the deterministic backward, ``bwd_kv_atomic`` the atomic-dQ backward, with the
candidate in that one kind and the default tiles elsewhere (the launches of
``fastlam.kernels.attention_tuning.TimingCase``, the device-side tuning's own).

Result versus noise: the rule of ``fastlam.kernels.tuning`` (the one the device-side tuning
applies at first launch): every tile is timed twice, in two rounds over all tiles of a key (so
a drift of the clock or the power state hits all of them alike). A candidate replaces the
default only if it is faster in both rounds by the margin ``max(3%, 2 x the default's own
round-to-round spread)``; among such winners the fastest on average. A candidate whose compiled
kernel spills registers on this device (``n_spills``), that fails to compile, or whose output
differs from the default tile's beyond rounding is never chosen.

Writes ``DIR/tuned/<device>.json`` (the format ``fastlam.kernels.tile_tables`` reads: only the
winning tiles) and ``DIR/tune_tiles.csv`` (every timing, with device, date, commit, triton and
torch versions), both rewritten after every key, so a run stopped half-way keeps the keys it
finished. ``--install`` also writes the table as ``kernels/tuned/<device>.json``, where the
launchers read it (commit it with the CSV under ``benchmarks/results/``). ``--quick`` times the
default and the first two candidates of each key (keys in the order training launches them),
one shape per key, and starts no key after ``--budget-s`` (default 60 s, so the whole call
stays near 90 s on an H100; keys not reached keep the default and are listed as not timed);
``--dry-run`` runs the same code under the Triton interpreter on the CPU at tiny shapes (two
keys, one candidate each, timings by the wall clock, meaningless as numbers).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CSV_FIELDS = ["device", "date", "commit", "triton", "torch", "key", "shapes", "tile", "role", "t1_ms", "t2_ms",
              "spills", "compile_s", "max_rel_diff", "verdict"]
DRY_RUN_DEVICE = "cpu (triton interpreter, dry run)"
DRY_RUN_KEYS = ("fwd,bf16,hd64,rope", "bwd_q,bf16,hd64,rope")


def _shapes(key: str, quick: bool, dry_run: bool) -> list:
    """(B, H, frames, frame_len, head_dim) per timed shape of a key."""
    hd = int(key.split(",")[2][2:])
    if dry_run:
        return [(1, 1, 2, 16, hd)]
    if quick:
        return [(4, 16, 8, 256 if hd == 64 else 258, hd)]
    return [(4, 16, 8, 256, hd), (4, 16, 8, 258, hd)]


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def trial_row(trial) -> dict:
    """One CSV row (without the run's metadata) of a ``fastlam.kernels.tuning.Trial``."""
    return dict(tile=trial.tile_text, role=trial.role, t1_ms=_fmt(trial.t1_ms, ".4f"), t2_ms=_fmt(trial.t2_ms, ".4f"),
                spills="" if trial.spills is None else trial.spills, compile_s=_fmt(trial.compile_s, ".2f"),
                max_rel_diff=_fmt(trial.max_rel_diff, ".2e"), verdict=trial.verdict)


def sweep_key(key: str, tiles: list, shapes: list, device, timer, sync) -> tuple:
    """(the winning Trial or None, the margin, every Trial) of one key: the device-side
    tuning's launches (TimingCase) and rule (tuning.measure / decide); one timed call runs
    every shape in turn."""
    import torch

    from fastlam.kernels import attention_tuning, tile_tables, tuning

    kind, rope = key.split(",")[0], key.endswith(",rope")
    cases = [attention_tuning.TimingCase(kind, shape, torch.bfloat16, rope, device) for shape in shapes]
    for case in cases:
        case.prepare()

    def run(tile):
        with tile_tables.forced({key: tile}):
            return [case() for case in cases]
    trials = tuning.measure(tiles, run, timer, spills=tuning.SpillWatch(attention_tuning.kernels_of(kind)), sync=sync)
    winner, margin = tuning.decide(trials)
    return winner, margin, trials


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune_tiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tuned/<device>.json and tune_tiles.csv")
    parser.add_argument("--quick", action="store_true", help="default + 2 candidates per key, one shape, time budget")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting keys after this many seconds (default: 60 with --quick)")
    parser.add_argument("--install", action="store_true",
                        help="also write the table as kernels/tuned/<device>.json (what the launchers read)")
    return parser


def _write_outputs(out: Path, table: dict, rows: list, install: bool) -> list:
    """The tuned table and the CSV, each written whole to a temporary file and renamed."""
    from fastlam.kernels import tile_tables

    tile_tables.check_tiles(table["tiles"], "tune_tiles output")
    paths = [out / "tuned" / f"{table['device_key']}.json"]
    if install:
        paths.append(tile_tables.TUNED_DIR / f"{table['device_key']}.json")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1) + "\n")
        os.replace(tmp, path)
    tmp = out / f".tune_tiles.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    os.replace(tmp, out / "tune_tiles.csv")
    return paths


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry_run:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--dry-run needs the Triton interpreter: run it in a fresh process")
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton

    from benchmarks._common import git_commit
    from fastlam.kernels import attention as A
    from fastlam.kernels import tile_candidates, tile_tables, tuning

    if args.dry_run:
        device, device_name = torch.device("cpu"), DRY_RUN_DEVICE
        sync = lambda: None  # noqa: E731
        timer = tuning.wall_clock_ms
    else:
        if not torch.cuda.is_available():
            print("tune_tiles: no CUDA device (use --dry-run to exercise the sweep on the CPU)", file=sys.stderr)
            return 2
        device, device_name = torch.device("cuda"), torch.cuda.get_device_name()
        sync = torch.cuda.synchronize
        timer = tuning.do_bench_ms(*((10, 40) if args.quick else (25, 100)))
    budget = args.budget_s if args.budget_s is not None else (60.0 if args.quick else None)
    n_cand = 1 if args.dry_run else 2 if args.quick else None
    keys = [k for k in tile_candidates.CANDIDATES if k.split(",")[1] == "bf16"]
    if args.dry_run:
        keys = list(DRY_RUN_KEYS)
    meta = {
        "device": device_name, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(), "triton": triton.__version__, "torch": torch.__version__,
    }
    table = {"format": tile_tables.FORMAT, **meta, "device_key": tile_tables.device_key(device_name),
             "python": platform.python_version(),
             "mode": "dry-run" if args.dry_run else "quick" if args.quick else "full",
             "command": "python -m benchmarks.tune_tiles " + " ".join(argv if argv is not None else sys.argv[1:]),
             "margin_rule": f"faster in both of two timings by max({tuning.MIN_MARGIN:.0%}, 2 x the default's spread)",
             "tiles": {}, "kept_default": [], "not_timed": list(keys)}
    t_start = time.perf_counter()
    all_rows, paths = [], []
    for key in keys:
        if budget is not None and time.perf_counter() - t_start > budget:
            continue
        kind, _, hd = key.split(",")[:3]
        default = A.block_config(int(hd[2:]), torch.bfloat16, interpret=False, rope=key.endswith(",rope"))[kind]
        cands = [tuple(t) for t in tile_candidates.CANDIDATES[key] if tuple(t) != tuple(default)][:n_cand]
        shapes = _shapes(key, args.quick, args.dry_run)
        winner, margin, trials = sweep_key(key, [tuple(default)] + cands, shapes, device, timer, sync)
        table["not_timed"].remove(key)
        if winner is None:
            table["kept_default"].append(key)
        else:
            table["tiles"][key] = list(winner.tile)
        shape_text = "; ".join(f"B{b} H{h} {t}x{f} hd{d}" for b, h, t, f, d in shapes)
        all_rows += [dict(trial_row(t), key=key, shapes=shape_text, **meta) for t in trials]
        paths = _write_outputs(args.out, table, all_rows, args.install)
        print(f"tune_tiles: {key}: {'-> ' + winner.tile_text if winner else 'default kept'} "
              f"({len(trials)} tiles, margin {margin:.1%}, {time.perf_counter() - t_start:.0f} s)", flush=True)
    paths = _write_outputs(args.out, table, all_rows, args.install)
    print(f"\ntune_tiles on {device_name} (triton {triton.__version__}), {time.perf_counter() - t_start:.0f} s:")
    print(f"{'key':<30} {'tile':<16} {'t1 ms':>9} {'t2 ms':>9}  verdict")
    for row in all_rows:
        print(f"{row['key']:<30} {row['tile']:<16} {row['t1_ms']:>9} {row['t2_ms']:>9}  {row['verdict']}")
    if table["not_timed"]:
        print(f"not timed (budget {budget:.0f} s): {', '.join(table['not_timed'])}")
    print(f"wrote {', '.join(map(str, paths))} ({len(table['tiles'])} tuned tiles) and {args.out / 'tune_tiles.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
