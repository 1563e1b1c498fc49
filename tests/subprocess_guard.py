"""Run a child process in a test without a wall-clock limit, yet never hang the suite.

A fixed ``timeout=`` is wrong for the suite: on a busy 2-core machine correct code can take
several times longer than on an idle one (the static compile check of 474 configurations was
killed at its 600 s limit under a load of 4-7). What a guard must catch is a child that has
*stopped working* (a deadlock, a rendezvous that never completes), so the guard here watches
the CPU time of the child's whole process group: while the group keeps computing it may run as
long as it needs; once it has used less than ``min_cpu_share`` of one core over the last
``stall_s`` seconds it is killed and the test fails with what it printed.

Each child starts in a new session, and the whole group is killed on every way out of the
helper (the child finished, the test was interrupted, the guard fired), so worker processes
the child started (compile pools, DataLoader workers, torchrun ranks) are never left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

STALL_S = 300.0  # no progress for 5 minutes: correct code under any plausible load makes some
MIN_CPU_SHARE = 0.02  # of one core; launcher heartbeats and polling threads stay well below it
_TICK = (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100) or 100


class ChildStalled(AssertionError):
    """The child's process group stopped using CPU (a hang): it was killed."""


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of every live process in group ``pgid``, plus what their reaped
    children used; None where /proc is not there to read (then the guard does not fire)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # Field 2 (comm) may hold spaces and parentheses: split after its closing one.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) != pgid:  # fields[0] is state (field 3); pgrp is field 5
            continue
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += utime + stime + cutime + cstime
    return total / _TICK


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it leads a session of its own), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()  # SIGKILL cannot be ignored or caught: this only reaps


class StallWatch:
    """Tells whether a child's process group (started with ``start_new_session=True``) still
    makes progress; :meth:`check` kills the group and raises :class:`ChildStalled` once it has
    used less than ``min_cpu_share`` of a core over the last ``stall_s`` seconds."""

    def __init__(self, proc: subprocess.Popen, *, stall_s: float = STALL_S, min_cpu_share: float = MIN_CPU_SHARE):
        self.proc, self.stall_s, self.min_cpu_share = proc, stall_s, min_cpu_share
        self.history: list[tuple[float, float]] = []  # (monotonic time, group CPU seconds)

    def check(self) -> None:
        cpu = group_cpu_seconds(self.proc.pid)
        if cpu is None:
            return
        now = time.monotonic()
        self.history.append((now, cpu))
        while len(self.history) > 1 and self.history[1][0] <= now - self.stall_s:
            self.history.pop(0)
        t0, c0 = self.history[0]
        if now - t0 >= self.stall_s and cpu - c0 < self.min_cpu_share * (now - t0):
            kill_group(self.proc)
            raise ChildStalled(f"{self.proc.args!r}: no progress for {now - t0:.0f} s "
                               f"({cpu - c0:.2f} CPU s used): killed as hung")


def wait_guarded(proc: subprocess.Popen, *, stall_s: float = STALL_S, poll_s: float = 1.0) -> int:
    """Wait for ``proc`` (started with ``start_new_session=True``) while its group makes progress;
    kill the group and raise :class:`ChildStalled` when it stops. Returns the exit code."""
    watch = StallWatch(proc, stall_s=stall_s)
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            watch.check()


def run_guarded(cmd, *, stall_s: float = STALL_S, input: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)`` with the stall guard in
    place of a timeout, and the child's process group killed on every exit path."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # Files, not pipes: nobody has to drain a pipe while we poll, and nothing blocks.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.PIPE if input is not None else None,
                                text=True, start_new_session=True, **kwargs)
        try:
            if input is not None:
                proc.stdin.write(input)
                proc.stdin.close()
            rc = wait_guarded(proc, stall_s=stall_s)
        finally:
            kill_group(proc)  # workers the child left behind (or everything, on an interrupt)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read(), err.read())
