"""Device-side tuning of the attention tiles: at the first launch of a shape class on a device,
time the candidates and keep the fastest valid one, on disk, for this and later processes.

On (``FASTLAM_ATTN_TUNE=1`` or ``fastlam.kernels.tuning.enable()``), the first
:func:`.tile_tables.block_config` call for a launch on a CUDA device with a (dtype, BLOCK_D,
fused RoPE, shape class) not tuned yet times, for each launch kind (forward, dK/dV, dK/dV with
atomic dQ, dQ), the fallback tile (what tuning off would launch: the table or a committed
``kernels/tuned/<device>.json``) and the kind's :mod:`.tile_candidates`, by the rule of
:mod:`.tuning` (two rounds of ``triton.testing.do_bench``; never a candidate that fails to
build, spills on this device or changes the output). Synthetic inputs of the shape class:
16 heads, frames of 256 tokens with the frame-causal mask, the class's sequence length (2048
tokens, 8 frames, B=4, unless the launcher passes ``seq_len``, which rounds up to a power of
two in 256..16384; B keeps 8192 tokens per head, at least 1), RoPE tables of that layout for
fused keys. The choice is written to the tuning cache (:func:`.tuning.cache_path`: device
name, Triton version, shape class), kept in memory, and read back by later processes without
timing anything; a cache file made for another fallback tile or candidate list is timed
again. First use of a class costs the compiles of up to 8 extra binaries (two candidates for
each of four kinds, seconds each) and about 0.3 s of timing per kind (not yet measured on a
GPU). Tuning never runs during CUDA graph capture (the fallback is used, with a warning).
Launches with the temporal masks or key padding keep the fallback tiles
(:func:`.tile_tables.mask_variant_config`). Every rank of a multi-GPU job tunes for itself
(the same file is replaced atomically; ranks may settle on different tiles, whose outputs
agree to rounding).

Precedence: forced tiles / ``FASTLAM_ATTN_TILES`` > device tuning (when on) > a committed
tuned table > the built-in table. Off (the default), nothing here runs. Under the Triton
interpreter (CPU tests) the same code times tiny shapes with the interpreter's 16-wide
candidates, by the wall clock unless a test injects a timer: it exercises selection, cache
and fallback, its timings mean nothing.
"""
from __future__ import annotations

import logging
import math
import time
import warnings

import torch
import triton

from . import tuning
from ._common import interpreting
from .attention import attention_backward, attention_forward, attn_bwd_dkdv, attn_bwd_dq, attn_fwd
from .tile_candidates import candidates
from .tile_tables import DTYPE_NAME, KINDS, check_tiles, forced, set_device_tuner, tile_key

log = logging.getLogger(__name__)

REF_B, REF_H, REF_FRAME, REF_SEQ = 4, 16, 256, 2048
MIN_SEQ, MAX_SEQ = 256, 16384
INTERPRETER_DEVICE = "cpu-triton-interpreter"
_KIND_ORDER = ("fwd", "bwd_kv_atomic", "bwd_kv", "bwd_q")  # the forward's inputs first
_KERNELS = {"fwd": (attn_fwd,), "bwd_kv": (attn_bwd_dkdv,), "bwd_kv_atomic": (attn_bwd_dkdv,), "bwd_q": (attn_bwd_dq,)}
# (device name, triton version, shape class) -> {key: tile}: each class is read or timed once a process.
_CHOSEN: dict = {}
_WARNED_CAPTURE: set = set()


def seq_bucket(seq_len: int | None) -> int:
    """The shape class's sequence length: the next power of two in [MIN_SEQ, MAX_SEQ]."""
    if seq_len is None:
        return REF_SEQ
    return min(MAX_SEQ, max(MIN_SEQ, triton.next_power_of_2(int(seq_len))))


def shape_class(dtype_name: str, block_d: int, rope: bool, seq_len: int | None) -> str:
    return f"{dtype_name}-hd{block_d}{'-rope' if rope else ''}-L{seq_bucket(seq_len)}"


def timing_shape(block_d: int, seq_len: int | None, interpret: bool) -> tuple:
    """(B, H, frames, frame_len, head_dim) the class is timed at."""
    if interpret:
        return 1, 1, 2, 16, block_d
    L = seq_bucket(seq_len)
    frame = min(REF_FRAME, L)
    # The reference's token count per head for longer classes (inputs stay ~100 MB), B >= 1.
    return max(1, REF_B * REF_SEQ // L), REF_H, L // frame, frame, block_d


def timing_rope_tables(n_frames: int, frame_len: int, head_dim: int, device) -> tuple:
    """RoPE tables of the layout the fused kernels index (:func:`.attention.rope_rotate`): no
    prefix tokens, a square patch grid, channel pairs over the t / h / w axes in turn. Their
    values only need to be a rotation; the cost of the gathers is what is timed."""
    grid_w = max(1, math.isqrt(frame_len))
    n_pos = max(n_frames, -(-frame_len // grid_w), grid_w, 1)
    freqs = 10000.0 ** (-torch.arange(head_dim, dtype=torch.float32) / head_dim)
    angles = torch.arange(n_pos, dtype=torch.float32)[:, None] * freqs[None, :]
    axis = (torch.arange(head_dim) // 2 % 3).to(torch.int32)
    return (angles.cos().to(device), angles.sin().to(device), axis.to(device), 0, grid_w)


class TimingCase:
    """Inputs of one timing shape and the launch that exercises one kind."""

    def __init__(self, kind: str, shape: tuple, dtype: torch.dtype, rope: bool, device):
        B, H, T, F, D = shape
        g = torch.Generator(device="cpu").manual_seed(0)
        self.q, self.k, self.v, self.do = (torch.randn((B, H, T * F, D), generator=g).to(device=device, dtype=dtype)
                                           for _ in range(4))
        self.kind = kind
        self.kw = dict(frame_len=F, mask="frame_causal", scale=D ** -0.5,
                       rope_tables=timing_rope_tables(T, F, D, device) if rope else None, rope_fusion="kernel")
        self.out = self.lse = None

    def prepare(self) -> None:
        """The forward the backward kinds need (outside the timed call)."""
        if self.kind != "fwd":
            self.out, self.lse = attention_forward(self.q, self.k, self.v, **self.kw)

    def __call__(self):
        if self.kind == "fwd":
            return attention_forward(self.q, self.k, self.v, **self.kw)
        return attention_backward(self.do, self.q, self.k, self.v, self.out, self.lse,
                                  deterministic=self.kind != "bwd_kv_atomic", **self.kw)


def kernels_of(kind: str) -> tuple:
    """The ``@triton.jit`` functions whose binaries a kind's candidates build (spill watch)."""
    return _KERNELS[kind]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_DEVICE


def timer_for(device: torch.device):
    """do_bench on CUDA; the wall clock under the interpreter (tests replace this)."""
    return tuning.wall_clock_ms if device.type != "cuda" else tuning.do_bench_ms()


def tune_group(device: torch.device, dtype: torch.dtype, block_d: int, rope: bool, seq_len: int | None,
               baseline: dict, timer=None, interpret: bool | None = None) -> tuple:
    """Time every tuned kind of one shape class: ({key: winning tile}, {key: [Trial, ...]})."""
    interpret = interpreting() if interpret is None else interpret
    timer = timer or timer_for(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = DTYPE_NAME[dtype]
    base_tiles = {tile_key(k, name, block_d, rope): tuple(t) for k, t in baseline.items() if t is not None}
    shape = timing_shape(block_d, seq_len, interpret)
    chosen, trials = {}, {}
    for kind in _KIND_ORDER:
        key = tile_key(kind, name, block_d, rope)
        if key not in base_tiles:
            continue
        cands = [c for c in candidates(key, interpret) if tuple(c) != base_tiles[key]]
        if not cands:
            continue
        case = TimingCase(kind, shape, dtype, rope, device)
        with forced(base_tiles):
            case.prepare()

        def run(tile, case=case, key=key):
            with forced({**base_tiles, key: tile}):
                return case()
        trials[key] = tuning.measure([base_tiles[key]] + cands, run, timer,
                                     spills=tuning.SpillWatch(kernels_of(kind)), sync=sync)
        winner, _ = tuning.decide(trials[key])
        if winner is not None:
            chosen[key] = winner.tile
    return chosen, trials


def _cache_expect(device: str, cls: str, dtype_name: str, block_d: int, rope: bool, baseline: dict,
                  interpret: bool) -> dict:
    keys = {k: tile_key(k, dtype_name, block_d, rope) for k in KINDS if baseline.get(k) is not None}
    return {"device": device, "triton": triton.__version__, "shape_class": cls,
            "baseline": {key: list(baseline[k]) for k, key in keys.items()},
            "candidates": {key: [list(t) for t in candidates(key, interpret)] for key in keys.values()}}


def device_tiles(device: torch.device, dtype: torch.dtype, block_d: int, rope: bool, seq_len: int | None,
                 baseline: dict) -> dict:
    """The tuner :func:`.tile_tables.block_config` asks: {key: tile} for this launch's shape
    class, timed on first use (see the module docstring); {} when tuning is off, the device
    is not a CUDA one (or the interpreter's CPU), the dtype is not tuned, or the stream is
    being captured into a CUDA graph."""
    if not tuning.enabled() or dtype not in DTYPE_NAME:
        return {}
    interpret = interpreting()
    if device.type == "cuda" and not interpret:
        if torch.cuda.is_current_stream_capturing():
            if device.index not in _WARNED_CAPTURE:
                _WARNED_CAPTURE.add(device.index)
                warnings.warn("fastlam: attention tile tuning skipped during CUDA graph capture (fallback tiles); "
                              "run one eager step first to tune", stacklevel=3)
            return {}
    elif not (interpret and device.type == "cpu"):
        return {}
    name, dtype_name = device_name(device), DTYPE_NAME[dtype]
    cls = shape_class(dtype_name, block_d, rope, seq_len)
    memo_key = (name, triton.__version__, cls, tuple(sorted((k, v) for k, v in baseline.items() if v)))
    if memo_key in _CHOSEN:
        return _CHOSEN[memo_key]
    expect = _cache_expect(name, cls, dtype_name, block_d, rope, baseline, interpret)
    if not any(expect["candidates"].values()):
        _CHOSEN[memo_key] = {}
        return {}
    path = tuning.cache_path(name, triton.__version__, cls)
    cached = tuning.read_cache(path, expect)
    if cached is not None:
        try:
            tiles = check_tiles(cached["tiles"], f"tuning cache {path}")
        except ValueError as e:
            warnings.warn(f"fastlam: ignoring the tuning cache file {path} ({e}); timing again", stacklevel=2)
        else:
            _CHOSEN[memo_key] = tiles
            return tiles
    t0 = time.perf_counter()
    tiles, trials = tune_group(device, dtype, block_d, rope, seq_len, baseline, interpret=interpret)
    seconds = time.perf_counter() - t0
    tuning.write_cache(path, {**expect, "tiles": {k: list(t) for k, t in tiles.items()}, "seconds": round(seconds, 2),
                              "shape": list(timing_shape(block_d, seq_len, interpret)),
                              "trials": {k: [tuning.trial_record(t) for t in ts] for k, ts in trials.items()}})
    log.info("fastlam: tuned attention tiles for %s on %s in %.1f s: %s", cls, name, seconds,
             ", ".join(f"{k} -> {tuning.Trial(t, '').tile_text}" for k, t in tiles.items()) or "defaults kept")
    _CHOSEN[memo_key] = tiles
    return tiles


def forget() -> None:
    """Drop the in-process choices (the disk cache stays): the next launch reads it again."""
    _CHOSEN.clear()


set_device_tuner(device_tiles)
