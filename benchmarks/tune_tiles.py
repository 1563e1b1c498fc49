"""Time the attention kernels' tile candidates on this GPU and write a tuned table for it.

    python benchmarks/tune_tiles.py --out DIR [--quick] [--dry-run] [--budget-s S]

For every key of ``fastlam.kernels.tile_tables.SWEEP_CANDIDATES`` (bf16, head dims 64 and 128,
RoPE fused into the kernels: what the models launch) it times the default tile and each
candidate with ``triton.testing.do_bench`` at the paper's shapes: B=4 x 16 heads x 8 frames of
256 tokens at hd64 and of 258 tokens (V-JEPA 2-AC's frames) at hd128, frame-causal mask; the
full run times every key at both frame lengths. ``fwd`` keys time the forward; ``bwd_kv`` and
``bwd_q`` the deterministic backward, ``bwd_kv_atomic`` the atomic-dQ backward, with the
candidate in that one kind and the default tiles elsewhere.

Result versus noise: every tile is timed twice, in two rounds over all tiles of a key (so a
drift of the clock or the power state hits all of them alike). A candidate replaces the default
only if it is faster in both rounds by the margin ``max(3%, 2 x the default's own round-to-round
spread)``; among such winners the fastest on average. A candidate whose compiled kernel spills
registers on this device (``n_spills``), that fails to compile, or whose output differs from the
default tile's beyond rounding is never chosen.

Writes ``DIR/tuned/<device>.json`` (the format ``fastlam.kernels.tile_tables`` reads: only the
winning tiles; copy it to ``kernels/tuned/`` to use it) and ``DIR/tune_tiles.csv`` (every
timing, with device, date, commit, triton and torch versions). ``--quick`` times the default and
the first two candidates of each key (keys in the order training launches them), one shape
per key, and starts no key after ``--budget-s`` (default 60 s, so the whole call stays near
90 s on an H100; keys not reached keep the default and are listed as not timed);
``--dry-run`` runs the same code under the Triton interpreter on the CPU at tiny shapes (two
keys, one candidate each, timings by the wall clock, meaningless as numbers).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIN_MARGIN = 0.03
# Output agreement between a candidate and the default tile: both round the same fp32
# accumulations to bf16 in another order; a wrong tile is off by O(1).
AGREE_TOL = 0.03
CSV_FIELDS = ["device", "date", "commit", "triton", "torch", "key", "shapes", "tile", "role", "t1_ms", "t2_ms",
              "spills", "compile_s", "max_rel_diff", "verdict"]
DRY_RUN_DEVICE = "cpu (triton interpreter, dry run)"


def _tile_text(tile) -> str:
    bm, bn, w, s = tile
    return f"{bm}x{bn} w{w} s{s}"


def _shapes(key: str, quick: bool, dry_run: bool) -> list:
    """(B, H, frames, frame_len, head_dim) per timed shape of a key."""
    hd = int(key.split(",")[2][2:])
    if dry_run:
        return [(1, 1, 2, 16, hd)]
    if quick:
        return [(4, 16, 8, 256 if hd == 64 else 258, hd)]
    return [(4, 16, 8, 256, hd), (4, 16, 8, 258, hd)]


class _Case:
    """Inputs of one shape and the launch that times a key's kind."""

    def __init__(self, kind: str, shape: tuple, device):
        import torch

        from benchmarks.bench_attention import rope_for
        from fastlam.ops.triton_attention import rope_position_tables

        B, H, T, F, D = shape
        L = T * F
        g = torch.Generator(device="cpu").manual_seed(0)

        def rnd():
            return torch.randn((B, H, L, D), generator=g).to(device=device, dtype=torch.bfloat16)

        self.q, self.k, self.v, self.do = rnd(), rnd(), rnd(), rnd()
        self.kind, self.F = kind, F
        self.kw = dict(frame_len=F, mask="frame_causal", scale=D ** -0.5,
                       rope_tables=rope_position_tables(L, F, D, rope_for(F), device), rope_fusion="kernel")
        self.out = self.lse = None

    def prepare(self):
        """The forward the backward needs (default tiles, outside the timed call)."""
        from fastlam.kernels import attention as A

        if self.kind != "fwd":
            self.out, self.lse = A.attention_forward(self.q, self.k, self.v, **self.kw)

    def __call__(self):
        from fastlam.kernels import attention as A

        if self.kind == "fwd":
            return A.attention_forward(self.q, self.k, self.v, **self.kw)
        return A.attention_backward(self.do, self.q, self.k, self.v, self.out, self.lse,
                                    deterministic=self.kind != "bwd_kv_atomic", **self.kw)


def _kernel_fn(kind: str):
    from fastlam.kernels import attention as A

    return {"fwd": A.attn_fwd, "bwd_kv": A.attn_bwd_dkdv, "bwd_kv_atomic": A.attn_bwd_dkdv,
            "bwd_q": A.attn_bwd_dq}[kind]


def _compiled_kernels(fn) -> dict:
    """id -> CompiledKernel of every binary ``fn`` has built so far (empty where this triton
    keeps them elsewhere or under the interpreter)."""
    found = {}
    for cache in getattr(fn, "device_caches", {}).values():
        kernels = cache[0] if isinstance(cache, tuple) else cache
        if isinstance(kernels, dict):
            found.update({id(k): k for k in kernels.values()})
    return found


def _spills(kernels) -> int | None:
    worst = None
    for k in kernels:
        try:
            if hasattr(k, "_init_handles"):
                k._init_handles()
            n = int(k.n_spills)
        except Exception:  # noqa: BLE001 - not exposed by this triton: unknown, not zero
            continue
        worst = n if worst is None else max(worst, n)
    return worst


def _max_rel_diff(got, ref) -> float:
    got = got if isinstance(got, tuple) else (got,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    worst = 0.0
    for a, b in zip(got, ref):
        a, b = a.float(), b.float()
        if not bool(a.isfinite().all()):
            return math.inf
        worst = max(worst, float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6))
    return worst


def _timer(dry_run: bool, quick: bool):
    if dry_run:
        def wall(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return wall
    import triton.testing

    warmup, rep = (10, 40) if quick else (25, 100)

    def bench(fn):
        try:
            return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
        except TypeError:  # a triton without return_mode
            return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep))
    return bench


def sweep_key(key: str, tiles: list, cases: list, timer, sync) -> list:
    """Rows (dicts) for one key: compile + check each tile once, then two timing rounds."""
    from fastlam.kernels import tile_tables

    kind = key.split(",")[0]
    fn = _kernel_fn(kind)
    rows, ok, ref = [], [], None
    for i, tile in enumerate(tiles):
        row = dict(key=key, tile=_tile_text(tile), role="default" if i == 0 else "candidate",
                   t1_ms="", t2_ms="", spills="", compile_s="", max_rel_diff="", verdict="")
        rows.append(row)
        before = set(_compiled_kernels(fn))
        t0 = time.perf_counter()
        try:
            with tile_tables.forced({key: tile}):
                outs = [case() for case in cases]
            sync()
        except Exception as e:  # noqa: BLE001 - a candidate that does not build or launch is reported
            row["verdict"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            if i == 0:
                raise
            continue
        row["compile_s"] = f"{time.perf_counter() - t0:.2f}"
        new = [k for kid, k in _compiled_kernels(fn).items() if kid not in before]
        spills = _spills(new)
        row["spills"] = "" if spills is None else spills
        if i == 0:
            ref = outs
        else:
            diff = max(_max_rel_diff(o, r) for o, r in zip(outs, ref))
            row["max_rel_diff"] = f"{diff:.2e}"
            if not diff <= AGREE_TOL:
                row["verdict"] = f"wrong result (max rel diff {diff:.2e} vs the default tile)"
                continue
        if spills:
            row["verdict"] = f"spills ({spills} B)"
            continue
        ok.append((tile, row))
    for rnd in ("t1_ms", "t2_ms"):
        for tile, row in ok:
            with tile_tables.forced({key: tile}):
                row[rnd] = f"{sum(timer(case) for case in cases):.4f}"
    return rows


def decide(rows: list) -> tuple:
    """(winning tile text or None, margin) from one key's rows; fills each row's verdict."""
    default = rows[0]
    d1, d2 = float(default["t1_ms"]), float(default["t2_ms"])
    margin = max(MIN_MARGIN, 2 * abs(d1 - d2) / ((d1 + d2) / 2))
    default["verdict"] = "default"
    best, best_t = None, None
    for row in rows[1:]:
        if row["verdict"]:
            continue
        c1, c2 = float(row["t1_ms"]), float(row["t2_ms"])
        if c1 < d1 * (1 - margin) and c2 < d2 * (1 - margin):
            row["verdict"] = f"faster in both rounds by > {margin:.1%}"
            if best is None or c1 + c2 < best_t:
                best, best_t = row, c1 + c2
        elif c1 < d1 and c2 < d2:
            row["verdict"] = f"faster, within the {margin:.1%} margin"
        else:
            row["verdict"] = "not faster in both rounds"
    if best is not None:
        best["verdict"] = "CHOSEN: " + best["verdict"]
    return (best["tile"] if best else None), margin


def _parse_tile_text(text: str) -> tuple:
    mn, w, s = text.split()
    bm, bn = mn.split("x")
    return int(bm), int(bn), int(w[1:]), int(s[1:])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/tune_tiles.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tuned/<device>.json and tune_tiles.csv")
    parser.add_argument("--quick", action="store_true", help="default + 2 candidates per key, one shape, time budget")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting keys after this many seconds (default: 60 with --quick)")
    return parser


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
    from fastlam.kernels import tile_tables

    if args.dry_run:
        device, device_name = torch.device("cpu"), DRY_RUN_DEVICE
        sync = lambda: None  # noqa: E731
    else:
        if not torch.cuda.is_available():
            print("tune_tiles: no CUDA device (use --dry-run to exercise the sweep on the CPU)", file=sys.stderr)
            return 2
        device, device_name = torch.device("cuda"), torch.cuda.get_device_name()
        sync = torch.cuda.synchronize
    budget = args.budget_s if args.budget_s is not None else (60.0 if args.quick else None)
    n_cand = 1 if args.dry_run else 2 if args.quick else None
    keys = list(tile_tables.SWEEP_CANDIDATES)
    if args.dry_run:
        keys = [k for k in keys if k.startswith(("fwd,bf16,hd64", "bwd_q,bf16,hd64"))]
    meta = {
        "device": device_name, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(), "triton": triton.__version__, "torch": torch.__version__,
    }
    timer = _timer(args.dry_run, args.quick)
    t_start = time.perf_counter()
    all_rows, tiles_out, kept, not_timed = [], {}, [], []
    for key in keys:
        if budget is not None and time.perf_counter() - t_start > budget:
            not_timed.append(key)
            continue
        kind, dtype_name, hd, _ = key.split(",")
        head_dim = int(hd[2:])
        default = A.block_config(head_dim, torch.bfloat16, interpret=False, rope=True)[kind]
        cands = [tuple(t) for t in tile_tables.SWEEP_CANDIDATES[key] if tuple(t) != tuple(default)][:n_cand]
        shapes = _shapes(key, args.quick, args.dry_run)
        cases = [_Case(kind, s, device) for s in shapes]
        for c in cases:
            c.prepare()
        rows = sweep_key(key, [tuple(default)] + cands, cases, timer, sync)
        winner, margin = decide(rows)
        if winner is None:
            kept.append(key)
        else:
            tiles_out[key] = list(_parse_tile_text(winner))
        shape_text = "; ".join(f"B{b} H{h} {t}x{f} hd{d}" for b, h, t, f, d in shapes)
        for row in rows:
            row.update(meta, shapes=shape_text)
        all_rows += rows
        print(f"tune_tiles: {key}: {'-> ' + winner if winner else 'default kept'} "
              f"({len(rows)} tiles, margin {margin:.1%}, {time.perf_counter() - t_start:.0f} s)", flush=True)
    table = {"format": tile_tables.FORMAT, **meta, "device_key": tile_tables.device_key(device_name),
             "python": platform.python_version(),
             "mode": "dry-run" if args.dry_run else "quick" if args.quick else "full",
             "command": "python benchmarks/tune_tiles.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "margin_rule": f"faster in both of two timings by max({MIN_MARGIN:.0%}, 2 x the default's spread)",
             "tiles": tiles_out, "kept_default": kept, "not_timed": not_timed}
    tile_tables.check_tiles(table["tiles"], "tune_tiles output")
    out_table = args.out / "tuned" / f"{table['device_key']}.json"
    out_table.parent.mkdir(parents=True, exist_ok=True)
    out_table.write_text(json.dumps(table, indent=1) + "\n")
    with open(args.out / "tune_tiles.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in all_rows:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    print(f"\ntune_tiles on {device_name} (triton {triton.__version__}), {time.perf_counter() - t_start:.0f} s:")
    print(f"{'key':<30} {'tile':<16} {'t1 ms':>9} {'t2 ms':>9}  verdict")
    for row in all_rows:
        print(f"{row['key']:<30} {row['tile']:<16} {row['t1_ms']:>9} {row['t2_ms']:>9}  {row['verdict']}")
    if not_timed:
        print(f"not timed (budget {budget:.0f} s): {', '.join(not_timed)}")
    print(f"wrote {out_table} ({len(tiles_out)} tuned tiles) and {args.out / 'tune_tiles.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
