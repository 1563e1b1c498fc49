"""Which frozen encoder a training checkpoint was made with, instead of its weights.

The encoder never trains, so a ``.pt`` checkpoint need not carry it (a ViT-L is ~1.2 GB of
fp32 per checkpoint). It records how to rebuild it (the encoder config, the V-JEPA 2 weights
file or the seed of a random init) and a SHA-256 of its weights; loading rebuilds it and
verifies the hash, so a changed or missing weights file is an error, not a silent mismatch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import torch
from torch import nn

from .vjepa2 import load_vjepa2_encoder

PREFIX = "encoder."


def encoder_sha256(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's state dict (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for name, t in encoder.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's config and weights: what a state store was made with. The
    weights file's path is left out (the same V-JEPA 2 file at another path makes the same
    states; its bytes are in the weights hash)."""
    cfg = dataclasses.asdict(encoder.cfg)
    cfg.pop("checkpoint", None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode("utf-8"))
    h.update(encoder_sha256(encoder).encode("ascii"))
    return h.hexdigest()


def encoder_record(model: nn.Module, seed: int) -> dict:
    """kind (``vjepa2`` weights file or ``random`` init from ``seed``), config, path, hash.

    A ``pixels`` encoder has no weights to rebuild from a seed, but its PCA projection is fitted
    on the first batch: its (small) buffers are kept in the record itself (kind ``pixels``)."""
    enc_cfg = model.cfg.encoder
    if getattr(enc_cfg, "kind", "vit") == "pixels":
        return {"kind": "pixels", "config": dataclasses.asdict(enc_cfg), "checkpoint": None, "seed": None,
                "state": {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()},
                "sha256": encoder_sha256(model.encoder)}
    path = enc_cfg.checkpoint
    return {"kind": "vjepa2" if path else "random", "config": dataclasses.asdict(enc_cfg),
            "checkpoint": str(path) if path else None, "seed": None if path else int(seed),
            "sha256": encoder_sha256(model.encoder)}


def strip_encoder(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(PREFIX)}


def verify_encoder(model: nn.Module, record: dict, where: str) -> None:
    """Raise ValueError when ``model.encoder`` is not the encoder ``record`` describes (a
    ``pixels`` record first restores its fitted buffers into ``model.encoder``)."""
    if record.get("kind") == "pixels":
        model.encoder.load_state_dict(record["state"])
    got = encoder_sha256(model.encoder)
    if got != record.get("sha256"):
        src = record.get("checkpoint") or f"random init, seed {record.get('seed')}"
        raise ValueError(f"{where}: the frozen encoder differs from the one the checkpoint was trained with "
                         f"({record.get('kind')}: {src}; sha256 {str(record.get('sha256'))[:12]}..., rebuilt "
                         f"{got[:12]}...): check model.encoder.checkpoint and seed")


def load_without_encoder(model: nn.Module, state: dict, where: str) -> None:
    """Load a state dict that lacks exactly the encoder's weights (the model's encoder is kept)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    other = [k for k in missing if not k.startswith(PREFIX)]
    if other or unexpected:
        raise ValueError(f"{where}: state dict mismatch: missing {other[:5]}, unexpected {list(unexpected)[:5]}")


def rebuild_encoder(model: nn.Module, record: dict) -> None:
    """Recreate the recorded encoder in ``model`` (weights file or seeded init), then verify it."""
    if record.get("kind") == "pixels":
        pass  # verify_encoder restores the recorded buffers
    elif record.get("kind") == "vjepa2":
        load_vjepa2_encoder(model.encoder, record["checkpoint"])
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(record["seed"]))
            fresh = type(model.encoder)(model.cfg.encoder)
        model.encoder.load_state_dict(fresh.state_dict())
    verify_encoder(model, record, "checkpoint")
