"""The attention launchers' tiles: the default table, tuned tables, forced overrides, and
:func:`block_config`, which picks among them for a launch.

A tile is ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` for one launch kind of the attention
kernels, keyed ``"<kind>,<dtype>,hd<BLOCK_D>[,rope]"`` (``rope``: the rotation fused into the
kernel), e.g. ``"fwd,bf16,hd64,rope"``. Kinds: ``fwd``, ``bwd_kv`` (dK/dV pass), ``bwd_kv_atomic``
(dK/dV pass with atomic dQ), ``bwd_q`` (dQ pass). Precedence, per key:

1. ``FASTLAM_ATTN_TILES`` (environment), read when a launch first needs it:
   - ``default``: use the built-in table (``_TILES`` below), ignore tuned tables;
   - a path to a ``.json`` file in the tuned-table format below: its tiles, on any device;
   - inline entries ``KEY=BM,BN,WARPS,STAGES`` separated by ``;``, e.g.
     ``FASTLAM_ATTN_TILES="fwd,bf16,hd64,rope=64,64,4,2;bwd_q,bf16,hd64,rope=64,32,4,2"``.
   Forced tiles apply under the interpreter too (they are an explicit choice). A bad value is a
   ``ValueError`` that names the variable, the entry and the expected form.
2. Device-side tuning, when on (``FASTLAM_ATTN_TUNE=1`` or ``tuning.enable()``; off by
   default): on CUDA, the first launch of a shape class times the fallback tile (3. or 4.)
   against :mod:`.tile_candidates` and keeps the winner in a per-user disk cache
   (:mod:`.attention_tuning`, rule and cache in :mod:`.tuning`), installed here through
   :func:`set_device_tuner`. Never while 1. decides.
3. On CUDA only: ``kernels/tuned/<device>.json`` for the current device (``device_key``
   normalises ``torch.cuda.get_device_name``: ``"NVIDIA H100 80GB HBM3"`` ->
   ``nvidia-h100-80gb-hbm3``), written by ``benchmarks/tune_tiles.py``; used only when its
   triton major.minor is the installed one (tiles timed under another compiler can spill
   under this one); otherwise ignored with one warning.
4. The built-in default table (spill-free under every supported triton, see
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

import torch
import triton

from ._common import interpreting, triton_release

ENV = "FASTLAM_ATTN_TILES"
TUNED_DIR = Path(__file__).resolve().parent / "tuned"
KINDS = ("fwd", "bwd_kv", "bwd_kv_atomic", "bwd_q")
# Key spelling of the launch dtypes.
DTYPE_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
DTYPE_NAMES = tuple(DTYPE_NAME.values())
BLOCK_DS = (16, 32, 64, 128)
FORMAT = 1
_KEY_RE = re.compile(r"^(?P<kind>[a-z_]+),(?P<dtype>[a-z0-9]+),hd(?P<bd>\d+)(?P<rope>,rope)?$")

# Set by the tile timing (kernels/attention_tuning.py, benchmarks/tune_tiles.py) around a timed
# launch (same validation as the variable).
_FORCED: dict = {}
# The device-side tuner (kernels/attention_tuning.py installs it on import; it imports the
# launchers, which import this module, hence a slot rather than an import): called by
# block_config as tuner(device, dtype, block_d, rope, seq_len, baseline_cfg) -> {key: tile}.
_DEVICE_TUNER: list = [None]
# block_config's entry holding the tiles a device-tuned config replaced.
UNTUNED = "untuned"


def set_device_tuner(tuner) -> None:
    """Install the function :func:`block_config` asks for device-tuned tiles (None: none)."""
    _DEVICE_TUNER[0] = tuner


def explicit_override() -> bool:
    """True while forced tiles or ``FASTLAM_ATTN_TILES`` decide (then nothing is tuned)."""
    return bool(_FORCED) or bool(os.environ.get(ENV, "").strip())


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
    if device is None or getattr(device, "type", None) != "cuda" or interpreting():
        return {}
    index = device.index if device.index is not None else _current_cuda_index()
    return _tuned_for(_cuda_device_name(index), triton.__version__)


def _current_cuda_index() -> int:
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


# ----------------------------------------------------------------------------- the default tiles


# (query tile, key tile, warps, stages) per (low-precision?, BLOCK_D). Every entry compiles
# for sm_90 and sm_80 without register spills (STACK 0 in ``cuobjdump -res-usage``); the
# rejected neighbours and their spills are noted. Low precision = fp16 / bf16 (tensor-core
# dots); fp32 uses IEEE dots, which hold operands in registers, hence the small tiles.
_TILES = {
    # forward: 128 query rows while it fits. hd128 at 128x64 spilled on sm_80 (24 B with
    # 3 stages, 224 B with 2) and 64x64 with 4 warps spilled ~300 B on both.
    ("fwd", True, 32): (128, 64, 4, 3),
    ("fwd", True, 64): (128, 64, 4, 3),
    ("fwd", True, 128): (128, 32, 8, 3),
    ("fwd", False, 32): (64, 32, 4, 2),
    ("fwd", False, 64): (32, 32, 4, 1),  # 64x32 spilled 312 B (sm_90)
    ("fwd", False, 128): (16, 32, 8, 1),  # 32x32 spilled 80-664 B
    # dK/dV pass (queries, keys): holds k, v and two fp32 accumulators. hd64 at 64x64 with
    # 8 warps spilled 8 B on sm_80; hd128 with 64 queries spilled 112-168 B.
    ("bwd_kv", True, 32): (64, 64, 8, 2),
    ("bwd_kv", True, 64): (32, 64, 4, 2),
    ("bwd_kv", True, 128): (32, 64, 8, 2),
    ("bwd_kv", False, 32): (32, 32, 4, 2),
    ("bwd_kv", False, 64): (16, 32, 4, 2),  # 32x32 spilled 408-440 B
    ("bwd_kv", False, 128): (16, 32, 8, 2),
    # dK/dV pass with atomic dQ: one more fp32 tile. Every hd128 tiling tried spilled
    # (32x64: 72-96 B, 16x64: 32 B, 64x64: 328 B), so hd128 uses the dQ pass instead.
    ("bwd_kv_atomic", True, 32): (64, 64, 8, 2),
    ("bwd_kv_atomic", True, 64): (64, 64, 8, 2),
    ("bwd_kv_atomic", False, 32): (32, 32, 8, 2),
    ("bwd_kv_atomic", False, 64): (32, 32, 8, 2),
    # dQ pass (queries, keys).
    ("bwd_q", True, 32): (64, 64, 4, 2),
    ("bwd_q", True, 64): (64, 64, 4, 2),
    ("bwd_q", True, 128): (64, 64, 8, 2),
    ("bwd_q", False, 32): (32, 32, 4, 2),
    ("bwd_q", False, 64): (32, 32, 4, 2),
    ("bwd_q", False, 128): (16, 32, 8, 1),  # 32x32 spilled 80 B
}


# With the rotation fused (ROPE=True), the kernels also hold the cos / sin / partner tiles of
# the operand being rotated. Entries here replace the _TILES entry for those launches, only
# where the _TILES tile spilled with ROPE=True (see the module docstring for the figures).
# STACK figures are sm_90 / sm_80 with ROPE=True (triton 3.7, benchmarks.static_check).
_ROPE_TILES: dict = {
    ("fwd", True, 32): (128, 64, 8, 3),  # 4 warps spilled 8 B on sm_90
    ("fwd", True, 64): (128, 32, 8, 3),  # 128x64/4w: 32-40 / 168 B; 128x64/8w: 8 B; 64x64/4w: 48 / 32 B
    ("fwd", False, 32): (64, 32, 8, 2),  # 4 warps: 24 / 8 B
    ("fwd", False, 64): (32, 16, 4, 1),  # 32x32: 0 / 8 B with 4 or 8 warps
    ("fwd", False, 128): (16, 16, 8, 1),  # 16x32/8w: 0 / 8 B; 4 warps: 192-264 B
    ("bwd_kv", True, 64): (32, 64, 8, 2),  # 4 warps: 0 / 8 B
    ("bwd_kv", True, 128): (32, 32, 8, 2),  # 32x64: 40-48 B; 16x64: 16-32 B
    ("bwd_kv", False, 32): (32, 32, 8, 2),  # 4 warps: 8-24 B
    ("bwd_kv", False, 128): (16, 16, 8, 1),  # 16x32: 456 B; 16x16/4w: 296-360 B
    ("bwd_kv_atomic", True, 64): (32, 64, 8, 2),  # 64x64: 0 / 216 B
    ("bwd_kv_atomic", False, 32): (32, 32, 8, 1),  # 2 stages: 8 / 0 B
    ("bwd_kv_atomic", False, 64): (32, 16, 8, 2),  # 32x32: 136 / 0 B; 16x32: 8 / 0 B
    ("bwd_q", True, 64): (64, 32, 4, 2),  # 64x64/4w: 0 / 48 B; 8 warps: 0 / 8 B
    ("bwd_q", False, 64): (32, 16, 4, 2),  # 32x32: 488-496 B; 16x32: 32 B
}

# Register allocation differs between triton releases: a tile spill-free under one can spill
# under another (triton 3.9 spilled 14 default builds that 3.7 did not). Entries here replace
# the _TILES / _ROPE_TILES entry, keyed (kind, low precision, BLOCK_D, fused RoPE), for the
# triton releases from the key's major.minor up to the next key (an empty table ends a range).
# STACK figures: sm_90 / sm_80 under that release (benchmarks.static_check; every release's
# report: benchmarks/results/static/versions.md, made by scripts/static_check_versions.sh).
_TRITON_TILES: dict = {
    # 3.6: the GPU image's release (13 default builds spilled 8-296 B that 3.7 compiles clean).
    "3.6": {
        ("fwd", True, 128, True): (128, 32, 8, 2),  # 3 stages: 8 / 0 B
        ("bwd_kv", False, 64, True): (16, 32, 8, 1),  # 2 stages: 16 / 0 B
        ("bwd_kv_atomic", True, 64, False): (32, 64, 8, 2),  # 64x64: 0 / 8 B
        ("bwd_q", True, 128, True): (64, 32, 8, 2),  # 64x64: 8 / 48 B
        ("bwd_q", False, 128, True): (16, 16, 8, 1),  # 16x32: 296 / 280 B
    },
    "3.7": {},  # 3.7 and 3.8: the tables above
    "3.9": {
        ("fwd", True, 64, False): (128, 64, 8, 3),  # 4 warps: 0 / 16 B
        ("fwd", True, 128, True): (128, 32, 8, 2),  # 3 stages: 40 / 8 B
        ("fwd", False, 32, True): (64, 32, 8, 1),  # 2 stages: 16 / 0 B
        ("fwd", False, 128, True): (16, 16, 16, 1),  # 8 warps: 0 / 8 B; 32x16/16w: 0 / 8 B
        ("bwd_kv", False, 64, True): (16, 32, 8, 1),  # 16x32/4w: 80 / 0 B; 8w/2 stages: 8 / 0 B
        ("bwd_kv_atomic", True, 64, False): (32, 64, 8, 2),  # 64x64: 0 / 16 B
        ("bwd_kv_atomic", False, 64, False): (32, 16, 8, 2),  # 32x32: 0 / 8 B
        ("bwd_q", False, 32, True): (32, 32, 8, 2),  # 4 warps: 24 / 0 B
    },
}


def mask_variant_config(cfg: dict, masked: bool, low_precision: bool = True) -> dict:
    """Launch parameters for the temporal masks / key padding (``masked``): the plain tiles,
    with 8 warps where they have 4. The always-live predicate and tile-run bookkeeping made
    bf16 hd64 forward 128x64 / 4 warps spill on sm_90 (TEMPORAL 1: 80 B, 2: 48 B, KEY_PAD:
    8 B); more warps halve the registers per thread (benchmarks.static_check). The dQ pass
    keeps its warps (fp32 32x32 with 8 warps spilled 8 B on sm_80, TEMPORAL 1; 4: none) and
    takes key tiles of at most 32. Device-tuned tiles (timed with the frame masks only) give
    way to the fallback tiles here: only those are compiled with the mask variants in CI."""
    if not masked:
        return cfg
    out = dict(cfg)
    out.update(out.pop(UNTUNED, {}))
    if low_precision and out.get("bwd_q") is not None:
        # bf16 hd32 dQ (TEMPORAL 2) on sm_80: 64x64 spilled with 4 or 8 warps (16-32 B), 64x32 did not.
        BM, BN, w, st = out["bwd_q"]
        out["bwd_q"] = (BM, min(BN, 32), w, st)
    for kind in ("fwd", "bwd_kv", "bwd_kv_atomic"):
        if out.get(kind) is not None and out[kind][2] == 4:
            BM, BN, _, st = out[kind]
            out[kind] = (BM, BN, 8, st)
    # The atomic-dQ dK/dV pass at 64 queries x 64 keys (bf16 hd64): TEMPORAL 2 spilled 32 B on sm_80.
    if out.get("bwd_kv_atomic") is not None and out["bwd_kv_atomic"][:2] == (64, 64):
        out["bwd_kv_atomic"] = (32,) + out["bwd_kv_atomic"][1:]
    if not low_precision:
        # fp32 (ieee dots, twice the registers per element) at the plain tiles spilled 8-24 B in
        # 12 masked configs under triton 3.7.1 (fwd hd32/64, dQ hd64/128, dK/dV hd64 atomic and
        # hd128): half the query tile, and key tiles of 16 at hd128.
        for kind in ("fwd", "bwd_q", "bwd_kv", "bwd_kv_atomic"):
            if out.get(kind) is not None:
                BM, BN, w, st = out[kind]
                out[kind] = (max(16, BM // 2), 16 if out["BLOCK_D"] >= 128 else BN, w, st)
    elif out["BLOCK_D"] <= 32 and out.get("fwd") is not None:
        # bf16 / fp16 hd32 forward 128 x 64 with key padding: 8 B on sm_80.
        BM, BN, w, st = out["fwd"]
        out["fwd"] = (min(BM, 64), BN, w, st)
    return out


def triton_tiles(version: str | None = None) -> dict:
    """The per-release replacements (:data:`_TRITON_TILES`) for a triton version (installed one
    by default): the table of the greatest key <= its major.minor, else none."""
    v = triton_release(version)
    keys = [k for k in _TRITON_TILES if triton_release(k) <= v]
    return _TRITON_TILES[max(keys, key=triton_release)] if keys else {}


def block_config(head_dim: int, dtype: torch.dtype, interpret: bool | None = None, rope: bool = False,
                 device: torch.device | None = None, seq_len: int | None = None) -> dict:
    """Tile sizes and launch parameters for a head dim / dtype (a fixed table, no autotune).

    The head dim is padded to the next power of two (BLOCK_D, masked loads), so hd 80 and
    96 use the hd128 entries. Entries were picked from ahead-of-time compiles for sm_90 and
    sm_80 (see ``_TILES``): the largest query tile that compiles without spills, since a
    spill costs more than a smaller tile; :data:`_TRITON_TILES` replaces the entries that
    spill under a given triton release. Every entry is registered (:mod:`.attention_configs`),
    so CI's static check recompiles all of them. ``rope=True`` (the fused rotation) takes
    ``_ROPE_TILES`` where the plain tile spilled with it. Point-wise kernels use 64 rows (the Delta
    preprocess 32 at BLOCK_D 128; the rotation 8 warps there). Under the interpreter every
    tile is 16 (the tl.dot minimum), so tiny test shapes still cross many tile boundaries.
    ``device``: the launch's device; a tuned table for it, or ``FASTLAM_ATTN_TILES``, replaces
    entries (:mod:`.tile_tables`), and with device-side tuning on (:mod:`.attention_tuning`,
    ``FASTLAM_ATTN_TUNE=1``) the tiles timed on it at first use replace those, unless forced
    tiles or ``FASTLAM_ATTN_TILES`` decide. ``seq_len``: the launch's sequence length, which
    picks the tuning's shape class (None: the reference class). Without ``device`` (the
    registry): the default table.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpret is None:
        interpret = interpreting()
    over = overrides(device) if device is not None else {}
    if interpret:
        t = (16, 16, 4, 1)
        cfg = dict(BLOCK_D=block_d, fwd=t, bwd_kv=t, bwd_kv_atomic=t, bwd_q=t, pointwise=(16, 4),
                   rope_pointwise=(16, 4))
        return _device_tuned(_apply_overrides(cfg, over, dtype, block_d, rope), device, dtype, rope, seq_len)
    if block_d > 128:
        raise ValueError(f"head_dim: the Triton attention kernel takes head dims up to 128, got {head_dim}")
    low = dtype != torch.float32
    cfg = {}
    per_release = triton_tiles()
    for kind in ("fwd", "bwd_kv", "bwd_kv_atomic", "bwd_q"):
        key = (kind, low, block_d)
        cfg[kind] = _ROPE_TILES.get(key, _TILES.get(key)) if rope else _TILES.get(key)
        if cfg[kind] is not None:
            cfg[kind] = per_release.get((kind, low, block_d, rope), cfg[kind])
    _apply_overrides(cfg, over, dtype, block_d, rope)
    # The rotation kernel at 64 rows x 128 channels: 4 warps spilled 168-432 B (32 rows
    # fit but staged through shared memory at 200-245 registers); 8 warps: 104-158, no spill.
    rope_pw = (64, 4) if block_d <= 64 else (64, 8)
    cfg = dict(BLOCK_D=block_d, pointwise=(64 if block_d <= 64 else 32, 4), rope_pointwise=rope_pw, **cfg)
    return _device_tuned(cfg, device, dtype, rope, seq_len)


def _device_tuned(cfg: dict, device, dtype: torch.dtype, rope: bool, seq_len: int | None) -> dict:
    """``cfg`` (the fallback: table, tuned file) with the device tuner's tiles, if one is
    installed and nothing explicit decides; the tuner returns {} when tuning is off."""
    tuner = _DEVICE_TUNER[0]
    if device is None or tuner is None or explicit_override():
        return cfg
    baseline = {kind: cfg[kind] for kind in KINDS}
    tuned = tuner(device, dtype, cfg["BLOCK_D"], rope, seq_len, baseline)
    if tuned:
        cfg = _apply_overrides(cfg, tuned, dtype, cfg["BLOCK_D"], rope)
        cfg[UNTUNED] = baseline  # for mask_variant_config
    return cfg


def _apply_overrides(cfg: dict, over: dict, dtype: torch.dtype, block_d: int, rope: bool) -> dict:
    """Tuned or forced tiles replace default entries; a kind with no default (atomic dQ at
    hd128) stays off."""
    if over:
        name = DTYPE_NAME[dtype]
        for kind in KINDS:
            tile = over.get(tile_key(kind, name, block_d, rope))
            if tile is not None and cfg[kind] is not None:
                cfg[kind] = tile
    return cfg


def use_atomic_dq(head_dim: int, dtype: torch.dtype, deterministic: bool, rope: bool = False) -> bool:
    """Accumulate dQ with atomics in the dK/dV pass (fewer matmuls) unless asked to be
    deterministic or the head dim is too wide for it to compile without spills."""
    return not deterministic and block_config(head_dim, dtype, rope=rope)["bwd_kv_atomic"] is not None


def mask_variant_gap(dtype: torch.dtype, head_dim: int, variant: str) -> str | None:
    """Why a GPU launch of a masked variant (``temporal_causal``, ``temporal``, ``key_pad``,
    ``frame_key_pad``)
    does not use these kernels, or None when it does. These combinations spilled registers
    (8-24 B STACK, sm_80 or sm_90, triton 3.7.1) at h18's tiles and again at halved tiles, so
    they are neither registered as defaults nor launched on CUDA: the reference backends run
    them (the interpreter tests still cover the kernels' maths for them)."""
    if dtype == torch.float32:
        return (f"fp32 attention with the {variant} mask variant (its kernels spill on sm_80/sm_90; "
                "bf16/fp16 use the fused kernel)")
    if variant in ("key_pad", "frame_key_pad") and head_dim <= 32:
        # frame_key_pad: not compiled at hd32 on the strength of key_pad's spill (same tiles, more registers)
        return "key padding at head_dim <= 32 in 16-bit (the forward kernel spills on sm_80)"
    return None


def mask_combination_gap(variants: list[str], rope_in_kernel: bool) -> str | None:
    """Why a GPU launch combining mask variants, or a mask variant with RoPE rotated inside the
    kernels, does not use these kernels, or None when it does. The static check
    (``python -m benchmarks.static_check``) compiles each variant with the plain tiles and no
    in-kernel RoPE, and per-frame padding with each temporal mask; a launch outside that set would
    be compiled for the first time on the GPU (a compile error or a spill found there costs
    device time), so the reference backends run it instead."""
    if variants and rope_in_kernel:
        return (f"the {'+'.join(variants)} mask variant with RoPE inside the kernels "
                f"(FASTLAM_ROPE_FUSION=kernel) is not compiled ahead of time; the prepass fusion is")
    if "key_pad" in variants and len(variants) > 1:
        return (f"key_lengths with the {'+'.join(v for v in variants if v != 'key_pad')} mask is not "
                "compiled ahead of time (frame_key_lengths with a temporal mask is)")
    return None
