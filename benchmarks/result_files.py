"""What a benchmark writes beside its JSON: the CSV, one line a result row, each stamped with
the run's device, date and commit (from the run's metadata), so a CSV copied out alone still
says where its numbers come from; and the figure, titled and saved the same way everywhere.

Written as the run goes (the GPU suite cuts a step off at its budget and keeps what is on
disk): a whole file is replaced atomically (:func:`write_rows_csv`, :func:`write_text_atomic`),
so a kill mid-write leaves the previous version, never half a file; a row at a time is
appended and flushed (:func:`append_row_csv`)."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

RUN_COLUMNS = ["device", "date", "commit"]


def write_rows_csv(path: Path, rows: list[dict], meta: dict, fields: Sequence[str] | None = None) -> None:
    """Write ``rows`` to ``path`` with ``fields`` as columns (keys of a row not among them are
    left out), or the first row's keys, then :data:`RUN_COLUMNS` from ``meta``."""
    columns = list(rows[0]) if fields is None else list(fields)
    partial = Path(f"{path}.partial")
    with open(partial, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns + RUN_COLUMNS, extrasaction="raise" if fields is None else "ignore")
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, **{k: meta[k] for k in RUN_COLUMNS}))
    os.replace(partial, path)


def append_row_csv(path: Path, row: dict, meta: dict, fields: Sequence[str]) -> None:
    """Append ``row`` (``fields`` as columns, then :data:`RUN_COLUMNS` from ``meta``) to the CSV
    at ``path``, writing the header first when the file is new, and flush it to the OS."""
    new = not Path(path).is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields) + RUN_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(dict(row, **{k: meta[k] for k in RUN_COLUMNS}))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace the file at ``path`` with ``text`` in one step (a kill mid-write keeps the old one)."""
    partial = Path(f"{path}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def save_figure(plt, fig, path: Path, title: str) -> Path:
    """Title ``fig`` (made with ``plt``, matplotlib.pyplot), lay it out, write it to ``path`` at
    110 dpi and close it (pyplot keeps every figure open until then)."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
