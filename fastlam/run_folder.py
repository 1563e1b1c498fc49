"""The run folder (``out_dir``) is never clobbered: a new run refuses to start where a run
already lives unless told what to do with it (``--resume`` continues it, ``--overwrite``
moves it aside to a timestamped sibling, never deletes it), and the metrics log of a resumed
run is cut back to the checkpoint so its steps never go backwards."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .checkpoint import atomic_write
from .config import ConfigError

# What a training run writes; any of these means the folder holds a run.
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "final")


class RunFolderError(ConfigError):
    """``out_dir`` does not fit the request (a run is there, or no checkpoint to resume)."""


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_FILES)


def _describe(out: Path) -> str:
    rows = read_metrics(out / "metrics.jsonl")
    parts = [f"step {rows[-1]['step']}"] if rows else []
    if (out / "final" / "model.safetensors").is_file():
        parts.append("a final model")
    return f" ({', '.join(parts)})" if parts else ""


def has_checkpoint(out: Path) -> bool:
    """``latest.pt`` (single process, DDP) or DeepSpeed's ``latest`` tag file."""
    return any((out / "checkpoints" / name).is_file() for name in ("latest.pt", "latest"))


def check_out_dir(out_dir: str | Path, *, resume: bool, overwrite: bool) -> bool:
    """Check ``out_dir`` against the request, writing nothing; True when a run there is to be
    moved aside (``overwrite``)."""
    out = Path(out_dir)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite: pass one (--resume continues the run in out_dir, "
                             "--overwrite moves it aside and starts again)")
    if resume:
        # A run that died before its first checkpoint completed (killed, disk full) holds a
        # run but no checkpoint: --resume restarts it from step 0 (the trainer says so) rather
        # than refusing both ways and leaving only --overwrite.
        if not has_checkpoint(out) and not holds_run(out):
            raise RunFolderError(f"--resume: no checkpoint in {out / 'checkpoints'} (latest.pt, or latest for "
                                 "DeepSpeed); drop --resume to start a new run there")
        return False
    if not holds_run(out):
        return False
    if not overwrite:
        again = "" if has_checkpoint(out) else " (no checkpoint was completed: it starts again from step 0)"
        raise RunFolderError(
            f"out_dir {out} already holds a run{_describe(out)}; pass --resume to continue it{again}, "
            f"out_dir=<another folder> to start a new one, or --overwrite to move it aside "
            f"(to {out}.old-<time>) and start again")
    return True


def prepare_out_dir(out_dir: str | Path, *, resume: bool, overwrite: bool, is_main: bool = True) -> Path | None:
    """Check ``out_dir`` against the request before anything is written; with ``overwrite``
    move an existing run to ``<out_dir>.old-<UTC time>`` (on the main process only) and
    return where it went."""
    out = Path(out_dir)
    if not check_out_dir(out, resume=resume, overwrite=overwrite) or not is_main:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while dest.exists():
        dest = out.with_name(f"{out.name}.old-{stamp}-{n}")
        n += 1
    os.rename(out, dest)  # same parent folder: a rename, nothing is copied or deleted
    return dest


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash mid-write
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the rows up to ``step`` (the checkpoint a resume starts from): rows a crashed
    run logged after its last checkpoint are redone by the resumed run, not repeated."""
    if not path.is_file():
        return
    rows = read_metrics(path)
    kept = [r for r in rows if r["step"] <= step]
    if len(kept) != len(rows) or len(rows) != len(path.read_text().splitlines()):
        atomic_write(path, lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in kept)))


def first_loss(path: Path) -> float | None:
    """The loss of the run's first logged step (step 1 is always logged)."""
    rows = [r for r in read_metrics(path) if "loss" in r]
    return rows[0]["loss"] if rows else None
