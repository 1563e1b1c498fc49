"""Choosing a launch parameter by timing it on the device: the measurement, the noise rule and
the on-disk cache that device-side tuning and ``benchmarks/tune_tiles.py`` share.

Nothing here knows about attention: a caller hands :func:`measure` the candidate tiles, a
function that launches one of them, a timer and a watch on the binaries Triton builds, and
gets one :class:`Trial` per tile back; :func:`decide` applies the noise rule.
:mod:`.attention_tuning` uses it for the attention kernels' tiles at first launch (the hook
behind :func:`.tile_tables.block_config`), ``benchmarks/tune_tiles.py`` for its offline sweep.

The rule (one implementation for both): every tile runs once first (compile, launch, output
kept); a tile that fails to build or launch, whose binaries spill registers on this device
(``n_spills`` of the new binaries), or whose output differs from the first tile's (the
default, the reference) by more than :data:`AGREE_TOL` relative to its largest magnitude is
never chosen. The others are timed in two rounds over all of them (so a drift of the clock or
the power state hits every tile alike); a candidate replaces the default only if it is faster
in both rounds by ``max(3%, 2 x the default's own round-to-round spread)``, and among such
winners the fastest on average wins.

Switches: :data:`ENV_TUNE` (``FASTLAM_ATTN_TUNE``: ``1``/``on``/``true``/``yes`` or
``0``/``off``/``false``/``no``; unset = off) or :func:`enable` (wins over the variable).
Cache: one small JSON file per (device, Triton version, shape class) under
:func:`cache_dir` (``$FASTLAM_CACHE_DIR/tuning``, else ``$XDG_CACHE_HOME/fastlam/tuning``, else
``~/.cache/fastlam/tuning``), written to a temporary file and renamed over the old one (atomic:
a concurrent reader sees the old file or the new one, never half of one; ranks of one job that
tune together all write the same kind of answer). A file that cannot be read or does not
match what is asked is reported with a warning and ignored (the group is timed again and the
file replaced), never an error.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import triton.testing

ENV_TUNE = "FASTLAM_ATTN_TUNE"
ENV_CACHE = "FASTLAM_CACHE_DIR"
CACHE_FORMAT = 1
MIN_MARGIN = 0.03
# Output agreement between a candidate and the default tile: both round the same fp32
# accumulations to 16 bits in another order (differences of a few ulp of bf16, < 1%); a wrong
# tile (a masked-out row, a missed key block) is off by O(1).
AGREE_TOL = 0.03
_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no", "")

# Set by enable(); None: the environment variable decides.
_SWITCH: list = [None]


def enable(on: bool | None = True) -> None:
    """Switch device-side tuning on or off for this process (``None``: back to ``FASTLAM_ATTN_TUNE``)."""
    _SWITCH[0] = None if on is None else bool(on)


def enabled() -> bool:
    """Whether launches time their tile candidates at first use (see the module docstring)."""
    if _SWITCH[0] is not None:
        return _SWITCH[0]
    text = os.environ.get(ENV_TUNE, "").strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise ValueError(f"{ENV_TUNE}={os.environ.get(ENV_TUNE)!r}: expected one of {_ON} (tune at first launch) "
                     f"or {_OFF[:-1]} (the fixed tile table)")


def cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE, "").strip()
    if root:
        return Path(root).expanduser() / "tuning"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastlam" / "tuning"


def _slug(text: str, lower: bool = True) -> str:
    text = str(text).strip()
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", text.lower() if lower else text).strip("-")
    if not slug:
        raise ValueError(f"{text!r} has no letters or digits")
    return slug


def cache_path(device_name: str, triton_version: str, shape_class: str, root: Path | None = None) -> Path:
    """``<cache_dir>/<device>/triton-<version>/<shape class>.json``."""
    return (root or cache_dir()) / _slug(device_name) / f"triton-{_slug(triton_version)}" / f"{_slug(shape_class, lower=False)}.json"


def read_cache(path: Path, expect: dict) -> dict | None:
    """The cached entry at ``path`` if it is one and every ``expect`` field matches; else None,
    with a warning when a file is there but unusable (corrupt, another format or content)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("tiles"), dict):
            raise ValueError(f"not a format-{CACHE_FORMAT} tuning entry")
    except (OSError, ValueError) as e:
        warnings.warn(f"fastlam: ignoring the tuning cache file {path} ({type(e).__name__}: {e}); "
                      "timing this shape class again and replacing it", stacklevel=2)
        return None
    stale = [k for k, v in expect.items() if data.get(k) != v]
    if stale:
        warnings.warn(f"fastlam: the tuning cache file {path} was made for other {', '.join(stale)} "
                      "(tile table or candidates changed); timing this shape class again", stacklevel=2)
        return None
    return data


def write_cache(path: Path, data: dict) -> Path:
    """Write ``data`` (with the format stamp) atomically: a temporary file in the same folder,
    then ``os.replace`` over the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, **data}, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------- measuring


@dataclass
class Trial:
    """One tile's record: role ``default`` (the reference, first) or ``candidate``; times in ms
    per round (None: not timed); ``verdict`` empty while the tile is still eligible."""

    tile: tuple
    role: str
    t1_ms: float | None = None
    t2_ms: float | None = None
    spills: int | None = None
    compile_s: float | None = None
    max_rel_diff: float | None = None
    verdict: str = ""

    @property
    def tile_text(self) -> str:
        bm, bn, w, s = self.tile
        return f"{bm}x{bn} w{w} s{s}"


def tile_from_text(text: str) -> tuple:
    """Inverse of :attr:`Trial.tile_text` (``"64x32 w4 s2"`` -> (64, 32, 4, 2))."""
    mn, w, s = text.split()
    bm, bn = mn.split("x")
    return int(bm), int(bn), int(w[1:]), int(s[1:])


def compiled_binaries(fn) -> dict:
    """id -> CompiledKernel of every binary the ``@triton.jit`` function ``fn`` has built so far
    (empty under the interpreter or where this triton keeps them elsewhere)."""
    found = {}
    for cache in getattr(fn, "device_caches", {}).values():
        kernels = cache[0] if isinstance(cache, tuple) else cache
        if isinstance(kernels, dict):
            found.update({id(k): k for k in kernels.values()})
    return found


def worst_spills(binaries) -> int | None:
    """Largest ``n_spills`` of these compiled kernels; None when this triton does not say."""
    worst = None
    for k in binaries:
        try:
            if hasattr(k, "_init_handles"):
                k._init_handles()
            n = int(k.n_spills)
        except Exception:  # noqa: BLE001 - not exposed by this triton: unknown, not zero
            continue
        worst = n if worst is None else max(worst, n)
    return worst


class SpillWatch:
    """Called after a launch: the worst spills among binaries of ``fns`` built since the last call."""

    def __init__(self, fns: Sequence):
        self.fns = tuple(fns)
        self.seen = self._ids()

    def _ids(self) -> set:
        return {kid for fn in self.fns for kid in compiled_binaries(fn)}

    def __call__(self) -> int | None:
        new = [k for fn in self.fns for kid, k in compiled_binaries(fn).items() if kid not in self.seen]
        self.seen |= {id(k) for k in new}
        return worst_spills(new)


def _flat(outputs) -> list:
    """The tensors of a launch's outputs (a tensor, or nested tuples / lists of them)."""
    if isinstance(outputs, (tuple, list)):
        return [t for o in outputs for t in _flat(o)]
    return [outputs]


def max_rel_diff(got, ref) -> float:
    """Largest |got - ref| over the largest |ref|, per output tensor, worst of them; inf when
    ``got`` has a non-finite value or other outputs."""
    got, ref = _flat(got), _flat(ref)
    if len(got) != len(ref):
        return math.inf
    worst = 0.0
    for a, b in zip(got, ref):
        a, b = a.float(), b.float()
        if not bool(a.isfinite().all()):
            return math.inf
        worst = max(worst, float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6))
    return worst


def do_bench_ms(warmup: int = 10, rep: int = 40) -> Callable:
    """A timer for :func:`measure`: ``triton.testing.do_bench``'s median in ms (CUDA only)."""
    def bench(fn) -> float:
        try:
            return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
        except TypeError:  # a triton without return_mode
            return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep))
    return bench


def wall_clock_ms(fn) -> float:
    """A timer for the interpreter (one call, wall clock): exercises the code, not the device."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0][:160] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def measure(tiles: Sequence[tuple], run: Callable, timer: Callable, *, spills: Callable = lambda: None,
            sync: Callable = lambda: None, agree_tol: float = AGREE_TOL, rounds: int = 2) -> list:
    """One :class:`Trial` per tile (``tiles[0]`` is the default and the output reference).

    ``run(tile)`` launches with that tile and returns its outputs; ``timer(fn)`` gives the
    milliseconds of one ``fn()``-sized call; ``spills()`` the worst spill count of binaries
    built since it was last called (None: unknown); ``sync()`` waits for the device. The
    default failing to launch raises (nothing to compare against); a candidate failing is a
    verdict. Timed: every eligible tile, ``rounds`` rounds over all of them.
    """
    trials, ref = [], None
    spills()  # binaries built before this measurement are not the candidates'
    for i, tile in enumerate(tiles):
        trial = Trial(tuple(tile), "default" if i == 0 else "candidate")
        trials.append(trial)
        t0 = time.perf_counter()
        try:
            outs = run(trial.tile)
            sync()
        except Exception as e:  # noqa: BLE001 - a candidate that does not build or launch is reported
            if i == 0:
                raise
            trial.verdict = f"error: {_first_line(e)}"
            continue
        trial.compile_s = time.perf_counter() - t0
        trial.spills = spills()
        if i == 0:
            ref = outs
        else:
            trial.max_rel_diff = max_rel_diff(outs, ref)
            if not trial.max_rel_diff <= agree_tol:
                trial.verdict = f"wrong result (max rel diff {trial.max_rel_diff:.2e} vs the default tile)"
                continue
        if trial.spills:
            trial.verdict = f"spills ({trial.spills} B)"
    eligible = [t for t in trials if not t.verdict]
    for r in range(rounds):
        for trial in eligible:
            ms = timer(lambda: run(trial.tile))
            if r == 0:
                trial.t1_ms = ms
            else:
                trial.t2_ms = ms
    return trials


def decide(trials: list) -> tuple:
    """(the winning candidate Trial or None, the margin); fills every trial's verdict.

    ``trials[0]`` is the default. A candidate wins only if faster in both rounds by
    ``max(MIN_MARGIN, 2 x the default's relative round-to-round spread)``; among winners, the
    lowest sum of the two rounds. A trial that already has a verdict (error, spill, wrong
    result) is never chosen.
    """
    default = trials[0]
    d1, d2 = default.t1_ms, default.t2_ms
    margin = max(MIN_MARGIN, 2 * abs(d1 - d2) / ((d1 + d2) / 2))
    default.verdict = "default"
    best = None
    for trial in trials[1:]:
        if trial.verdict:
            continue
        c1, c2 = trial.t1_ms, trial.t2_ms
        if c1 < d1 * (1 - margin) and c2 < d2 * (1 - margin):
            trial.verdict = f"faster in both rounds by > {margin:.1%}"
            if best is None or c1 + c2 < best.t1_ms + best.t2_ms:
                best = trial
        elif c1 < d1 and c2 < d2:
            trial.verdict = f"faster, within the {margin:.1%} margin"
        else:
            trial.verdict = "not faster in both rounds"
    if best is not None:
        best.verdict = "CHOSEN: " + best.verdict
    return best, margin


def trial_record(trial: Trial) -> dict:
    """A JSON-able dict of one trial (the cache file keeps every trial of a tuning)."""
    return {"tile": list(trial.tile), "role": trial.role, "t1_ms": trial.t1_ms, "t2_ms": trial.t2_ms,
            "spills": trial.spills, "max_rel_diff": trial.max_rel_diff, "verdict": trial.verdict}
