"""The attention kernels' tile candidates: what device-side tuning (:mod:`.attention_tuning`) and
the offline sweep (``benchmarks/tune_tiles.py``) time against the default tile of a key.

A key is ``"<kind>,<dtype>,hd<BLOCK_D>[,rope]"`` (:func:`.tile_tables.tile_key`); a tile is
``(BLOCK_M, BLOCK_N, num_warps, num_stages)``. Covered: the four launch kinds, bf16 and fp16
(the tensor-core dtypes; fp32's IEEE dots keep the small table tiles), head dims 64 and 128
(hd 80 / 96 pad to 128), both the plain kernels (what the default RoPE pre-pass and RoPE-free
attention launch) and the RoPE-fused ones. The default tile of the key is always timed too
and is the reference, so a candidate list never repeats it (a candidate equal to the default
under some triton release is skipped there).

Every candidate is registered for the static check (:mod:`.attention_configs`, not as a
default), so CI compiles each for sm_90 and sm_80; the tiles below compiled without spills
(STACK 0) on both under triton 3.7.1 (benchmarks/results/static), and
tests/test_tile_tables.py checks that against the committed report. Tiles that spilled when
this list was made are noted beside their key and left out; the device's own compiler is
checked again at tuning time (``n_spills``). Two candidates per key keep the static check's
compile count and a first launch's tuning time small.
"""
from __future__ import annotations

from .tile_tables import tile_key

TUNED_DTYPES = ("bf16", "fp16")
TUNED_BLOCK_DS = (64, 128)

# (kind, BLOCK_D, fused RoPE) -> candidate tiles, the same for bf16 and fp16.
_BY_LAUNCH: dict = {
    # Plain kernels (the RoPE pre-pass path). Defaults: fwd 128x64/4w/3 (hd64), 128x32/8w/3
    # (hd128); bwd_kv 32x64/4w/2, 32x64/8w/2; bwd_kv_atomic 64x64/8w/2; bwd_q 64x64/4w/2, 64x64/8w/2.
    ("fwd", 64, False): [(64, 64, 4, 3), (128, 64, 8, 2)],
    ("fwd", 128, False): [(64, 32, 4, 3), (64, 64, 8, 2)],
    ("bwd_kv", 64, False): [(32, 64, 8, 2), (32, 32, 4, 2)],
    ("bwd_kv", 128, False): [(32, 32, 8, 2), (32, 64, 8, 1)],
    ("bwd_kv_atomic", 64, False): [(32, 64, 8, 2), (64, 32, 8, 2)],
    ("bwd_q", 64, False): [(64, 32, 4, 2), (64, 64, 8, 2)],  # 32x64/4w: 8 B STACK on sm_80
    ("bwd_q", 128, False): [(64, 32, 8, 2), (32, 64, 8, 2)],
    # RoPE fused into the kernels. Defaults: fwd 128x32/8w/3 (hd64, hd128); bwd_kv 32x64/8w/2,
    # 32x32/8w/2; bwd_kv_atomic 32x64/8w/2; bwd_q 64x32/4w/2, 64x64/8w/2.
    ("fwd", 64, True): [(64, 32, 4, 2), (128, 32, 8, 2)],  # 64x64/4w/3: 48 B STACK on sm_90
    ("fwd", 128, True): [(128, 32, 8, 2), (64, 32, 8, 2)],  # 64x32/4w/3: 496-512 B (3.9.0)
    ("bwd_kv", 64, True): [(32, 32, 8, 2), (32, 32, 4, 2)],  # 64x64/8w: 272 B on sm_80
    ("bwd_kv", 128, True): [(32, 32, 8, 1), (16, 32, 8, 2)],
    ("bwd_kv_atomic", 64, True): [(64, 32, 8, 2), (32, 32, 8, 2)],
    ("bwd_q", 64, True): [(32, 64, 4, 2), (64, 32, 8, 2)],
    ("bwd_q", 128, True): [(64, 32, 8, 2), (32, 64, 8, 2)],
}

# Under the Triton interpreter (CPU tests at tiny shapes) every default tile is 16 x 16: these
# exercise the same selection without GPU-sized tiles.
INTERPRETER_CANDIDATES = [(32, 16, 4, 1), (16, 32, 4, 1)]


def _keys_in_launch_order() -> dict:
    """{key: tiles}, plain before fused RoPE (the default path first), hd64 before hd128, the
    forward before the backward passes, bf16 before fp16: the offline sweep times in this order."""
    table = {}
    for dtype_name in TUNED_DTYPES:
        for rope in (False, True):
            for block_d in TUNED_BLOCK_DS:
                for kind in ("fwd", "bwd_kv_atomic", "bwd_kv", "bwd_q"):
                    tiles = _BY_LAUNCH.get((kind, block_d, rope))
                    if tiles:
                        table[tile_key(kind, dtype_name, block_d, rope)] = [tuple(t) for t in tiles]
    return table


CANDIDATES: dict = _keys_in_launch_order()


def candidates(key: str, interpret: bool = False) -> list:
    """The candidate tiles of a key (empty: the key is not tuned)."""
    if interpret:
        return list(INTERPRETER_CANDIDATES) if key.split(",")[1] in TUNED_DTYPES else []
    return list(CANDIDATES.get(key, ()))
