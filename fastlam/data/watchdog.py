"""Hard timeouts for decoding: run it in a child process and kill the child when it hangs.

``read_clip(timeout_s=...)`` only checks the clock between decoded frames, so a call that
blocks *inside* FFmpeg (a read from a stalled network mount or pipe, a demuxer looping on a
damaged index) never returns. The only reliable interruption is a process boundary:

* :class:`Watchdog` keeps one forked child that runs calls sent over a pipe; when a call
  produces no answer within ``timeout_s`` the child is killed (SIGKILL) and a fresh one is
  forked for the next call, and the caller gets :class:`DecodeTimeout`.
* :class:`GuardedClipDataset` wraps a :class:`~fastlam.data.VideoClipDataset`: items are
  produced in the child; a file whose read hangs is marked bad (counted and reported like
  any other bad file, with reason ``"decoder hung ..."``) and the item is served from the
  next readable video, exactly as the dataset's own bad-file policy does.

Costs: the clip crosses a pipe (pickled, ~10 ms for a 16x256x256 float clip) and the child
is forked from the current process (lazily, once, and again after each kill). It works inside
DataLoader workers: every worker forks its own child. Linux/macOS only (``fork``).
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from .video import VideoDecodeError

__all__ = ["DecodeTimeout", "Watchdog", "GuardedClipDataset"]


class DecodeTimeout(VideoDecodeError):
    """A decode produced nothing within the hard timeout; the process doing it was killed."""


def _child_loop(conn, state):
    # Nothing inherited from the parent is ever collected here: a finaliser of an object the
    # parent left to the garbage collector (a PyAV codec context, which joins its FFmpeg
    # threads) would wait for threads that fork did not copy, forever.
    gc.freeze()
    torch.set_num_threads(1)  # a decode worker; the parent owns the cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args, kwargs = msg
        try:
            if getattr(fn, "_watchdog_stateful", False):
                kwargs = dict(kwargs, state=state, progress=lambda note: conn.send(("progress", note)))
            result = ("ok", fn(*args, **kwargs))
        except Exception as e:  # re-raised in the parent
            result = ("err", e)
        try:
            conn.send(result)
        except Exception as e:  # an unpicklable result or exception
            conn.send(("err", RuntimeError(f"watchdog: cannot send the result back: {type(e).__name__}: {e}")))


class Watchdog:
    """Runs picklable-result calls in a forked child with a hard wall-clock timeout.

    ``state`` is an object the child inherits at fork time (e.g. a dataset), handed to
    functions marked with :func:`stateful`, which also get a ``progress(note)`` callback
    whose last note before a hang is reported in the :class:`DecodeTimeout`.
    """

    def __init__(self, timeout_s: float, state: Any = None):
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.state = state
        self._proc = None
        self._conn = None
        self.kills = 0

    def __getstate__(self):
        # A copy (e.g. in a DataLoader worker) forks its own child on first use.
        d = dict(self.__dict__)
        d["_proc"] = d["_conn"] = None
        return d

    def _start(self):
        ctx = mp.get_context("fork")
        # Cyclic garbage is freed here, where its finalisers are safe, not inherited (see
        # _child_loop).
        gc.collect()
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_child_loop, args=(child, self.state), daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def _kill(self):
        if self._proc is not None:
            if self._proc.is_alive():
                os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.join(timeout=5)
            self._conn.close()
        self._proc = self._conn = None

    def close(self):
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(timeout=1)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass

    def call(self, fn: Callable, *args, what: str = "call", **kwargs):
        """``fn(*args, **kwargs)`` in the child; :class:`DecodeTimeout` if it hangs."""
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._kill()
            self._start()
        self._conn.send((fn, args, kwargs))
        last_note = None
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._conn.poll(left):
                self._kill()
                self.kills += 1
                raise DecodeTimeout(last_note if isinstance(last_note, str) else what,
                                    f"decoder hung: no result within {self.timeout_s:g} s "
                                    f"(decode process killed)")
            try:
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                # The child died (a decoder crash: segfault, abort, OOM kill).
                code = self._proc.exitcode if self._proc is not None else None
                self._kill()
                raise VideoDecodeError(last_note if isinstance(last_note, str) else what,
                                       f"decode process died (exit code {code})") from None
            if kind == "progress":
                last_note = payload
                # Progress means the child is alive and moving on to the next file: each
                # file gets the full timeout.
                deadline = time.monotonic() + self.timeout_s
                continue
            if kind == "err":
                raise payload
            return payload


def stateful(fn):
    fn._watchdog_stateful = True
    return fn


@stateful
def _dataset_item(index, epoch, *, progress, state):
    ds = state
    ds.set_epoch(epoch)
    if not getattr(ds, "_watchdog_wrapped", False):
        inner = ds._try_read

        def traced(path, *a, **k):
            progress(path)  # the parent blames this path if the read never returns
            return inner(path, *a, **k)

        ds._try_read = traced
        ds._watchdog_wrapped = True
    before = dict(ds._bad)
    item = ds[index]
    new_bad = {p: r for p, r in ds._bad.items() if p not in before}
    return item, new_bad, dict(ds._padded)


class GuardedClipDataset(Dataset):
    """A :class:`~fastlam.data.VideoClipDataset` whose reads have a hard timeout.

    Same items, length, ``set_epoch``, ``bad_files`` and ``report`` as the wrapped dataset;
    a read that hangs for ``timeout_s`` marks that file bad and the item comes from the next
    readable video. Use it for untrusted folders (network mounts, scraped files); the
    dataset's own ``decode_timeout_s`` still catches slow-but-progressing decodes cheaply.
    """

    def __init__(self, dataset, timeout_s: float = 60.0):
        for attr in ("_try_read", "_mark_bad", "paths", "set_epoch"):
            if not hasattr(dataset, attr):
                raise TypeError(f"dataset must be a VideoClipDataset (missing {attr!r}), "
                                f"got {type(dataset).__name__}")
        self.dataset = dataset
        self.timeout_s = float(timeout_s)
        self._watchdog: Watchdog | None = None

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    @property
    def bad_files(self):
        return self.dataset.bad_files

    def report(self) -> str:
        return self.dataset.report()

    @property
    def timeouts(self) -> int:
        return 0 if self._watchdog is None else self._watchdog.kills

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_watchdog"] = None
        return d

    def __getitem__(self, index: int) -> torch.Tensor:
        ds = self.dataset
        for _ in range(len(ds.paths) + 1):
            if self._watchdog is None:
                self._watchdog = Watchdog(self.timeout_s, state=ds)
            try:
                item, new_bad, padded = self._watchdog.call(_dataset_item, index, ds.epoch,
                                                            what=f"item {index}")
            except DecodeTimeout as e:
                if e.path not in ds.paths:
                    raise
                # The next child is forked from this process, which now knows the file is
                # bad, so the retry skips it.
                ds._mark_bad(e.path, e.reason)
                continue
            except VideoDecodeError as e:
                if e.path not in ds.paths:
                    raise
                ds._mark_bad(e.path, e.reason)
                self._watchdog = None  # the child died: fork a fresh one with the new state
                continue
            known = ds.bad_files
            for path, reason in new_bad.items():
                if path not in known:
                    ds._mark_bad(path, reason)
            ds._padded.update(padded)
            return item
        raise RuntimeError(f"no readable video left in the dataset: {ds.report()}")
