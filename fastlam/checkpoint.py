"""Atomic, safe checkpoints.

A checkpoint is written to a temporary file in the same directory and renamed over the target
(``os.replace`` is atomic on POSIX), so a crash mid-write never leaves a truncated file where a
good one was. Loading uses ``torch.load(weights_only=True)``: checkpoints hold only tensors and
plain containers, and nothing a downloaded file contains can execute code.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | Path, state: dict) -> Path:
    return atomic_write(path, lambda p: torch.save(state, p))


def save_checkpoint_copies(paths: list[str | Path], state: dict) -> list[Path]:
    """Write the same checkpoint to several paths (``step_N.pt`` and ``latest.pt``), pickling
    it once: the state is serialised into memory, then each file is written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    return [atomic_write(p, lambda tmp: tmp.write_bytes(data)) for p in paths]


class CheckpointError(ValueError):
    """A file that is not a checkpoint fastlam can read (corrupt, truncated, foreign objects)."""


def load_checkpoint(path: str | Path, map_location="cpu", *, expected: str = "a fastlam training checkpoint") -> dict:
    """``torch.load(weights_only=True)``; a file it refuses (objects other than tensors and
    plain containers, a corrupt or truncated file) is a :class:`CheckpointError` that names
    ``path`` and what was expected, never PyTorch's advice to retry with ``weights_only=False``
    (which would run whatever code the file carries)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # Random or truncated bytes reach many corners of the unpickler: besides its own errors,
    # a legacy-format header can fail to decode (UnicodeDecodeError, a ValueError), index or
    # size fields can be out of range.
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError, TypeError, ValueError,
            KeyError, IndexError, OverflowError) as e:
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            reason = "it holds objects other than tensors and plain containers, which fastlam never unpickles"
        else:
            reason = "it is not a readable torch checkpoint (corrupt, truncated or another format)"
        raise CheckpointError(f"checkpoint: {path} cannot be loaded: {reason}; expected {expected}") from None
