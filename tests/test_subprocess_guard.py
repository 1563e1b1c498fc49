"""The suite's guard for child processes: no wall-clock limit, a hang is still caught, and no
process the child started outlives the helper."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from subprocess_guard import ChildStalled, group_cpu_seconds, run_guarded

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the guard reads /proc (Linux)")


def test_a_child_that_keeps_computing_runs_past_the_stall_window():
    # 3 s of work against a 1 s window: a timeout of 1 s would have killed it.
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 3.0: pass\nprint('done')"
    proc = run_guarded([sys.executable, "-c", code], stall_s=1.0)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr


def test_a_child_that_stops_working_is_killed_and_reported():
    t0 = time.monotonic()
    with pytest.raises(ChildStalled, match="no progress"):
        run_guarded([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"], stall_s=2.0)
    assert time.monotonic() - t0 < 300  # caught by the guard, not by waiting out the sleep


def test_no_process_the_child_started_outlives_the_helper(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # The child starts a sleeping grandchild and exits at once, as a killed compile pool's
    # parent would: the helper must not leave the grandchild running.
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n")
    proc = run_guarded([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # SIGKILL was sent; the orphan is reaped by init
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # killed, not yet reaped
                return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"grandchild {pid} still running after the helper returned")


def test_group_cpu_counts_this_process_group():
    assert group_cpu_seconds(os.getpgrp()) > 0
