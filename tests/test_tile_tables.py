"""Where the attention tiles come from: default table, per-device tuned table, forced override,
and the tile sweep that writes tuned tables (benchmarks/tune_tiles.py --dry-run)."""
from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import triton
from launch_spy import spy_forward_tiles
from subprocess_guard import run_guarded

from fastlam.kernels import attention as A
from fastlam.kernels import tile_tables as tt

REPO = Path(__file__).resolve().parents[1]
CUDA0 = torch.device("cuda", 0)  # a device object only: nothing here touches a GPU
H100 = "NVIDIA H100 80GB HBM3"
KEY = "fwd,bf16,hd64,rope"


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A CUDA launch as block_config sees it, on a machine without one: device name
    monkeypatched, tuned tables read from a temporary folder, no interpreter, no override."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(tt.ENV, raising=False)
    monkeypatch.setattr(tt, "_cuda_device_name", lambda index: H100)
    monkeypatch.setattr(tt, "TUNED_DIR", tmp_path)
    tt._tuned_for.cache_clear()
    tt._parsed_env.cache_clear()
    yield tmp_path
    tt._tuned_for.cache_clear()
    tt._parsed_env.cache_clear()


def _write_table(folder: Path, tiles: dict, triton_version: str = triton.__version__, name: str = H100) -> Path:
    path = folder / f"{tt.device_key(name)}.json"
    path.write_text(json.dumps({"format": 1, "device": name, "triton": triton_version, "tiles": tiles}))
    return path


def _fwd(device=CUDA0, rope=True, dtype=torch.bfloat16):
    return A.block_config(64, dtype, interpret=False, rope=rope, device=device)["fwd"]


def test_device_names_normalise_to_file_names():
    assert tt.device_key("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert tt.device_key("  NVIDIA A100-SXM4-40GB ") == "nvidia-a100-sxm4-40gb"
    assert tt.device_key("NVIDIA H200") == "nvidia-h200"
    with pytest.raises(ValueError, match="no letters or digits"):
        tt.device_key(" -- ")


def test_tuned_table_for_the_device_replaces_only_its_keys(fake_gpu):
    default = _fwd(device=None)
    _write_table(fake_gpu, {KEY: [64, 64, 4, 3]})
    assert _fwd() == (64, 64, 4, 3)
    # Other keys (no RoPE, fp16, other kinds) keep the default table.
    assert _fwd(rope=False) == _fwd(device=None, rope=False)
    assert _fwd(dtype=torch.float16) == _fwd(device=None, dtype=torch.float16)
    assert A.block_config(64, torch.bfloat16, interpret=False, rope=True, device=CUDA0)["bwd_q"] == \
        A.block_config(64, torch.bfloat16, interpret=False, rope=True)["bwd_q"]
    # The registry's view (no device) never changes.
    assert _fwd(device=None) == default


def test_no_table_for_the_device_falls_back_to_the_default(fake_gpu):
    _write_table(fake_gpu, {KEY: [64, 64, 4, 3]}, name="NVIDIA A100-SXM4-80GB")
    assert _fwd() == _fwd(device=None)


def test_table_from_another_triton_release_is_ignored_with_a_warning(fake_gpu):
    _write_table(fake_gpu, {KEY: [64, 64, 4, 3]}, triton_version="2.9.0")
    with pytest.warns(UserWarning, match=r"timed with triton 2\.9\.0.*default tiles are used"):
        assert _fwd() == _fwd(device=None)


def test_cpu_and_interpreter_never_read_tuned_tables(fake_gpu, monkeypatch):
    _write_table(fake_gpu, {KEY: [64, 64, 4, 3]})
    monkeypatch.setattr(tt, "_cuda_device_name", lambda index: pytest.fail("device name read off CUDA"))
    assert _fwd(device=torch.device("cpu")) == _fwd(device=None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tt.overrides(CUDA0) == {}
    assert A.block_config(64, torch.bfloat16, rope=True, device=torch.device("cpu"))["fwd"] == (16, 16, 4, 1)


def test_environment_override_wins_and_default_ignores_tables(fake_gpu, monkeypatch):
    _write_table(fake_gpu, {KEY: [64, 64, 4, 3]})
    monkeypatch.setenv(tt.ENV, f"{KEY}=32,32,4,2; bwd_q,bf16,hd64,rope=32,64,4,2")
    assert _fwd() == (32, 32, 4, 2)
    assert A.block_config(64, torch.bfloat16, interpret=False, rope=True, device=CUDA0)["bwd_q"] == (32, 64, 4, 2)
    monkeypatch.setenv(tt.ENV, "default")
    assert _fwd() == _fwd(device=None)
    other = fake_gpu / "forced.json"
    other.write_text(json.dumps({"format": 1, "device": "x", "triton": "0.1", "tiles": {KEY: [128, 64, 8, 3]}}))
    monkeypatch.setenv(tt.ENV, str(other))  # a table file: used whatever its device and triton
    assert _fwd() == (128, 64, 8, 3)


def test_override_reaches_cpu_launches_too(monkeypatch):
    monkeypatch.setenv(tt.ENV, "fwd,fp32,hd32=32,16,4,1")
    tt._parsed_env.cache_clear()
    try:
        assert A.block_config(32, torch.float32, device=torch.device("cpu"))["fwd"] == (32, 16, 4, 1)
    finally:
        tt._parsed_env.cache_clear()


@pytest.mark.parametrize("value,match", [
    ("fwd,bf16,hd64", "has no '='"),
    ("fwd,bf16,hd64,rope=64,64,4", "expected 4 integers"),
    ("fwd,bf16,hd64,rope=48,64,4,2", "powers of two"),
    ("fwd,bf16,hd64,rope=64,64,3,2", "WARPS in 1,2,4,8,16"),
    ("fwd,bf16,hd64,rope=64,64,4,x", "expected 4 integers"),
    ("fwdd,bf16,hd64=64,64,4,2", "kind in"),
    ("fwd,int8,hd64=64,64,4,2", "dtype in"),
    ("fwd,bf16,hd48=64,64,4,2", "BLOCK_D in"),
    ("missing.json", "no such file"),
    (" ; ", "empty"),
])
def test_bad_override_is_a_clear_error(fake_gpu, monkeypatch, value, match):
    monkeypatch.setenv(tt.ENV, value)
    with pytest.raises(ValueError, match=match) as e:
        _fwd()
    assert tt.ENV in str(e.value)


def test_bad_tuned_table_names_the_file(fake_gpu):
    path = fake_gpu / f"{tt.device_key(H100)}.json"
    path.write_text(json.dumps({"format": 1, "triton": triton.__version__, "tiles": {KEY: [64, 64]}}))
    with pytest.raises(ValueError, match="nvidia-h100-80gb-hbm3.json.*expected 4 integers"):
        _fwd()
    path.write_text("{not json")
    tt._tuned_for.cache_clear()
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        _fwd()


def test_forced_tiles_reach_the_kernel_launch(monkeypatch):
    """The interpreter runs the forced tile (not its 16 x 16 default) and still matches SDPA."""
    seen = spy_forward_tiles(A, monkeypatch)
    q, k, v = (torch.randn(1, 2, 40, 32) for _ in range(3))
    kw = dict(frame_len=8, mask="frame_causal", scale=32 ** -0.5)
    with tt.forced({"fwd,fp32,hd32": (32, 16, 4, 1)}):
        out, _ = A.attention_forward(q, k, v, **kw)
    out_default, _ = A.attention_forward(q, k, v, **kw)
    assert seen == [(32, 16), (16, 16)]
    allowed = torch.tensor([[(i // 8) >= (j // 8) for j in range(40)] for i in range(40)])
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, out_default, atol=1e-5, rtol=1e-5)


def test_every_tuning_candidate_is_registered_and_spill_free_in_the_pinned_report():
    """The static check compiles each candidate (registered, not default) and, under the triton
    the committed report was made with, none of them spills on sm_90 or sm_80."""
    from fastlam.kernels.attention_configs import attn_kernel_config
    from fastlam.kernels.registry import all_configs
    from fastlam.kernels.tile_candidates import CANDIDATES

    by_name = {c.name: c for c in all_configs()}
    with open(REPO / "benchmarks" / "results" / "static" / "static_report.csv", newline="") as f:
        report = {(r["config"], r["arch"]): r for r in csv.DictReader(f)}
    dtypes = {name: dtype for dtype, name in tt.DTYPE_NAME.items()}
    # Both dtypes, both head dims, the plain and the fused kernels, every kind that exists there.
    assert {(k.split(",")[1], k.split(",")[2], k.endswith(",rope")) for k in CANDIDATES} == {
        (d, h, r) for d in ("bf16", "fp16") for h in ("hd64", "hd128") for r in (False, True)}
    for key, tiles in CANDIDATES.items():
        kind, dtype_name, hd = key.split(",")[:3]
        rope, dtype = key.endswith(",rope"), dtypes[dtype_name]
        default = A.block_config(int(hd[2:]), dtype, interpret=False, rope=rope)[kind]
        assert default is not None and tiles and len(set(tiles)) == len(tiles), key
        for tile in tiles:
            cfg = attn_kernel_config(kind, dtype, int(hd[2:]), rope, tile, default=tile == default)
            assert by_name.get(cfg.name) == cfg, f"{key} {tile}: not registered as {cfg.name}"
            for arch in ("sm_90", "sm_80"):
                row = report.get((cfg.name, arch))
                assert row is not None, f"{cfg.name} ({arch}) missing from the committed static report"
                assert row["verdict"] == "pass" and row["stack"] == "0", (cfg.name, arch, row["stack"], row["failures"])


def test_tile_sweep_dry_run_writes_a_loadable_table_and_csv(tmp_path):
    """benchmarks/tune_tiles.py end to end on the CPU: interpreter, tiny shapes, two keys."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = run_guarded([sys.executable, "-m", "benchmarks.tune_tiles", "--out", str(tmp_path), "--dry-run"],
                          cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tables = list((tmp_path / "tuned").glob("*.json"))
    assert [p.name for p in tables] == ["cpu-triton-interpreter-dry-run.json"]
    table = tt.read_table(tables[0])
    assert table["mode"] == "dry-run" and table["triton"] == triton.__version__ and table["commit"]
    assert set(table["tiles"]) | set(table["kept_default"]) == {"fwd,bf16,hd64,rope", "bwd_q,bf16,hd64,rope"}
    with open(tmp_path / "tune_tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["role"] for r in rows} == {"default", "candidate"}
    for r in rows:
        assert r["device"] == "cpu (triton interpreter, dry run)" and r["triton"] == triton.__version__
        assert float(r["t1_ms"]) > 0 and float(r["t2_ms"]) > 0, r
        if r["role"] == "candidate":  # every candidate's output was checked against the default tile's
            assert float(r["max_rel_diff"]) <= 0.03, r
    assert "tune_tiles on cpu (triton interpreter, dry run)" in proc.stdout
