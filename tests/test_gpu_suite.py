"""benchmarks/gpu_suite.sh: the --quick plan fits its 7-minute budget by construction and runs
its steps in the order of value; its --dry-run (tiny shapes, Triton interpreter) runs end to end
on CPU with only what the GPU image has (deepspeed, DALI, PyAV, transformers and flash-attn
imports are made to fail) and returns everything in at most 8 plain files; a step killed half-way
keeps the rows it wrote. The set-up on a bare copy with an old pip: tests/test_suite_setup.py."""
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from subprocess_guard import StallWatch, kill_group, run_guarded

from benchmarks import _common, gpu_correctness

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
# Not installed on the GPU image (issue 16): anything the suite touches must import without them.
MISSING_ON_GPU_IMAGE = ("deepspeed", "nvidia.dali", "av", "transformers", "flash_attn", "decord")
# What a device call returns (device README): 8 files, named in letters, digits, '.', '_', '-'.
MAX_FILES_BACK = 8
FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")

BLOCKER = f'''
import importlib.abc, sys
BLOCKED = {MISSING_ON_GPU_IMAGE!r}
class _NotOnTheGpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is not installed on the GPU image")
        return None
sys.meta_path.insert(0, _NotOnTheGpuImage())
'''


def suite_env(tmp_path: Path, **extra) -> dict:
    """The suite's environment for a dry run from this test run's Python, with the GPU image's
    missing packages blocked (through a sitecustomize on PYTHONPATH)."""
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCKER)
    base = {k: v for k, v in os.environ.items() if k not in ("FASTLAM_COMMIT", "SUITE_STEPS")}
    return dict(base, OUT=str(tmp_path / "out"), SUITE_WORK_DIR=str(tmp_path / "work"), PYTHON=sys.executable,
                PYTHONPATH=f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra)


def archived(out: Path) -> dict:
    """{path inside results.tar.gz: bytes} of the suite's archive."""
    with tarfile.open(out / "results.tar.gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_quick_plan_fits_seven_minutes_in_the_order_of_value():
    text = SUITE.read_text()
    start = text.index('if [ "$MODE" = quick ]')
    quick = text[start:text.index('if [ "$MODE" = dry ]', start)]
    steps = re.findall(r"run_step (\w+) (\d+) ", quick)
    setup = int(re.search(r"quick\) SETUP_S=(\d+)", text).group(1))
    # Compile first, then bf16 hd64 correctness and the fused ops, then timing, then the rest.
    assert [name for name, _ in steps] == ["warmup", "correctness", "attention", "train_step", "correctness_rest",
                                           "tune_tiles"]
    assert sum(int(b) for _, b in steps) + setup < 7 * 60
    # The dry run runs the same steps in the same order.
    dry = text[text.index('if [ "$MODE" = dry ]', start):text.index("# ---- full mode")]
    assert re.findall(r"run_step (\w+) ", dry) == [name for name, _ in steps]


def test_correctness_parts_put_bf16_head_dim_64_first():
    first = [(name, str(dtype)) for _, name, dtype, _ in gpu_correctness.plan(False, "first")]
    rest = [(name, str(dtype)) for _, name, dtype, _ in gpu_correctness.plan(False, "rest")]
    assert first[0] == ("attention F=256 hd=64 rope=none dq=atomic", "torch.bfloat16")
    assert any(n.startswith("attention F=258 hd=64") for n, _ in first)
    assert all(d == "torch.bfloat16" and "hd=128" not in n for n, d in first)
    assert any(n.startswith("prediction_loss") for n, _ in first)  # the fused ops
    assert all("hd=128" in n or d == "torch.float16" for n, d in rest)
    assert len(first) + len(rest) == len(gpu_correctness.plan(False, "all"))


def test_commit_comes_from_the_environment_not_from_another_repository(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "REPO", tmp_path)  # a copy of the tree without .git
    monkeypatch.delenv("FASTLAM_COMMIT", raising=False)
    assert _common.git_commit() == "unknown"
    monkeypatch.setenv("FASTLAM_COMMIT", "0123abc")
    assert _common.git_commit() == "0123abc"


@pytest.mark.slow
def test_dry_run_end_to_end_returns_everything_in_at_most_8_files(tmp_path):
    env = suite_env(tmp_path, SUITE_DRY_CORRECTNESS_BUDGET_S="1")
    res = run_guarded(["bash", str(SUITE), "--dry-run", "--commit", "feedc0de"], cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "out"
    entries = sorted(out.iterdir())
    assert len(entries) <= MAX_FILES_BACK and all(p.is_file() for p in entries), entries
    assert all(FILE_NAME.fullmatch(p.name) for p in entries), entries
    names = {p.name for p in entries}
    assert {"summary.txt", "steps.csv", "results.tar.gz"} <= names
    files = archived(out)
    logs = {name: data.decode(errors="replace") for name, data in files.items() if name.startswith("results/logs/")}
    steps = {r["step"]: r["status"] for r in csv.DictReader(open(out / "steps.csv"))}
    assert list(steps) == ["warmup", "correctness", "attention", "train_step", "correctness_rest", "tune_tiles"]
    for name, status in steps.items():
        assert status == "ok", (name, logs.get(f"results/logs/{name}.log", "")[-3000:])
    for f in ("warmup.csv", "correctness.json", "correctness.csv", "correctness_rest.json", "correctness_rest.csv",
              "attention.json", "train_step.json", "suite.json", "summary_table.txt", "steps.csv", "logs/setup.log"):
        assert f"results/{f}" in files, f
    # The tuning step's table comes back as a plain file, named for where the next run reads it.
    tuned = [name[len("results/tuned/"):] for name in files if name.startswith("results/tuned/")]
    assert tuned and {f"kernels_tuned_{t}" for t in tuned} <= names
    # The commit comes in as an argument, in every result file.
    assert json.loads(files["results/suite.json"])["commit"] == "feedc0de"
    assert json.loads(files["results/correctness.json"])["meta"]["commit"] == "feedc0de"
    assert "commit: feedc0de\n" in (out / "summary.txt").read_text()
    # The warm-up ran its jobs in worker processes, not in the step's own.
    warm = list(csv.DictReader(io.StringIO(files["results/warmup.csv"].decode())))
    assert any(r["status"] == "ok" for r in warm), warm
    # The summary table is what the output (and summary.txt) ends with.
    table = files["results/summary_table.txt"].decode().strip()
    assert res.stdout.strip().endswith(table)
    assert (out / "summary.txt").read_text().strip().endswith(table)
    assert "correctness:" in table and "correctness_rest:" in table and "warm-up:" in table
    assert "step tiny/states fastlam_triton" in table
    assert "attn frame_local" in table and "sdpa_math_reshaped" in table


def run_until(proc: subprocess.Popen, condition) -> bool:
    """Poll ``condition()`` while ``proc`` runs (and makes progress); whether it came true."""
    watch = StallWatch(proc)
    while proc.poll() is None:
        if condition():
            return True
        watch.check()
        time.sleep(0.1)
    return False


def start_suite(tmp_path: Path, **env) -> subprocess.Popen:
    """The dry run of the correctness step alone, every case run (no budget cut)."""
    env = suite_env(tmp_path, SUITE_STEPS="correctness", SUITE_DRY_CORRECTNESS_BUDGET_S="1000000", **env)
    log = open(tmp_path / "suite.log", "w")
    return subprocess.Popen(["bash", str(SUITE), "--dry-run", "--commit", "k1ll"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def csv_rows(text: str) -> list:
    return list(csv.DictReader(io.StringIO(text)))


def assert_killed_half_way(rows: list) -> None:
    """``rows`` are whole rows of finished checks, a strict prefix of the planned cases."""
    planned = [name for _, name, _, _ in gpu_correctness.plan(True, "first")]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    assert cases and cases == planned[:len(cases)] and len(cases) < len(planned), cases
    assert all(r["status"] == "ok" and r["ok"] == "True" and r["commit"] == "k1ll" for r in rows), rows


@pytest.mark.slow
def test_a_step_killed_half_way_keeps_the_rows_it_wrote(tmp_path):
    """SIGKILL the correctness step once its first case is on disk: its finished rows come back
    whole in the archive, the step is recorded as killed, and the suite still ends with its table."""
    work = tmp_path / "work"
    incremental = work / "results" / "correctness.csv"
    proc = start_suite(tmp_path)
    rows_seen = []
    try:
        def first_case_written():
            return ((work / "step.pid").is_file() and incremental.is_file()
                    and len(incremental.read_text().splitlines()) >= 2)

        assert run_until(proc, first_case_written), (tmp_path / "suite.log").read_text()[-2000:]
        step_pid = int((work / "step.pid").read_text())
        os.kill(step_pid, signal.SIGSTOP)  # no row can be added between reading and killing
        rows_seen = csv_rows(incremental.read_text())
        os.kill(step_pid, signal.SIGKILL)
        assert proc.wait() == 0
    finally:
        kill_group(proc)
    assert_killed_half_way(rows_seen)
    out = tmp_path / "out"
    steps = {r["step"]: r["status"] for r in csv.DictReader(open(out / "steps.csv"))}
    assert steps["correctness"] == "killed (signal 9: KILL)", steps
    files = archived(out)
    assert csv_rows(files["results/correctness.csv"].decode()) == rows_seen  # every finished row, each whole
    json.loads(files["results/correctness.json"])  # replaced atomically: never half a file
    assert "correctness: killed (signal 9: KILL)" in (out / "summary.txt").read_text()


@pytest.mark.slow
def test_a_suite_killed_outright_mid_step_leaves_that_steps_rows_in_out(tmp_path):
    """SIGKILL the whole suite (no trap runs, as when a device call runs past its limit) while a
    step runs: $OUT, re-archived as the step goes, already holds its finished rows."""
    out = tmp_path / "out"
    proc = start_suite(tmp_path, SUITE_ARCHIVE_EVERY_S="1")
    try:
        def rows_in_out():
            if not (out / "results.tar.gz").is_file():
                return False
            text = archived(out).get("results/correctness.csv", b"").decode()
            return len(text.splitlines()) >= 2

        assert run_until(proc, rows_in_out), (tmp_path / "suite.log").read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        kill_group(proc)
    entries = sorted(out.iterdir())
    assert len(entries) <= MAX_FILES_BACK and all(p.is_file() and FILE_NAME.fullmatch(p.name) for p in entries)
    assert_killed_half_way(csv_rows(archived(out)["results/correctness.csv"].decode()))


@pytest.mark.slow
def test_a_suite_sent_sigterm_stops_the_step_records_it_and_archives(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    proc = start_suite(tmp_path)
    try:
        assert run_until(proc, lambda: (work / "step.pid").is_file()), (tmp_path / "suite.log").read_text()[-2000:]
        step_pid = int((work / "step.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 143
        with pytest.raises(ProcessLookupError):  # the step was stopped with the suite
            for _ in range(3000):  # a signalled process is gone in far less than these 5 min
                os.kill(step_pid, 0)
                time.sleep(0.1)
    finally:
        kill_group(proc)
    steps = list(csv.DictReader(open(out / "steps.csv")))
    assert [(s["step"], s["status"]) for s in steps][-1] == ("correctness", "interrupted: the suite got a signal")
    assert "results/logs/correctness.log" in archived(out)
    assert "suite interrupted by a signal" in (out / "summary.txt").read_text()
