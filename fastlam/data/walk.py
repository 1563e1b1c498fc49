"""Walking a folder of videos without losing any silently.

``os.walk`` and ``Path.rglob`` skip a directory they cannot list (permissions, a stale network
mount, a broken link loop) without a word, so its videos would vanish from an index or a
training set. :func:`walk_videos` walks the same way but returns what it could not read, and
:func:`warn_unreadable` says so; the index summary and the dataset's report list them too.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

__all__ = ["walk_videos", "warn_unreadable", "UnreadableWarning"]


class UnreadableWarning(UserWarning):
    """Part of a source folder could not be read: its videos are not in the index / dataset."""


def walk_videos(root, extensions: Sequence[str]) -> tuple[list[str], list[dict]]:
    """(paths of the files under ``root`` whose names end in one of ``extensions`` (lower-case,
    with the dot), joined onto ``root`` as given, folder by folder, names sorted;
    ``[{"path", "reason"}]`` for every directory that could not be listed)."""
    exts = tuple(extensions)
    found: list[str] = []
    unreadable: list[dict] = []

    def failed(err: OSError) -> None:
        unreadable.append({"path": os.path.abspath(err.filename or str(root)),
                           "reason": f"{type(err).__name__}: {err.strerror or err}"})

    for folder, dirs, files in os.walk(root, onerror=failed):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(exts):
                found.append(os.path.join(folder, name))
    return found, unreadable


def warn_unreadable(source, unreadable: list[dict], shown: int = 20) -> None:
    """One warning naming the unreadable directories of ``source`` (the first ``shown``)."""
    if not unreadable:
        return
    lines = [f"  {u['path']}: {u['reason']}" for u in unreadable[:shown]]
    if len(unreadable) > shown:
        lines.append(f"  ... and {len(unreadable) - shown} more")
    warnings.warn(f"source {str(source)!r}: {len(unreadable)} director{'y' if len(unreadable) == 1 else 'ies'} "
                  f"could not be read; the videos in them are left out:\n" + "\n".join(lines),
                  UnreadableWarning, stacklevel=3)
