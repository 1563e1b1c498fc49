"""The short table gpu_suite.sh prints last (a device call's reply shows only the tail of the
output): each step's status and time, then the headline numbers of each result file in the
folder it is given. Also writes ``suite.json`` (device, date, commit, versions, steps) there.

    python -m benchmarks.suite_summary DIR
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from pathlib import Path

from benchmarks._common import git_commit, versions


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except Exception:
        return None


def lines(out: Path) -> list[str]:
    steps = list(csv.DictReader(open(out / "steps.csv"))) if (out / "steps.csv").is_file() else []
    rows = [f"{'step':14s} {'status':28s} {'s':>5s} {'budget':>6s}"]
    rows += [f"{s['step']:14s} {s['status'][:28]:28s} {s['seconds']:>5s} {s['budget_s']:>6s}" for s in steps]
    w = list(csv.DictReader(open(out / "warmup.csv"))) if (out / "warmup.csv").is_file() else []
    if w:
        rows.append(f"warm-up: {sum(x['status'] == 'ok' for x in w)} of {len(w)} jobs compiled and ran "
                    f"({sum(x['status'].startswith('error') for x in w)} errors)")
    for stem in ("correctness", "correctness_rest"):
        c = _load(out / f"{stem}.json")
        if not c:
            continue
        r = c["rows"]
        fails = sorted({f"{x['dtype']} {x['case']}" for x in r if x.get("ok") is False})
        rows.append(f"{stem}: {sum(x.get('ok') is True for x in r)} checks ok, {len(fails)} cases failing, "
                    f"{sum(x.get('ok') is None for x in r)} skipped" + ("".join(f"\n  FAIL {f}" for f in fails[:8])))
    a = _load(out / "attention.json")
    if a:
        hd = min((x["head_dim"] for x in a.get("rows", [])), default=64)  # 64 (the paper's); 16 in a dry run
        for x in a.get("rows", []):
            if x.get("mask") in ("frame_causal", "frame_local") and x.get("head_dim") == hd:
                rows.append(f"attn {x['mask'][:12]:12s} F={x['frame_len']} {x['backend'][:26]:26s} fwd "
                            f"{x['fwd_tflops']:>6} fwd+bwd {x['fwd_bwd_tflops']:>6} TFLOP/s"
                            + _peak_share(x.get("fwd_bwd_peak_share")))
    t = _load(out / "train_step.json")
    if t:
        for x in t.get("rows", []):
            if x.get("status") == "ok":
                mfu = f"{100 * x['mfu']:.1f}%" if x.get("mfu") else "-"
                rows.append(f"step {x['size']}/{x['mode']} {x['backend'][:18]:18s} B={x['batch']} "
                            f"{x['tokens_per_s']:>10.0f} tok/s  {x.get('peak_mem_gb') or '-'} GiB  MFU {mfu}")
            else:
                rows.append(f"step {x['size']}/{x['mode']} {x['backend']}: {str(x.get('status'))[:60]}")
    tiles = sorted(out.glob("*tuned*.json")) + sorted((out / "tuned").glob("*.json") if (out / "tuned").is_dir() else [])
    if tiles:
        rows.append("tuned tiles (commit as kernels/tuned/<name>): " + ", ".join(p.name for p in tiles))
    return rows


def _peak_share(share) -> str:
    """' = N% of the matmul peak' for a fraction of the measured bf16 matmul rate; '' when not
    measured (CPU)."""
    return "" if share is None else f" = {100 * share:.0f}% of matmul peak"


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    import torch

    steps = list(csv.DictReader(open(out / "steps.csv"))) if (out / "steps.csv").is_file() else []
    meta = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                date=dt.datetime.now(dt.timezone.utc).isoformat(), commit=git_commit(), **versions(), steps=steps)
    (out / "suite.json").write_text(json.dumps(meta, indent=1))
    text = "\n".join(lines(out))
    (out / "summary_table.txt").write_text(text + "\n")
    print(f"== fastlam GPU suite: {meta['device']}, commit {str(meta['commit'])[:10]}, torch {meta['torch']}, "
          f"triton {meta['triton']} ==")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
