"""Device-side tile tuning (kernels/tuning.py, kernels/attention_tuning.py): the selection rule,
the checks that keep a candidate out, the on-disk cache, and where tuning sits among the
override, the tuned tables and the default table.

On the CPU the real kernels run under the Triton interpreter at tiny shapes; wall-clock
timings there mean nothing, so the timer is injected: it returns a fixed time per tile (the
tile that ``forced`` put in place for the launch it times).
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import triton
from launch_spy import spy_forward_tiles

from fastlam.kernels import attention as A
from fastlam.kernels import attention_tuning as at
from fastlam.kernels import tile_tables as tt
from fastlam.kernels import tuning

CPU = torch.device("cpu")
HEAD_DIM = 16  # BLOCK_D 16: the smallest interpreter launches
KEY = tt.tile_key("fwd", "bf16", HEAD_DIM, False)
DEFAULT = (16, 16, 4, 1)  # every interpreter tile
FAST, FASTER = (16, 32, 4, 1), (32, 16, 4, 1)  # the interpreter candidates


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """Tuning on, its cache in a temporary folder, only the forward key tuned, and a timer
    that reads each launch's time from ``times`` (tile -> ms; 1.0 when absent)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the tuner times CPU launches only under the Triton interpreter")
    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(tt.ENV, raising=False)
    monkeypatch.setattr(at, "candidates", lambda key, interpret=False: (
        [FAST, FASTER] if key.startswith("fwd,") else []))
    state = {"times": {}, "timed": [], "last": None}
    real_forced = at.forced

    def spy_forced(tiles):  # the tiles each launch of the tuner runs with
        state["last"] = dict(tiles)
        return real_forced(tiles)

    def timer(fn):
        fn()
        tile = state["last"][KEY]
        state["timed"].append(tile)
        return state["times"].get(tile, 1.0)
    monkeypatch.setattr(at, "forced", spy_forced)
    monkeypatch.setattr(at, "timer_for", lambda device: timer)
    tuning.enable(True)
    at.forget()
    yield state
    tuning.enable(None)
    at.forget()


def _fwd_tile(**kw) -> tuple:
    return A.block_config(HEAD_DIM, torch.bfloat16, device=CPU, **kw)["fwd"]


def _trials(*times):
    return [tuning.Trial((16 * (i + 1), 16, 4, 1), "default" if i == 0 else "candidate", t1, t2)
            for i, (t1, t2) in enumerate(times)]


def test_noise_rule_keeps_the_default_unless_both_rounds_win_by_the_margin():
    def pick(*times):
        trials = _trials(*times)
        winner, _ = tuning.decide(trials)
        return (None if winner is None else trials.index(winner)), trials

    # Default 1.00 / 1.00: a 10% win in both rounds is taken; 10% in one round only is noise.
    assert pick((1.0, 1.0), (0.9, 0.9))[0] == 1
    assert pick((1.0, 1.0), (0.9, 1.01))[0] is None
    # 2% faster twice is inside the 3% floor of the margin.
    idx, trials = pick((1.0, 1.0), (0.98, 0.98))
    assert idx is None and "within" in trials[1].verdict
    # A noisy default (1.0 vs 1.2: 18% spread) widens the margin to 36%: a 20% win is not enough.
    assert pick((1.0, 1.2), (0.8, 0.95))[0] is None
    # Several winners: the fastest on average; one already ruled out (a spill) is never chosen.
    trials = _trials((1.0, 1.0), (0.8, 0.8), (0.7, 0.75), (0.5, 0.5))
    trials[3].verdict = "spills (8 B)"
    winner, _ = tuning.decide(trials)
    assert winner is trials[2] and trials[2].verdict.startswith("CHOSEN")


def test_measure_rules_out_wrong_results_spills_and_failures_and_times_the_rest_twice():
    ref = torch.linspace(-1, 1, 64)
    wrong, spilling, broken, good = (32, 16, 4, 1), (64, 16, 4, 1), (128, 16, 4, 1), (16, 32, 4, 1)
    ran, last = [], []

    def run(tile):
        last[:] = [tile]
        if tile == broken:
            raise RuntimeError("out of resources: shared memory")
        return (ref * (1.5 if tile == wrong else 1.0) + 1e-4 * (tile == good), ref)

    def timer(fn):
        fn()
        ran.append(last[0])
        return {wrong: 0.1, spilling: 0.1, good: 0.5}.get(last[0], 1.0)

    trials = tuning.measure([DEFAULT, wrong, spilling, broken, good], run, timer,
                            spills=lambda: 8 if last and last[0] == spilling else 0)
    verdicts = {t.tile: t.verdict for t in trials}
    assert verdicts[wrong].startswith("wrong result") and verdicts[spilling] == "spills (8 B)"
    assert verdicts[broken].startswith("error: RuntimeError: out of resources")
    # Only the default and the valid candidate are timed, in two rounds over both.
    assert ran == [DEFAULT, good, DEFAULT, good]
    winner, _ = tuning.decide(trials)
    assert winner.tile == good and trials[4].max_rel_diff < tuning.AGREE_TOL


def test_first_launch_picks_the_fastest_valid_candidate_and_caches_it(tuner, tmp_path):
    tuner["times"] = {FAST: 0.8, FASTER: 0.5}
    assert _fwd_tile() == FASTER
    assert tuner["timed"] == [DEFAULT, FAST, FASTER] * 2
    path = tuning.cache_path(at.INTERPRETER_DEVICE, triton.__version__, "bf16-hd16-L2048")
    data = json.loads(path.read_text())
    assert path.is_relative_to(tmp_path / "tuning") and data["tiles"] == {KEY: list(FASTER)}
    assert data["baseline"][KEY] == list(DEFAULT) and data["device"] == at.INTERPRETER_DEVICE
    assert [t["verdict"] for t in data["trials"][KEY]][0] == "default"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # The rest of the launch's tiles are the fallback's; the rope class is its own group.
    assert A.block_config(HEAD_DIM, torch.bfloat16, device=CPU)["bwd_q"] == DEFAULT


def test_a_candidate_whose_output_differs_is_never_chosen(tuner, monkeypatch):
    real_call = at.TimingCase.__call__

    def off_by_one_tile(case):
        out, lse = real_call(case)
        return (out + 1.0, lse) if tuner["last"][KEY] == FASTER else (out, lse)
    monkeypatch.setattr(at.TimingCase, "__call__", off_by_one_tile)
    tuner["times"] = {FAST: 0.8, FASTER: 0.5}
    assert _fwd_tile() == FAST
    assert FASTER not in tuner["timed"]


def test_cache_is_reused_by_a_later_process_without_timing(tuner, monkeypatch):
    tuner["times"] = {FAST: 0.5}
    assert _fwd_tile() == FAST
    at.forget()  # as a fresh process: only the disk cache is left
    monkeypatch.setattr(at, "timer_for", lambda device: pytest.fail("timed again despite the cache"))
    monkeypatch.setattr(at, "TimingCase", lambda *a, **k: pytest.fail("launched again despite the cache"))
    assert _fwd_tile() == FAST
    assert _fwd_tile() == FAST  # and from memory


def test_cache_file_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "dev" / "entry.json"
    tuning.write_cache(path, {"tiles": {"a": 1}})
    old = path.read_text()

    def interrupted(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(tuning.os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        tuning.write_cache(path, {"tiles": {"a": 2}})
    # A write that dies before the rename leaves the old entry whole and no temporary file.
    assert path.read_text() == old and sorted(p.name for p in path.parent.iterdir()) == ["entry.json"]


def test_corrupt_cache_file_is_reported_ignored_and_replaced(tuner):
    path = tuning.cache_path(at.INTERPRETER_DEVICE, triton.__version__, "bf16-hd16-L2048")
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "tiles": {"fwd,bf16,hd16": [16, 16')
    tuner["times"] = {FAST: 0.5}
    with pytest.warns(UserWarning, match="ignoring the tuning cache file .*bf16-hd16-L2048.json"):
        assert _fwd_tile() == FAST
    assert json.loads(path.read_text())["tiles"] == {KEY: list(FAST)}
    # A well-formed entry with an invalid tile is ignored the same way.
    data = json.loads(path.read_text())
    data["tiles"] = {KEY: [48, 16, 4, 1]}
    path.write_text(json.dumps(data))
    at.forget()
    with pytest.warns(UserWarning, match="ignoring the tuning cache file .*powers of two"):
        assert _fwd_tile() == FAST


def test_entry_made_for_another_fallback_tile_is_timed_again(tuner):
    tuner["times"] = {FAST: 0.5}
    assert _fwd_tile() == FAST
    path = tuning.cache_path(at.INTERPRETER_DEVICE, triton.__version__, "bf16-hd16-L2048")
    data = json.loads(path.read_text())
    data["baseline"][KEY] = [32, 32, 4, 1]  # as if the table's tile had changed since
    path.write_text(json.dumps(data))
    at.forget()
    tuner["timed"].clear()
    tuner["times"] = {FASTER: 0.5}
    with pytest.warns(UserWarning, match="made for other baseline"):
        assert _fwd_tile() == FASTER
    assert tuner["timed"]


def test_environment_override_wins_over_tuning(tuner, monkeypatch):
    monkeypatch.setenv(tt.ENV, f"{KEY}=32,32,4,1")
    tt._parsed_env.cache_clear()
    try:
        tuner["times"] = {FASTER: 0.1}
        assert _fwd_tile() == (32, 32, 4, 1)
        monkeypatch.setenv(tt.ENV, "default")  # the built-in table, no tuning either
        assert _fwd_tile() == DEFAULT
        assert tuner["timed"] == []
    finally:
        tt._parsed_env.cache_clear()


def test_tuning_off_falls_back_to_the_table(tuner, tmp_path):
    tuning.enable(False)
    assert _fwd_tile() == DEFAULT and tuner["timed"] == []
    assert not (tmp_path / "tuning").exists()


def test_tuning_off_on_a_gpu_keeps_the_table_and_the_committed_tuned_file(monkeypatch, tmp_path):
    cuda = torch.device("cuda", 0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(tt.ENV, raising=False)
    monkeypatch.delenv(tuning.ENV_TUNE, raising=False)
    monkeypatch.setattr(tt, "_cuda_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(tt, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(at, "device_name", lambda device: pytest.fail("tuner ran with tuning off"))
    tt._tuned_for.cache_clear()
    key = tt.tile_key("fwd", "bf16", 64, False)
    (tmp_path / "nvidia-h100-80gb-hbm3.json").write_text(json.dumps(
        {"format": 1, "device": "x", "triton": triton.__version__, "tiles": {key: [64, 64, 4, 3]}}))
    try:
        cfg = A.block_config(64, torch.bfloat16, interpret=False, device=cuda)
        assert cfg["fwd"] == (64, 64, 4, 3)
        assert cfg["bwd_q"] == A.block_config(64, torch.bfloat16, interpret=False)["bwd_q"]
    finally:
        tt._tuned_for.cache_clear()


def test_switch_reads_the_environment_and_rejects_nonsense(monkeypatch):
    tuning.enable(None)
    for value, on in (("1", True), ("on", True), ("0", False), ("", False)):
        monkeypatch.setenv(tuning.ENV_TUNE, value)
        assert tuning.enabled() is on
    monkeypatch.setenv(tuning.ENV_TUNE, "maybe")
    with pytest.raises(ValueError, match="FASTLAM_ATTN_TUNE='maybe'"):
        tuning.enabled()
    tuning.enable(False)  # the call wins over the variable
    try:
        assert tuning.enabled() is False
    finally:
        tuning.enable(None)


def test_cache_location_and_shape_classes(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path))
    path = tuning.cache_path("NVIDIA H100 80GB HBM3", "3.7.1", at.shape_class("bf16", 64, True, 3000))
    assert path == tmp_path / "tuning" / "nvidia-h100-80gb-hbm3" / "triton-3.7.1" / "bf16-hd64-rope-L4096.json"
    monkeypatch.delenv(tuning.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_dir() == tmp_path / "xdg" / "fastlam" / "tuning"
    assert [at.seq_bucket(n) for n in (None, 10, 2048, 2049, 10 ** 6)] == [2048, 256, 2048, 4096, 16384]
    assert at.timing_shape(64, None, interpret=False) == (4, 16, 8, 256, 64)


def test_tuned_tiles_reach_the_launch_and_match_the_default_output(tuner, monkeypatch):
    """The chosen tile is what the forward launches, and it computes what the default does."""
    seen = spy_forward_tiles(A, monkeypatch)
    tuner["times"] = {FASTER: 0.5}
    q, k, v = (torch.randn(1, 2, 40, HEAD_DIM, dtype=torch.bfloat16) for _ in range(3))
    kw = dict(frame_len=8, mask="frame_causal", scale=HEAD_DIM ** -0.5)
    out, _ = A.attention_forward(q, k, v, **kw)
    assert len(seen) > 1 and seen[-1] == FASTER[:2]  # the tuning's own launches, then this one
    tuning.enable(False)
    ref, _ = A.attention_forward(q, k, v, **kw)
    assert seen[-1] == DEFAULT[:2]
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_masked_launches_keep_the_fallback_tiles(tuner):
    """Tuning times the frame masks; the temporal masks and key padding are compiled in CI only
    at the fallback tiles, so they keep those."""
    tuner["times"] = {FASTER: 0.5}
    cfg = A.block_config(HEAD_DIM, torch.bfloat16, device=CPU)
    assert cfg["fwd"] == FASTER
    assert A.mask_variant_config(cfg, False)["fwd"] == FASTER
    assert A.mask_variant_config(cfg, True)["fwd"] == A.mask_variant_config(
        A.block_config(HEAD_DIM, torch.bfloat16), True)["fwd"]
