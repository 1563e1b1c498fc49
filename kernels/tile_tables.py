"""Where the attention launchers' tiles come from: default table, tuned table, forced override.

A tile is ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` for one launch kind of the attention
kernels, keyed ``"<kind>,<dtype>,hd<BLOCK_D>[,rope]"`` (``rope``: the rotation fused into the
kernel), e.g. ``"fwd,bf16,hd64,rope"``. Kinds: ``fwd``, ``bwd_kv`` (dK/dV pass), ``bwd_kv_atomic``
(dK/dV pass with atomic dQ), ``bwd_q`` (dQ pass). Precedence, per key:

1. ``FASTLAM_ATTN_TILES`` (environment), read when a launch first needs it:
   - ``default``: use the built-in table (``kernels/attention.py``), ignore tuned tables;
   - a path to a ``.json`` file in the tuned-table format below: its tiles, on any device;
   - inline entries ``KEY=BM,BN,WARPS,STAGES`` separated by ``;``, e.g.
     ``FASTLAM_ATTN_TILES="fwd,bf16,hd64,rope=64,64,4,2;bwd_q,bf16,hd64,rope=64,32,4,2"``.
   Forced tiles apply under the interpreter too (they are an explicit choice). A bad value is a
   ``ValueError`` that names the variable, the entry and the expected form.
2. On CUDA only: ``kernels/tuned/<device>.json`` for the current device (``device_key``
   normalises ``torch.cuda.get_device_name``: ``"NVIDIA H100 80GB HBM3"`` ->
   ``nvidia-h100-80gb-hbm3``), written by ``benchmarks/tune_tiles.py``; used only when its
   triton major.minor is the installed one (tiles timed under another compiler can spill
   under this one); otherwise ignored with one warning.
3. The built-in default table (spill-free under every supported triton, see
   benchmarks/results/static/versions.md).

Tuned-table format (JSON): ``{"format": 1, "device": <torch.cuda.get_device_name>, "triton":
<version>, ..., "tiles": {KEY: [BM, BN, WARPS, STAGES], ...}}``; keys absent from ``tiles``
keep the default. The CPU and the interpreter never read tuned tables.
"""
from __future__ import annotations

import functools
import json
import os
import re
import warnings
from pathlib import Path

ENV = "FASTLAM_ATTN_TILES"
TUNED_DIR = Path(__file__).resolve().parent / "tuned"
KINDS = ("fwd", "bwd_kv", "bwd_kv_atomic", "bwd_q")
DTYPE_NAMES = ("fp16", "bf16", "fp32")
BLOCK_DS = (16, 32, 64, 128)
FORMAT = 1
_KEY_RE = re.compile(r"^(?P<kind>[a-z_]+),(?P<dtype>[a-z0-9]+),hd(?P<bd>\d+)(?P<rope>,rope)?$")

# Set by benchmarks/tune_tiles.py around a timed launch (same validation as the variable).
_FORCED: dict = {}


def tile_key(kind: str, dtype_name: str, block_d: int, rope: bool) -> str:
    return f"{kind},{dtype_name},hd{block_d}{',rope' if rope else ''}"


def device_key(name: str) -> str:
    """File stem for a device name: lower case, runs of other characters as one ``-``."""
    key = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    if not key:
        raise ValueError(f"device name {name!r} has no letters or digits")
    return key


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_key(key: str, where: str) -> str:
    m = _KEY_RE.match(key.strip()) if isinstance(key, str) else None
    if (m is None or m["kind"] not in KINDS or m["dtype"] not in DTYPE_NAMES
            or int(m["bd"]) not in BLOCK_DS):
        raise ValueError(
            f"{where}: tile key {key!r}: expected '<kind>,<dtype>,hd<BLOCK_D>[,rope]' with kind in "
            f"{KINDS}, dtype in {DTYPE_NAMES}, BLOCK_D in {BLOCK_DS} (e.g. 'fwd,bf16,hd64,rope')")
    return key.strip()


def check_tile(key: str, value, where: str) -> tuple:
    """A validated (BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    try:
        tile = tuple(int(v) for v in value)
        ok = (len(tile) == 4 and all(float(v) == int(v) for v in value))
    except (TypeError, ValueError):
        ok = False
    if ok:
        bm, bn, warps, stages = tile
        ok = (_is_pow2(bm) and _is_pow2(bn) and 16 <= bm <= 256 and 16 <= bn <= 256
              and warps in (1, 2, 4, 8, 16) and 1 <= stages <= 8)
    if not ok:
        raise ValueError(
            f"{where}: tile for {key!r} is {value!r}: expected 4 integers BLOCK_M,BLOCK_N,WARPS,STAGES "
            f"(BLOCK_M, BLOCK_N powers of two in 16..256; WARPS in 1,2,4,8,16; STAGES in 1..8)")
    return tile


def check_tiles(tiles, where: str) -> dict:
    if not isinstance(tiles, dict):
        raise ValueError(f"{where}: 'tiles' must be an object {{key: [BM, BN, WARPS, STAGES]}}, got {type(tiles).__name__}")
    return {check_key(k, where): check_tile(k, v, where) for k, v in tiles.items()}


def read_table(path) -> dict:
    """A tuned-table file, validated: the parsed JSON with ``tiles`` as {key: tile tuple}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"tuned tile table {path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or "tiles" not in data:
        raise ValueError(f"tuned tile table {path}: expected a JSON object with \"format\": {FORMAT} "
                         f"and \"tiles\" (written by benchmarks/tune_tiles.py)")
    data["tiles"] = check_tiles(data["tiles"], f"tuned tile table {path}")
    return data


def parse_override(text: str) -> dict | None:
    """``FASTLAM_ATTN_TILES``'s tiles: None for ``default`` (built-in table only), else {key: tile}."""
    where = f"{ENV}={text!r}"
    text = text.strip()
    if text == "default":
        return None
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise ValueError(f"{where}: no such file (expected 'default', a tuned-table .json file, "
                             f"or KEY=BM,BN,WARPS,STAGES entries separated by ';')")
        return read_table(text)["tiles"]
    tiles = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        if "=" not in entry:
            raise ValueError(f"{where}: entry {entry!r} has no '=': expected KEY=BM,BN,WARPS,STAGES, e.g. "
                             f"'fwd,bf16,hd64,rope=64,64,4,2' (or 'default', or a .json table)")
        key, _, value = entry.partition("=")
        key = check_key(key, where)
        tiles[key] = check_tile(key, value.split(","), where)
    if not tiles:
        raise ValueError(f"{where}: empty; expected 'default', a .json table, or KEY=BM,BN,WARPS,STAGES entries")
    return tiles


def _triton_minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


@functools.lru_cache(maxsize=None)
def _cuda_device_name(index: int) -> str:
    import torch

    return torch.cuda.get_device_name(index)


@functools.lru_cache(maxsize=None)
def _tuned_for(device_name: str, triton_version: str) -> dict:
    path = TUNED_DIR / f"{device_key(device_name)}.json"
    if not path.is_file():
        return {}
    table = read_table(path)
    if _triton_minor(table.get("triton", "")) != _triton_minor(triton_version):
        warnings.warn(f"fastlam: tuned attention tiles {path} were timed with triton {table.get('triton')}; "
                      f"triton {triton_version} is installed, so the default tiles are used "
                      f"(rerun benchmarks/tune_tiles.py, or force them with {ENV}={path})", stacklevel=3)
        return {}
    return table["tiles"]


@functools.lru_cache(maxsize=None)
def _parsed_env(text: str) -> dict | None:
    return parse_override(text)


def overrides(device=None) -> dict:
    """{key: tile} replacing default tiles for launches on ``device`` (a torch.device or None)."""
    if _FORCED:
        return _FORCED
    text = os.environ.get(ENV)
    if text is not None and text.strip():
        tiles = _parsed_env(text)
        return {} if tiles is None else tiles
    if device is None or getattr(device, "type", None) != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return {}
    import triton

    index = device.index if device.index is not None else _current_cuda_index()
    return _tuned_for(_cuda_device_name(index), triton.__version__)


def _current_cuda_index() -> int:
    import torch

    return torch.cuda.current_device()


class forced:
    """``with forced({key: tile}):`` launches use these tiles (the sweep's timed candidates)."""

    def __init__(self, tiles: dict):
        self.tiles = check_tiles(dict(tiles), "forced tiles")

    def __enter__(self):
        self._saved = dict(_FORCED)
        _FORCED.clear()
        _FORCED.update(self.tiles)
        return self

    def __exit__(self, *exc):
        _FORCED.clear()
        _FORCED.update(self._saved)
        return False


# The tile sweep's candidates per key (benchmarks/tune_tiles.py times the default tile and
# these). bf16 only (the GPU training dtype), head dims 64 and 128, the fused rotation and the
# plain kernels. Every candidate is registered (not as a default) in fastlam.kernels.registry,
# so the static check compiles it for sm_90 / sm_80; each is spill-free there under the pinned
# triton (tests/test_tile_tables.py reads the committed report), and the sweep also drops any
# candidate that the device's own compiler makes spill.
SWEEP_CANDIDATES: dict = {  # in the order the sweep times them (what training launches first)
    "fwd,bf16,hd64,rope": [(64, 32, 4, 2)],  # 64x64/4w/3 stages: 48 B STACK on sm_90 (3.7.1)
    "bwd_kv_atomic,bf16,hd64,rope": [(64, 32, 8, 2)],
    "fwd,bf16,hd128,rope": [(128, 32, 8, 2)],  # 64x32/4w/3 stages: 496-512 B STACK (3.9.0)
    "bwd_kv,bf16,hd128,rope": [(32, 32, 8, 1), (16, 32, 8, 2)],
    "bwd_q,bf16,hd128,rope": [(64, 32, 8, 2)],
    "bwd_kv,bf16,hd64,rope": [(32, 32, 8, 2)],  # 64x64/8w: 272 B STACK on sm_80 (triton 3.7.1)
    "bwd_q,bf16,hd64,rope": [(32, 64, 4, 2)],
}
