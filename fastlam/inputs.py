"""Paths the user names (command-line arguments, config keys) that are not what they should be.

Every command line reads checkpoints, configs, manifests, data folders and results files that
the user points at. When one is wrong (a text file where a checkpoint belongs, a truncated
download, a folder where a file is expected, a typo), the error is one line that names the
argument and the path, says what is there (:func:`describe_path`) and what to pass instead.
:class:`InputError` is a :class:`~fastlam.config.ConfigError`, so every command line that
reports config errors (one line, exit status 2) reports these the same way.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from .config import ConfigError

__all__ = ["InputError", "MissingInputError", "check_path_list", "describe_path", "one_line", "output_file", "output_folder",
           "read_json", "require_file", "require_folder", "sniff"]

_HEAD = 4096  # bytes read to tell text from binary formats
_JSON_MAX = 1 << 20  # larger text files are not parsed just to say "a JSON file"
# Legacy (pre-zip) torch.save files open with a pickled magic number (protocol 2, LONG1).
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


class InputError(ConfigError):
    """A path given on the command line or in a config that is missing or holds the wrong thing."""


class MissingInputError(InputError, FileNotFoundError):
    """Nothing at the path; also a FileNotFoundError, so callers that catch that still do."""


def one_line(error: BaseException | str, limit: int = 400) -> str:
    """An error's text on one line (torch's load_state_dict lists every key on its own line),
    cut at ``limit`` characters: a command line's error stays one line."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _safetensors_header(head: bytes, size: int) -> str | None:
    """'complete' or 'cut short' for a safetensors file (8-byte length, then a JSON header)."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n > size:  # a length that overshoots could still be the first half of a real file
        return "cut short" if n < (1 << 32) else None
    return "complete" if 8 + n <= size else "cut short"


def _text_of(head: bytes, size: int) -> str | None:
    """``head`` as text when the file looks like UTF-8 text (no NUL bytes), else None."""
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut by the end of the sample is still text.
        if size > len(head) and e.start >= len(head) - 3:
            return head[:e.start].decode("utf-8")
        return None


def describe_path(path: str | os.PathLike) -> str:
    """What is at ``path``, in words, for an error message ("a text file (first line: ...)",
    "an empty file (0 bytes)", "a zip archive cut short ...", "a folder (3 entries)", ...)."""
    return sniff(path)[1]


def sniff(path: str | os.PathLike) -> tuple[str, str]:
    """(kind, words) for what is at ``path``. The kind is ``missing``, ``folder``, ``special``,
    ``empty``, ``torch`` (zip or legacy torch.save), ``pickle``, ``safetensors``, ``cut_short`` (a
    zip or safetensors file missing its end), ``zip``, ``json``, ``text`` or ``binary``; the words
    are :func:`describe_path`'s. Reads at most the first few KiB (and a zip's directory, at its
    end); never unpickles or parses a checkpoint."""
    p = Path(path)
    if not p.exists():
        return "missing", ("nothing (no such file or folder)" if not p.is_symlink() else "a broken symbolic link")
    if p.is_dir():
        try:
            n = sum(1 for _ in p.iterdir())
        except OSError:
            return "folder", "a folder"
        return "folder", ("an empty folder" if n == 0 else f"a folder ({n} entr{'y' if n == 1 else 'ies'})")
    if not p.is_file():
        return "special", "a special file (not a regular file)"
    size = p.stat().st_size
    if size == 0:
        return "empty", "an empty file (0 bytes)"
    with open(p, "rb") as f:
        head = f.read(_HEAD)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            # The central directory sits at the end of the archive: a download cut short loses it.
            return "cut_short", f"a zip archive cut short or damaged ({size} bytes; a truncated download or copy?)"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch", f"a torch checkpoint (zip, {size} bytes)"
        return "zip", f"a zip archive ({len(names)} members) that is not a torch checkpoint"
    if head.startswith(_LEGACY_TORCH):
        return "torch", f"a torch checkpoint (legacy format, {size} bytes)"
    st = _safetensors_header(head, size)
    if st == "complete":
        return "safetensors", "a safetensors file"
    if st == "cut short":
        return "cut_short", f"a safetensors file cut short ({size} bytes; a truncated download or copy?)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle", f"a pickle file ({size} bytes)"
    text = _text_of(head, size)
    if text is None:
        return "binary", f"a binary file of an unknown format ({size} bytes)"
    stripped = text.lstrip()
    if not stripped:
        return "text", f"a text file holding only white space ({size} bytes)"
    if stripped[:1] in "{[" and size <= _JSON_MAX:
        try:
            value = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            pass
        else:
            kind = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else "value"
            return "json", f"a JSON file (a JSON {kind})"
    first = stripped.splitlines()[0].strip()
    shown = first if len(first) <= 40 else first[:37] + "..."
    return "text", f"a text file (first line: {shown!r})"


def _require(path: str | os.PathLike, name: str, expected: str, kind: str) -> Path:
    """``path`` as a Path when it is a ``kind`` ("file": a regular file, or "folder");
    otherwise an :class:`InputError` naming ``name`` (the argument or config key), the path,
    what is there, and ``expected``."""
    p = Path(path)
    if p.is_file() if kind == "file" else p.is_dir():
        return p
    if not p.exists():
        raise MissingInputError(f"{name}: no {kind} at {p}; pass {expected}")
    raise InputError(f"{name}: {p} is {describe_path(p)}, not a {kind}; pass {expected}")


def require_file(path: str | os.PathLike, name: str, expected: str) -> Path:
    """``path`` as a Path when it is a regular file; otherwise an :class:`InputError` naming
    ``name`` (the argument or config key), the path, what is there, and ``expected``."""
    return _require(path, name, expected, "file")


def require_folder(path: str | os.PathLike, name: str, expected: str) -> Path:
    """``path`` as a Path when it is a folder; otherwise an :class:`InputError` as above."""
    return _require(path, name, expected, "folder")


def output_folder(path: str | os.PathLike, name: str) -> Path:
    """``path`` for a folder a command writes into: it may be missing (it is created later),
    but nothing on the way to it may be a file."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is" if q == p else f"lies inside {q}, which is"
                raise InputError(f"{name}: {p} {what} {describe_path(q)}, not a folder; pass a folder to "
                                 "write into (it is created if missing)")
            break
    return p


def output_file(path: str | os.PathLike, name: str) -> Path:
    """``path`` for a file a command writes: it may be missing, but it may not be a folder, and
    nothing on the way to it may be a file."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{name}: {p} is {describe_path(p)}; pass the path of a file to write")
    output_folder(p.parent, name)
    return p


def check_path_list(path: str | os.PathLike, entries: list[str], name: str, expected: str) -> None:
    """A list file whose entries all fail to exist is no list of the user's files: a text, JSON
    or other file given by mistake (or a list for another machine). An :class:`InputError`
    naming ``name``, the file, what it is and its first entry. Lists that name URLs are left
    to their readers; one existing entry is enough (the others are then bad files, reported as
    such), so a long valid list costs one ``stat``."""
    if any("://" in e for e in entries):
        return
    if entries and not any(os.path.exists(e) for e in entries):
        raise InputError(f"{name}: {path} is {describe_path(path)}; read as a list of paths, none of its "
                         f"{len(entries)} entries exists (first: {entries[0]!r}); pass {expected}")


def read_json(path: str | os.PathLike, name: str, expected: str, *, keys: tuple[str, ...] = ()) -> dict:
    """The JSON object in file ``path``; an :class:`InputError` (naming ``name`` and the path)
    when it is missing, not JSON, not an object, or lacks one of ``keys``."""
    p = require_file(path, name, expected)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise InputError(f"{name}: {p} is {describe_path(p)}, not valid JSON; pass {expected}") from None
    if not isinstance(value, dict):
        raise InputError(f"{name}: {p} holds a JSON {type(value).__name__}, not an object; pass {expected}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise InputError(f"{name}: {p} has no {', '.join(repr(k) for k in missing)} "
                         f"(it has {sorted(value)[:8]}); pass {expected}")
    return value
