"""The one record of bad inputs every data source keeps: what was skipped, and why.

Every source (folder, list, manifest, shards, the DALI loaders) skips a bad input rather than
stopping the run, and records it here with the reason. With DataLoader workers each process
holds its own copy, so the record is shared through an append-only JSON-lines file
(``bad_file_log``, ``out_dir/bad_files.jsonl`` in training): each process appends one line per
new entry (``O_APPEND`` makes each single write land whole), and every copy reads the lines
others wrote when asked, so the main process reports them all.

An entry has a ``kind`` (``bad``: the input is skipped; ``overstated``: a video whose stated
duration runs past its end, still used), a ``path`` (a file, or ``<shard>#<sample>``), a
``reason``, and a ``group`` (the file, or the shard a sample is in) by which
:meth:`BadLog.check_share` names the worst offenders when more than ``max_fraction`` of an
epoch's inputs are bad: past that share skipping hides a broken corpus, so it is an error.
"""
from __future__ import annotations

import json
import os
from collections import Counter

__all__ = ["BadLog", "TooManyBadInputs"]


class TooManyBadInputs(RuntimeError):
    """More than ``data.max_bad_fraction`` of an epoch's inputs are bad."""


class BadLog:
    """Bad inputs found by this process and (through ``path``) by every other one."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = str(path) if path is not None else None
        self.entries: dict[tuple[str, str], dict] = {}  # (kind, path) -> entry
        self._offset = 0

    def sync(self) -> None:
        """Read the entries other processes appended since the last call."""
        if self.path is None or not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        # Only whole lines: a line another process is still writing is read next time.
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
                self.entries.setdefault((rec["kind"], rec["path"]), rec)
            except (ValueError, KeyError, TypeError):
                continue

    def add(self, kind: str, path: str, reason: str, group: str | None = None) -> bool:
        """Record ``path`` as ``kind`` with ``reason``; False when it was already recorded."""
        if (kind, path) in self.entries:
            return False
        rec = {"kind": kind, "path": path, "reason": reason, "group": group or path}
        self.entries[(kind, path)] = rec
        if self.path is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(rec) + "\n").encode("utf-8"))
            finally:
                os.close(fd)
        return True

    def reasons(self, kind: str = "bad", sync: bool = True) -> dict[str, str]:
        """path -> reason of every entry of ``kind`` (all processes' unless ``sync`` is False)."""
        if sync:
            self.sync()
        return {p: r["reason"] for (k, p), r in self.entries.items() if k == kind}

    def worst_groups(self, kind: str = "bad", top: int = 5) -> list[tuple[str, int]]:
        """The groups (files, shards) with the most entries of ``kind``, most first."""
        counts = Counter(r["group"] for (k, _), r in self.entries.items() if k == kind)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    def check_share(self, total: int, max_fraction: float, what: str = "inputs") -> None:
        """Raise :class:`TooManyBadInputs` naming the worst groups when more than
        ``max_fraction`` of ``total`` inputs are bad."""
        self.sync()
        n_bad = sum(1 for (k, _) in self.entries if k == "bad")
        if total <= 0 or n_bad <= max_fraction * total:
            return
        worst = self.worst_groups()
        first = {}
        for (k, _), r in self.entries.items():
            if k == "bad":
                first.setdefault(r["group"], r["reason"])
        lines = [f"  {g}: {n} bad (e.g. {first[g]})" for g, n in worst]
        raise TooManyBadInputs(
            f"{n_bad} of {total} {what} of the epoch are bad ({100.0 * n_bad / total:.1f}% > "
            f"data.max_bad_fraction={max_fraction}); the worst:\n" + "\n".join(lines)
            + (f"\nthe full list: {self.path}" if self.path else ""))
