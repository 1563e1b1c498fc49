"""Static-check registry entries of the attention kernels: every launch the GPU path can make.

Imported by ``fastlam.kernels.registry.all_configs`` (every kernel module registers on import),
not by the launchers. ``python -m benchmarks.static_check`` compiles each entry for sm_90 and
sm_80 ahead of time, so a tile that spills or does not build is caught without a GPU.
"""
from __future__ import annotations

import torch
import triton

from .attention_bwd import attn_bwd_dkdv, attn_bwd_dq, attn_bwd_preprocess
from .attention_fwd import attn_fwd
from .attention_rope import rope_rotate_kernel
from .registry import KernelConfig, register
from .tile_candidates import CANDIDATES
from .tile_tables import DTYPE_NAME, KINDS, block_config, mask_variant_config, mask_variant_gap, tile_key
_REF_B, _REF_H, _REF_L, _REF_F = 4, 16, 2048, 256  # V-JEPA-like: 8 frames of 256 tokens


def _signature(fn, pointers: dict, constexprs: dict, floats=("qk_scale", "sm_scale")) -> dict:
    """Triton types of every non-constexpr argument: pointers as given, floats, the rest i32."""
    sig = {}
    # Constexpr parameters left out of ``constexprs`` keep their defaults (TEMPORAL, KEY_PAD).
    defaulted = {p.name for p in getattr(fn, "params", ()) if p.is_constexpr}
    for name in fn.arg_names:
        if name in constexprs or name in defaulted:
            continue
        sig[name] = pointers.get(name) or ("fp32" if name in floats else "i32")
    return sig


def attn_kernel_config(kind: str, dtype: torch.dtype, head_dim: int, rope: bool, tile: tuple,
                       default: bool = True) -> KernelConfig:
    """The registry entry of one attention kernel launch (``kind`` as in :func:`block_config`).

    FLOPs / bytes refer to the frame-causal reference shape B=4, H=16, L=2048 (8 x 256),
    counting only the unmasked fraction (36/64 of the L^2 pairs), backward = 2.5 x forward.
    Non-default tiles (the tuning candidates) carry warps, stages and ``sweep`` in the name.
    """
    tname = DTYPE_NAME[dtype]
    el = torch.finfo(dtype).bits // 8
    BD = max(16, triton.next_power_of_2(head_dim))
    frac = (_REF_L // _REF_F + 1) / (2 * (_REF_L // _REF_F))
    tables = {"COS": "*fp32", "SIN": "*fp32", "AXIS": "*i32", "KLEN": "*i32"}
    ref = f"B={_REF_B},H={_REF_H},L={_REF_L},D={head_dim},frame_len={_REF_F},frame_causal"
    fwd_flops = 4.0 * _REF_B * _REF_H * _REF_L * _REF_L * head_dim * frac
    tb = float(_REF_B * _REF_H * _REF_L * head_dim * el)  # one (B, H, L, D) tensor
    rb = float(_REF_B * _REF_H * _REF_L * 4)  # one fp32 (B, H, L) row vector
    BM, BN, w, st = tile
    tag = f"hd{BD},{tname}{',rope' if rope else ''}"
    tail = f"M{BM},N{BN}" + ("" if default else f",w{w},s{st},sweep")
    ce = dict(DOT_FP32=False, IEEE=dtype == torch.float32, BLOCK_D=BD, ROPE=rope, BLOCK_M=BM, BLOCK_N=BN)

    def ptr(names):
        return {n: f"*{tname}" for n in names}

    common = dict(num_warps=w, num_stages=st, default=default, expects_mma=True, ref_shape=ref)
    if kind == "fwd":
        return KernelConfig(
            f"attn_fwd[{tag},{tail}]", attn_fwd,
            _signature(attn_fwd, {**ptr("QKVO"), "LSE": "*fp32", **tables}, ce), ce,
            flops=fwd_flops, min_bytes=4 * tb + rb, **common)
    if kind in ("bwd_kv", "bwd_kv_atomic"):
        atomic = kind == "bwd_kv_atomic"
        ce["ATOMIC_DQ"] = atomic
        return KernelConfig(
            f"attn_bwd_dkdv[{tag}{',atomic_dq' if atomic else ''},{tail}]", attn_bwd_dkdv,
            _signature(attn_bwd_dkdv, {**ptr(["Q", "K", "V", "DO", "DK", "DV"]),
                                        "DQ": "*fp32" if atomic else f"*{tname}",
                                        "LSE": "*fp32", "DELTA": "*fp32", **tables}, ce), ce,
            # 4 of the 5 backward matmuls (the dQ one too when atomic): 2.0 / 2.5 x forward.
            flops=fwd_flops * (2.5 if atomic else 2.0),
            min_bytes=(6 * tb + (tb * 4 / el if atomic else 0)) + 2 * rb, **common)
    if kind == "bwd_q":
        return KernelConfig(
            f"attn_bwd_dq[{tag},{tail}]", attn_bwd_dq,
            _signature(attn_bwd_dq, {**ptr(["Q", "K", "V", "DO", "DQ"]), "LSE": "*fp32",
                                      "DELTA": "*fp32", **tables}, ce), ce,
            flops=fwd_flops * 1.5, min_bytes=5 * tb + 2 * rb, **common)
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def _register_configs() -> None:
    """Register every configuration the launchers of :mod:`.attention` can pick on a GPU (see
    block_config) and every tile candidate (:data:`.tile_candidates.CANDIDATES`, timed by the
    device-side tuning and the offline sweep; registered not as a default).

    Each attention kernel is registered with ROPE off and on (the fused rotation; tiles
    from ``tile_tables._ROPE_TILES`` where they differ).
    """
    tables = {"COS": "*fp32", "SIN": "*fp32", "AXIS": "*i32", "KLEN": "*i32"}
    for dtype, tname in DTYPE_NAME.items():
        el = torch.finfo(dtype).bits // 8
        for head_dim in (32, 64, 128):
            BD = max(16, triton.next_power_of_2(head_dim))
            ref = f"B={_REF_B},H={_REF_H},L={_REF_L},D={head_dim},frame_len={_REF_F},frame_causal"
            tb = float(_REF_B * _REF_H * _REF_L * head_dim * el)  # one (B, H, L, D) tensor
            rb = float(_REF_B * _REF_H * _REF_L * 4)  # one fp32 (B, H, L) row vector

            def ptr(names, t=tname):
                return {n: f"*{t}" for n in names}

            for rope in (False, True):
                cfg = block_config(head_dim, dtype, interpret=False, rope=rope)
                for kind in KINDS:
                    if cfg[kind] is None:
                        continue
                    register(attn_kernel_config(kind, dtype, head_dim, rope, cfg[kind]))
                    key = tile_key(kind, tname, BD, rope)
                    for tile in CANDIDATES.get(key, ()):
                        if tuple(tile) != tuple(cfg[kind]):
                            register(attn_kernel_config(kind, dtype, head_dim, rope, tile, default=False))
            cfg = block_config(head_dim, dtype, interpret=False)
            tag = f"hd{BD},{tname}"
            PM, pw = cfg["pointwise"]
            ce = dict(BLOCK_M=PM, BLOCK_D=BD)
            register(KernelConfig(
                f"attn_bwd_preprocess[{tag}]", attn_bwd_preprocess,
                _signature(attn_bwd_preprocess, {**ptr(["O", "DO"]), "DELTA": "*fp32"}, ce), ce, pw, 1,
                ref_shape=ref, min_bytes=2 * tb + rb))
            # The pre-pass rotates q, k (either fusion's backward transposes dq, dk); the fp32
            # source is the atomic dQ accumulator (with or without the fused rotation).
            rope_variants = [("rotate", False, tname), ("transpose", True, tname)]
            if (block_config(head_dim, dtype, interpret=False, rope=True)["bwd_kv_atomic"] is not None
                    or cfg["bwd_kv_atomic"] is not None):
                rope_variants.append(("transpose_from_fp32", True, "fp32"))
            RM, rw = cfg["rope_pointwise"]
            for label, transpose, src in rope_variants:
                ce = dict(TRANSPOSE=transpose, BLOCK_M=RM, BLOCK_D=BD)
                register(KernelConfig(
                    f"attn_rope_{label}[{tag},M{RM}]", rope_rotate_kernel,
                    _signature(rope_rotate_kernel, {"X": f"*{src}", "Y": f"*{tname}", **tables}, ce), ce, rw, 1,
                    ref_shape=ref, min_bytes=tb * (1 + (4 / el if src == "fp32" else 1))))


_register_configs()


def _register_mask_variants() -> None:
    """The temporal masks (TEMPORAL 1, 2), key padding (KEY_PAD) and per-frame key padding
    (FRAME_PAD, alone and with each temporal mask) of the attention kernels, with the default
    tiles of :func:`block_config` and no fused RoPE: the same launches as ``_register_configs``
    plus the extra predicate / tile-run arithmetic, which must also compile without spills. A
    combination is left out where any of its parts has a :func:`mask_variant_gap`."""
    tables = {"COS": "*fp32", "SIN": "*fp32", "AXIS": "*i32", "KLEN": "*i32"}
    variants = [("temporal_causal", dict(TEMPORAL=1)), ("temporal", dict(TEMPORAL=2)),
                ("key_pad", dict(KEY_PAD=True)), ("frame_key_pad", dict(FRAME_PAD=True)),
                ("temporal_causal+frame_key_pad", dict(TEMPORAL=1, FRAME_PAD=True)),
                ("temporal+frame_key_pad", dict(TEMPORAL=2, FRAME_PAD=True))]
    for dtype, tname in DTYPE_NAME.items():
        for head_dim in (32, 64, 128):
            BD = max(16, triton.next_power_of_2(head_dim))
            cfg = mask_variant_config(block_config(head_dim, dtype, interpret=False), True, dtype != torch.float32)
            common = dict(DOT_FP32=False, IEEE=dtype == torch.float32, BLOCK_D=BD, ROPE=False)
            t = {n: f"*{tname}" for n in ("Q", "K", "V", "O", "DO", "DK", "DV")}
            for label, extra in variants:
                if any(mask_variant_gap(dtype, head_dim, part) is not None for part in label.split("+")):
                    continue
                tag = f"hd{BD},{tname},{label}"
                BM, BN, w, st = cfg["fwd"]
                ce = dict(common, BLOCK_M=BM, BLOCK_N=BN, **extra)
                register(KernelConfig(f"attn_fwd[{tag},M{BM},N{BN}]", attn_fwd,
                                      _signature(attn_fwd, {**t, "LSE": "*fp32", **tables}, ce), ce, w, st,
                                      expects_mma=True))
                for atomic in (False, True):
                    spec = cfg["bwd_kv_atomic" if atomic else "bwd_kv"]
                    if spec is None:
                        continue
                    BM, BN, w, st = spec
                    ce = dict(common, ATOMIC_DQ=atomic, BLOCK_M=BM, BLOCK_N=BN, **extra)
                    register(KernelConfig(
                        f"attn_bwd_dkdv[{tag}{',atomic_dq' if atomic else ''},M{BM},N{BN}]", attn_bwd_dkdv,
                        _signature(attn_bwd_dkdv, {**t, "DQ": "*fp32" if atomic else f"*{tname}", "LSE": "*fp32",
                                                    "DELTA": "*fp32", **tables}, ce), ce, w, st, expects_mma=True))
                BM, BN, w, st = cfg["bwd_q"]
                ce = dict(common, BLOCK_M=BM, BLOCK_N=BN, **extra)
                register(KernelConfig(
                    f"attn_bwd_dq[{tag},M{BM},N{BN}]", attn_bwd_dq,
                    _signature(attn_bwd_dq, {**t, "DQ": f"*{tname}", "LSE": "*fp32", "DELTA": "*fp32", **tables},
                               ce), ce, w, st, expects_mma=True))


_register_mask_variants()
