"""What a benchmark writes beside its JSON: the CSV, one line a result row, each stamped with
the run's device, date and commit (from the run's metadata), so a CSV copied out alone still
says where its numbers come from; and the figure, titled and saved the same way everywhere."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

RUN_COLUMNS = ["device", "date", "commit"]


def write_rows_csv(path: Path, rows: list[dict], meta: dict, fields: Sequence[str] | None = None) -> None:
    """Write ``rows`` to ``path`` with ``fields`` as columns (keys of a row not among them are
    left out), or the first row's keys, then :data:`RUN_COLUMNS` from ``meta``."""
    columns = list(rows[0]) if fields is None else list(fields)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns + RUN_COLUMNS, extrasaction="raise" if fields is None else "ignore")
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, **{k: meta[k] for k in RUN_COLUMNS}))


def save_figure(plt, fig, path: Path, title: str) -> Path:
    """Title ``fig`` (made with ``plt``, matplotlib.pyplot), lay it out, write it to ``path`` at
    110 dpi and close it (pyplot keeps every figure open until then)."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
