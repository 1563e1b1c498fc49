"""Atomic, safe checkpoints.

A checkpoint is written to a temporary file in the same directory and renamed over the target
(``os.replace`` is atomic on POSIX), so a crash mid-write never leaves a truncated file where a
good one was. Loading uses ``torch.load(weights_only=True)``: checkpoints hold only tensors and
plain containers, and nothing a downloaded file contains can execute code; safetensors files
are read with safetensors. A file that is not what it should be (text, JSON, empty, cut short,
a folder) is a :class:`CheckpointError`: one line naming the path, what is there and what to
pass, which every command line prints as such with exit status 2.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .inputs import InputError, MissingInputError, describe_path, sniff


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


def save_weights_folder(directory: str | Path, module: torch.nn.Module, config: dict) -> Path:
    """Write ``module``'s weights as ``model.safetensors`` and ``config`` as ``config.json`` into
    ``directory``, each atomically: the layout every fastlam model, decoder and controller
    folder has, which their ``from_pretrained`` / loaders read back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p)))
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return directory


def save_checkpoint(path: str | Path, state: dict) -> Path:
    return atomic_write(path, lambda p: torch.save(state, p))


def save_checkpoint_copies(paths: list[str | Path], state: dict) -> list[Path]:
    """Write the same checkpoint to several paths (``step_N.pt`` and ``latest.pt``), pickling
    it once: the state is serialised into memory, then each file is written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    return [atomic_write(p, lambda tmp: tmp.write_bytes(data)) for p in paths]


class CheckpointError(InputError):
    """A file that is not a checkpoint fastlam can read (corrupt, truncated, foreign objects,
    another format). An :class:`~fastlam.inputs.InputError`, hence a ValueError and a ConfigError."""


# The files torch.load may be asked to read (kinds of inputs.sniff); anything else is refused unread.
_TORCH_KINDS = ("torch", "pickle")


def load_checkpoint(path: str | Path, map_location="cpu", *, expected: str = "a fastlam training checkpoint",
                    name: str = "checkpoint", mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)``; a file it refuses (objects other than tensors and
    plain containers, a corrupt or truncated file, text, JSON, an empty file, a folder) is a
    :class:`CheckpointError` that names ``name`` (the argument), ``path``, what the file is and
    ``expected``, never PyTorch's advice to retry with ``weights_only=False`` (which would run
    whatever code the file carries). ``mmap`` maps a zip checkpoint instead of reading it."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{name}: no file at {path}; pass {expected}")
    kind, found = sniff(path)
    if not path.is_file():
        raise CheckpointError(f"{name}: {path} is {found}, not a file; pass {expected}")
    if kind not in _TORCH_KINDS:  # text, JSON, empty, cut short: say so without unpickling
        raise CheckpointError(f"{name}: {path} is not a readable torch checkpoint: it is {found}; expected {expected}")
    try:
        # mmap needs the zip format (the legacy one is read whole).
        return torch.load(path, map_location=map_location, weights_only=True,
                          mmap=mmap and zipfile.is_zipfile(path))
    # Damaged bytes reach many corners of the unpickler and the zip reader (UnicodeDecodeError,
    # KeyError, IndexError, OverflowError, EOFError, RuntimeError, MemoryError for a bogus size
    # ...): every one of them means the same thing to the user.
    except Exception as e:  # noqa: BLE001
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            reason = "it holds objects other than tensors and plain containers, which fastlam never unpickles"
        else:
            reason = f"it is {found} but cannot be read (corrupt or truncated)"
        raise CheckpointError(f"{name}: {path} is not a readable torch checkpoint: {reason}; expected {expected}") from None


def load_safetensors(path: str | Path, device="cpu", *, expected: str, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``; anything else is a :class:`CheckpointError`
    naming ``name``, ``path``, what the file is and ``expected``."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{name}: no file at {path}; pass {expected}")
    if not path.is_file():
        raise CheckpointError(f"{name}: {path} is {describe_path(path)}, not a file; pass {expected}")
    try:
        return load_file(str(path), device=str(device))
    except Exception:  # noqa: BLE001 - safetensors raises its own error types, and OSError, for a bad file
        raise CheckpointError(f"{name}: {path} is not a readable safetensors file: it is {describe_path(path)}; "
                              f"expected {expected}") from None


def check_weights_path(path: str | Path, *, expected: str, name: str = "checkpoint") -> Path:
    """A cheap check, before anything is built, that ``path`` holds weights: a torch
    checkpoint, a safetensors file, or a folder with ``model.safetensors`` (or a sharded
    ``model.safetensors.index.json``). Reads only file headers (and a zip's directory), so a
    multi-GB checkpoint costs nothing here; the real load can still find it corrupt inside."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{name}: no file at {path}; pass {expected}")
    if path.is_dir():
        if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
            return path
        raise CheckpointError(f"{name}: {path} is {describe_path(path)} without model.safetensors or "
                              f"model.safetensors.index.json; pass {expected}")
    kind, found = sniff(path)
    if kind in (*_TORCH_KINDS, "safetensors"):
        return path
    raise CheckpointError(f"{name}: {path} is not a weights file: it is {found}; pass {expected}")
