"""The shard stream's position in a run folder: one JSON file per checkpoint
(``checkpoints/data_state_XXXXXXX.json``), merged over ranks, written and pruned in the order
that keeps every checkpoint resumable.

A state is ``{epoch, n, seed, consumed, plan_consumed, plan}``: ``consumed`` is the bitmap of
clips of the epoch handed out (by any rank); ``plan_consumed`` the bitmap the epoch's plan was
made from (zeros for an epoch that started normally) and ``plan`` the settings the plan depends
on (world size, loader workers, shuffle buffer, drop_last). With both, a resume on the same
settings rebuilds the very plan and shuffle-buffer draws of the interrupted run and continues it
bit for bit; on other settings it re-plans the unconsumed clips (no clip lost or repeated).

Order of the writes at a checkpoint (see :func:`save_stream_state`, :func:`prune_stream_states`):
the data state of step N first, then the model checkpoint of step N (which moves ``latest``),
then pruning. A kill at any point leaves ``latest`` naming a step whose data state exists: before
the model write ``latest`` still names step N-1, whose data state is not pruned yet. (Writing
the model first, as the issue put it, would leave ``latest`` at step N without its data state.)
Each file goes through :func:`fastlam.checkpoint.atomic_write`: temporary file, fsync, rename.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint import atomic_write

__all__ = ["merge_states", "save_stream_state", "load_stream_state", "prune_stream_states",
           "stream_state_path"]

_BITMAPS = ("consumed", "plan_consumed")  # bytes in memory, base64 in the JSON file
_NAME = re.compile(r"data_state_(\d{7})\.json$")


def merge_states(states: Sequence[dict | None]) -> dict | None:
    """One state from the states of all ranks (same epoch and plan): the union of consumed clips."""
    if not states or any(s is None for s in states):
        if states and all(s is None for s in states):
            return None  # nothing consumed yet and no state loaded: nothing to merge
        raise ValueError("merge_states: no states given (or only some ranks have one)")
    epochs = {int(s["epoch"]) for s in states}
    ns = {int(s["n"]) for s in states}
    if len(epochs) != 1 or len(ns) != 1:
        raise ValueError(f"merge_states: ranks disagree on epoch {sorted(epochs)} or n {sorted(ns)}; "
                         f"checkpoint all ranks at the same step")
    bits = np.bitwise_or.reduce([np.frombuffer(s["consumed"], dtype=np.uint8) for s in states])
    merged = {"epoch": epochs.pop(), "n": ns.pop(), "seed": int(states[0]["seed"]),
              "consumed": bits.tobytes()}
    # The plan is the same on every rank by construction; a state without one (or ranks that
    # disagree) merges without it, and a resume then re-plans the unconsumed clips.
    plans = [(s.get("plan"), s.get("plan_consumed")) for s in states]
    if plans[0][0] is not None and all(p == plans[0] for p in plans):
        merged["plan"], merged["plan_consumed"] = plans[0]
    return merged


def stream_state_path(ckpt_dir, step: int) -> Path:
    return Path(ckpt_dir) / f"data_state_{int(step):07d}.json"


def save_stream_state(ckpt_dir, step: int, state: dict) -> Path:
    """Write a (merged) stream state for the checkpoint of ``step`` as JSON (no pickle),
    atomically and fsynced. Call it before the model checkpoint of ``step`` and prune with
    :func:`prune_stream_states` after it."""
    body = dict(state, step=int(step))
    for key in _BITMAPS:
        if key in body:
            body[key] = base64.b64encode(body[key]).decode("ascii")
    text = json.dumps(body)
    return atomic_write(stream_state_path(ckpt_dir, step), lambda p: p.write_text(text))


def prune_stream_states(ckpt_dir, keep: int, latest_step: int) -> list[Path]:
    """Delete all but the newest ``keep`` data states up to ``latest_step`` (the step whose model
    checkpoint was just written); states of later steps (a run that went back to an older
    checkpoint never writes them, but a crashed one may have) are deleted too. Returns what went."""
    found = sorted((int(m.group(1)), p) for p in Path(ckpt_dir).glob("data_state_*.json")
                   if (m := _NAME.search(p.name)))
    upto = [p for s, p in found if s <= latest_step]
    gone = upto[:-max(1, keep)] + [p for s, p in found if s > latest_step]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def load_stream_state(ckpt_dir, step: int) -> dict | None:
    """The state saved with the checkpoint of ``step``; None at step 0 when none was written
    (a run stopped before its first batch consumed nothing)."""
    path = stream_state_path(ckpt_dir, step)
    if not path.is_file():
        if int(step) == 0:
            return None
        raise FileNotFoundError(f"resume: the shard stream state for step {step} ({path}) is "
                                f"missing; it is written with every checkpoint of a shard source")
    body = json.loads(path.read_text())
    for key in _BITMAPS:
        if key in body:
            body[key] = base64.b64decode(body[key])
    return body
