"""The command-line options every GPU benchmark of the suite shares: where results go (``--out``,
default ``$OUT``, else ``benchmarks/results/gpu``) and its time budget (``--budget-s``, default
``$BENCH_BUDGET_S``, else 240 s), so the GPU suite can point all of them at one folder and one
budget through the environment."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_out_and_budget(parser: argparse.ArgumentParser, units: str) -> None:
    """Add ``--out`` and ``--budget-s`` to ``parser``; ``units`` names what the budget stops
    starting (``shapes``, ``cases``)."""
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks/results/gpu")),
                        help="folder for the CSV / JSON / PNG results (default: $OUT, else benchmarks/results/gpu)")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S", 240)),
                        help=f"stop starting new {units} after this many seconds (default: $BENCH_BUDGET_S, else 240)")
