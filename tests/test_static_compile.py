"""The ahead-of-time compile check (``python -m benchmarks.static_check``) and its harness.

The check runs in a subprocess: this test process has ``TRITON_INTERPRET=1`` on CPU machines,
which swaps every ``@triton.jit`` function for an interpreter stand-in that cannot be compiled.
The small kernels below exist only to test the checker; the subprocess loads them through
``--module`` (``static_check_configs()``), so they never enter the package's registry.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import triton
import triton.language as tl
from subprocess_guard import run_guarded

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a top-level folder, not part of the package
    sys.path.insert(0, str(REPO))

from benchmarks import static_check as sc  # noqa: E402
from fastlam.kernels.registry import KernelConfig  # noqa: E402


@triton.jit
def _selftest_matmul(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_bk, stride_cm,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rm[:, None] * stride_am + (k + rk)[None, :],
                    mask=(rm[:, None] < M) & ((k + rk)[None, :] < K), other=0.0)
        b = tl.load(b_ptr + (k + rk)[:, None] * stride_bk + rn[None, :],
                    mask=((k + rk)[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _selftest_rowscale(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # BLOCK must be a power of two
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2.0, mask=offs < n)


_MM_SIG = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
           "stride_am": "i32", "stride_bk": "i32", "stride_cm": "i32"}


def _mm(name, bm, bn, bk, warps, stages, default=True):
    return KernelConfig(
        name=f"selftest_matmul[{name}]", fn=_selftest_matmul, signature=dict(_MM_SIG),
        constexprs={"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages,
        default=default, expects_mma=True, ref_shape="M=N=K=4096",
        flops=2.0 * 4096**3, min_bytes=3 * 2.0 * 4096**2)


def static_check_configs():
    """Loaded by the checker's ``--module`` option in the subprocess."""
    return [
        _mm("good", 64, 64, 32, 4, 2),
        # 256x256 tiles with BLOCK_K 128, 4 stages: ~512 KB of shared memory, over every GPU.
        _mm("huge_tile", 256, 256, 128, 8, 4),
        # A 256x128 fp32 accumulator over 128 threads is 256 registers each before anything else: spills.
        _mm("spills_default", 256, 128, 64, 4, 3, default=True),
        _mm("spills_not_default", 256, 128, 64, 4, 3, default=False),
        KernelConfig(name="selftest_rowscale[non_pow2]", fn=_selftest_rowscale,
                     signature={"x_ptr": "*fp32", "n": "i32"}, constexprs={"BLOCK": 48}),
        KernelConfig(name="selftest_rowscale[missing_arg]", fn=_selftest_rowscale,
                     signature={"x_ptr": "*fp32"}, constexprs={"BLOCK": 64}),
    ]


def _run_check(*args):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    # No wall-clock limit (a busy machine compiles slower; every finished compile is cached, so a
    # rerun resumes): the guard only kills a checker that stopped working, with its workers.
    proc = run_guarded([sys.executable, "-m", "benchmarks.static_check", *args], cwd=REPO, env=env)
    if proc.returncode == 2 and sc.UNAVAILABLE_MARK in proc.stderr:
        pytest.skip(f"the triton CUDA backend cannot compile on this machine: {proc.stderr.strip()[-300:]}")
    return proc


def _read_rows(out_dir: Path) -> dict:
    with open(out_dir / "static_report.csv", newline="") as f:
        return {(r["config"], r["arch"]): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    """One run of the checker over this module's kernels (fresh compiles, own cache folder)."""
    root = tmp_path_factory.mktemp("static")
    proc = _run_check("--no-registry", "--module", __file__, "--out", str(root / "out"),
                      "--cache-dir", str(root / "cache"))
    return proc, root, _read_rows(root / "out")


@pytest.mark.slow
def test_good_config_passes_with_tensor_cores(selftest):
    proc, _, rows = selftest
    for arch, mma in (("sm_90", "HGMMA"), ("sm_80", "HMMA")):
        row = rows[("selftest_matmul[good]", arch)]
        assert row["verdict"] == "pass", (row, proc.stderr[-2000:])
        assert 0 < int(row["shared_bytes"]) <= int(row["shared_limit"])
        assert int(row["stack"]) == 0 and 0 < int(row["regs"]) <= 255
        assert row["mma"].startswith(mma), row
        assert row["notes"] == ""


@pytest.mark.slow
def test_tile_over_shared_memory_fails(selftest):
    proc, _, rows = selftest
    assert proc.returncode == 1
    for arch in ("sm_90", "sm_80"):
        row = rows[("selftest_matmul[huge_tile]", arch)]
        assert row["verdict"] == "FAIL"
        assert int(row["shared_bytes"]) > int(row["shared_limit"])
        assert "shared" in row["failures"]
    assert "FAIL selftest_matmul[huge_tile] (sm_90): shared" in proc.stdout


@pytest.mark.slow
def test_compile_error_fails_with_its_text(selftest):
    proc, root, rows = selftest
    row = rows[("selftest_rowscale[non_pow2]", "sm_90")]
    assert row["verdict"] == "FAIL" and row["failures"].startswith("compile error")
    assert "power of 2" in row["error"], row["error"]
    report = (root / "out" / "static_report.md").read_text()
    assert "### `selftest_rowscale[non_pow2]` (sm_90)" in report and "power of 2" in report


@pytest.mark.slow
def test_registry_entry_that_does_not_match_its_kernel_fails(selftest):
    _, _, rows = selftest
    row = rows[("selftest_rowscale[missing_arg]", "sm_80")]
    assert row["verdict"] == "FAIL" and row["failures"].startswith("registry entry")
    assert "'n'" in row["error"] and "signature" in row["error"]


@pytest.mark.slow
def test_spills_fail_only_in_default_configurations(selftest):
    _, _, rows = selftest
    bad = rows[("selftest_matmul[spills_default]", "sm_90")]
    ok = rows[("selftest_matmul[spills_not_default]", "sm_90")]
    assert int(bad["stack"]) > 0 and bad["stack"] == ok["stack"], (bad, ok)
    assert bad["verdict"] == "FAIL" and "STACK" in bad["failures"]
    assert ok["verdict"] == "pass" and "STACK" in ok["notes"]
    assert "REG at the 255 cap" in ok["notes"]


@pytest.mark.slow
def test_report_records_the_triton_date_and_commit_it_was_made_with(selftest):
    _, root, _ = selftest
    meta = json.loads((root / "out" / sc.META_NAME).read_text())
    assert meta["triton"] == triton.__version__ and sc.read_report_triton(root / "out") == triton.__version__
    assert meta["date"].endswith("Z") and meta["commit"] and meta["torch"] and meta["compiles"] == 12
    spills = " ".join(meta["default_spills"])
    assert "selftest_matmul[spills_default] (sm_90) STACK" in spills and "spills_not_default" not in spills
    assert "with triton " + triton.__version__ in (root / "out" / "static_report.md").read_text()


@pytest.mark.slow
def test_report_is_regenerated_identically_from_cache(selftest, tmp_path):
    proc, root, _ = selftest
    again = _run_check("--no-registry", "--module", __file__, "--out", str(tmp_path),
                       "--cache-dir", str(root / "cache"))
    assert again.returncode == 1
    # Two names share one build (spills_default / spills_not_default); a bad entry is not built.
    assert "8 to compile" in proc.stderr, proc.stderr[:500]
    # Compile errors are never cached (recompiled: the 2 non_pow2 builds); every build that
    # produced a cubin, even one that fails a limit, comes from the cache.
    assert "8 cached, 2 to compile" in again.stderr, again.stderr[:500]
    for name in ("static_report.md", "static_report.csv"):
        assert (tmp_path / name).read_bytes() == (root / "out" / name).read_bytes(), name


@pytest.mark.slow
def test_exit_status_zero_when_every_config_passes(selftest, tmp_path):
    _, root, _ = selftest
    proc = _run_check("--no-registry", "--module", __file__, "--filter", "[good]", "--out", str(tmp_path),
                      "--cache-dir", str(root / "cache"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(_read_rows(tmp_path)) == {("selftest_matmul[good]", "sm_90"), ("selftest_matmul[good]", "sm_80")}


@pytest.mark.slow
def test_kernel_module_that_does_not_import_fails_the_check(selftest, tmp_path):
    _, root, _ = selftest
    broken = tmp_path / "broken_kernels.py"
    broken.write_text("raise RuntimeError('half-edited kernel module')\n")
    proc = _run_check("--no-registry", "--module", __file__, "--module", str(broken), "--filter", "[good]",
                      "--out", str(tmp_path / "out"), "--cache-dir", str(root / "cache"))
    assert proc.returncode == 1
    row = _read_rows(tmp_path / "out")[(str(broken), "")]
    assert row["verdict"] == "FAIL" and "half-edited kernel module" in row["failures"]
    assert _read_rows(tmp_path / "out")[("selftest_matmul[good]", "sm_90")]["verdict"] == "pass"


COMMITTED = REPO / "benchmarks" / "results" / "static"
# What a report row says about a build; the same sources under the same triton give the same.
_COMPARED = ("regs", "stack", "shared_bytes", "mma", "verdict")


@pytest.fixture(scope="module")
def registry_check(tmp_path_factory):
    """One run of the checker over the package's whole registry, both targets, under the
    installed triton (cached by kernel source)."""
    out = tmp_path_factory.mktemp("registry")
    return _run_check("--out", str(out)), out


@pytest.mark.slow
def test_every_registered_kernel_config_compiles_for_sm90_and_sm80(registry_check):
    """The CI gate: the package's whole registry, both targets, under the installed triton."""
    from fastlam.kernels.registry import all_configs

    proc, out = registry_check
    names = {c.name for c in all_configs()}
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    rows = _read_rows(out)
    assert set(rows) == {(n, a) for n in names for a in ("sm_90", "sm_80")}
    assert all(r["verdict"] == "pass" for r in rows.values())
    meta = json.loads((out / sc.META_NAME).read_text())
    assert meta["triton"] == triton.__version__ and meta["default_spills"] == [] and meta["failing"] == 0


@pytest.mark.slow
def test_committed_report_matches_a_fresh_compile_under_the_same_triton(registry_check):
    """The committed report is what the sources compile to, compared only under the triton it
    was made with (register allocation changes between releases)."""
    proc, out = registry_check
    if proc.returncode == 2:
        pytest.skip("the compile gate could not run")
    made_with = sc.read_report_triton(COMMITTED)
    if made_with != triton.__version__:
        pytest.skip(f"not compared: benchmarks/results/static/ was made with triton {made_with}, this "
                    f"environment has triton {triton.__version__} (install the pinned one: pip install -c "
                    f"constraints.txt triton); the compile gate above ran under triton {triton.__version__}")
    fresh, committed = _read_rows(out), _read_rows(COMMITTED)
    stale = sorted(set(fresh) ^ set(committed))
    changed = sorted(k for k in set(fresh) & set(committed)
                     if any(fresh[k][c] != committed[k][c] for c in _COMPARED))
    assert not stale and not changed, (
        f"benchmarks/results/static/ is stale (regenerate: python -m benchmarks.static_check): "
        f"{len(stale)} configurations in only one of the two, e.g. {stale[:3]}; {len(changed)} differ, "
        f"e.g. {[(k, {c: (committed[k][c], fresh[k][c]) for c in _COMPARED}) for k in changed[:2]]}")


def test_pinned_triton_is_the_one_the_committed_report_was_made_with():
    pins = [ln.split("==", 1)[1].strip() for ln in (REPO / "constraints.txt").read_text().splitlines()
            if ln.strip().startswith("triton==")]
    assert len(pins) == 1, "constraints.txt must pin triton=="
    assert sc.read_report_triton(COMMITTED) == pins[0], (
        f"constraints.txt pins triton {pins[0]} but benchmarks/results/static/ was made with "
        f"{sc.read_report_triton(COMMITTED)}: regenerate it under the pinned version")


# ---- pure helpers (no compiling) --------------------------------------------------------------
def test_version_summary_lists_what_spills_under_which_release(tmp_path):
    from benchmarks import static_versions

    header = ",".join(sc.CSV_FIELDS)
    for version, stack, verdict in (("3.6.0", "0", "pass"), ("3.9.0", "16", "FAIL")):
        folder = tmp_path / f"triton-{version}"
        folder.mkdir()
        row = {k: "" for k in sc.CSV_FIELDS}
        row.update(config="attn_fwd[x]", arch="sm_80", stack=stack, verdict=verdict, default="1")
        ok = dict(row, config="ok[y]", stack="0", verdict="pass")
        (folder / "static_report.csv").write_text(
            header + "\n" + "\n".join(",".join(r[k] for k in sc.CSV_FIELDS) for r in (row, ok)) + "\n")
        (folder / sc.META_NAME).write_text(json.dumps({
            "triton": version, "date": "2026-01-01T00:00:00Z", "commit": "abc", "compiles": 2,
            "failing": int(verdict != "pass"), "default_spills": [] if stack == "0" else ["attn_fwd[x] (sm_80)"]}))
    text = static_versions.render(tmp_path, ["3.9.0", "3.6.0"])
    assert "| 3.6.0 | 2026-01-01T00:00:00Z | abc | 2 | 0 | 0 |" in text
    assert "| 3.9.0 | 2026-01-01T00:00:00Z | abc | 2 | 1 | 1 |" in text
    assert "| `attn_fwd[x]` | sm_80 | yes | 0 | **16** |" in text and "ok[y]" not in text
    (tmp_path / "triton-3.9.0" / sc.META_NAME).write_text(json.dumps({"triton": "3.7.1"}))
    with pytest.raises(SystemExit, match="made with triton 3.7.1, not 3.9.0"):
        static_versions.render(tmp_path, ["3.9.0"])

_RES_USAGE = """
Resource usage:
 Common:
  GLOBAL:0
 Function _helper:
  REG:40 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:368 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function attn_fwd:
  REG:168 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_res_usage_takes_the_worst_function_when_helpers_exist():
    got = sc.parse_res_usage(_RES_USAGE, "attn_fwd")
    assert got == {"regs": 168, "stack": 16, "static_shared": 1024, "local": 0}
    one = _RES_USAGE.split(" Function attn_fwd")[0]
    assert sc.parse_res_usage(one, "_helper")["regs"] == 40
    with pytest.raises(ValueError, match="no resource usage"):
        sc.parse_res_usage("garbage", "x")


def test_mma_counting_and_shared_limits_per_arch():
    sass = "  HGMMA.64x128x16.F32.BF16 gdesc[UR4], RZ\n  HMMA.16816.F32.BF16 R1, R2\n  HMMA.16816.F32 R3\n"
    assert sc.count_mma(sass) == {"hgmma": 1, "hmma": 2}
    # 200 KB fits an H100 block but not an A100 one.
    rows = [sc.judge(sc.Row(config="c", kernel="k", arch=a, shared=200_000, regs=128, stack=0, hgmma=0, hmma=4,
                            default=True, expects_mma=True)) for a in (90, 80)]
    assert rows[0].passed and rows[0].notes == ["no HGMMA (HMMA only)"]
    assert not rows[1].passed and "166912" in rows[1].failures[0]


def test_roofline_floor_is_the_slower_limit():
    # 1 TFLOP over 1 GB: 1.25 ms of compute vs 0.33 ms of memory.
    r = sc.roofline(1e12, 1e9)
    assert r["bound"] == "compute" and r["floor_us"] == pytest.approx(1250.0)
    r = sc.roofline(1e9, 3e9)
    assert r["bound"] == "memory" and r["floor_us"] == pytest.approx(1000.0)
    assert sc.roofline(0, 0)["floor_us"] is None
