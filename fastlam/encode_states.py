"""Encode video shards once into a state store (:mod:`fastlam.data.state_store`).

    python -m fastlam.encode_states --config configs/tiny_cpu.yaml data.source=shards/shards.json \\
        --out states/ [--dtype bfloat16|float16|float32] [--batch 8]
    python -m fastlam.data encode ...   (the same command)

The run configuration is the training one: the encoder (``model.encoder``, with its V-JEPA 2
``checkpoint`` or its random init from ``seed``, as the trainer builds it), the clip
(``model.frames``, ``model.image_size``, ``data.fps``, ``data.crop``, ``data.short_policy``),
``seed``, ``device`` and ``precision``. Each video shard's samples are cut with the shard stream's
epoch-0 draws and encoded; the store's shards are published one by one, so a killed encode
resumes where it stopped. Train from it with ``data.source=<out>/states.json`` and the same
``model.encoder`` (the trainer refuses a store of another encoder).

Why here and not in ``fastlam.data``: encoding runs a model, which the data layer may not import
(docs/architecture.md); the store's format, writer and reader stay in ``fastlam.data``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys

import numpy as np
import torch
from tqdm import tqdm

from fastlam.cli_help import plain
from fastlam.config import ConfigError, load_config
from fastlam.configs import TrainConfig
from fastlam.data.decoding import VideoDecodeError, decode_errors
from fastlam.data.seeding import mix_seed
from fastlam.data.shards import is_shard_source, read_shard_index
from fastlam.data.state_store import (STORE_DTYPES, StateStoreError, StateStoreWriter, is_state_store, sample_clip,
                                      shard_samples, states_to_bytes)
from fastlam.models.encoder import build_encoder
from fastlam.models.encoder_record import encoder_fingerprint
from fastlam.models.vjepa2 import load_vjepa2_encoder
from fastlam.devices import autocast_for, resolve_device

__all__ = ["build_frozen_encoder", "encode_store", "main"]


def build_frozen_encoder(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The frozen encoder a training run of ``cfg`` builds: seeded with ``cfg.seed`` before
    anything else draws (the world model builds its encoder first), then the V-JEPA 2 weights
    when ``model.encoder.checkpoint`` names them. The fingerprint check catches any drift."""
    enc = cfg.model.encoder
    if enc.kind == "pixels" and enc.projection == "pca":
        raise ConfigError("model.encoder.projection=pca is fitted on a run's first training batch, so a store cannot "
                          "be encoded before the run; use projection none or orthogonal")
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(enc)
    if enc.checkpoint:
        load_vjepa2_encoder(encoder, enc.checkpoint)
    return encoder.requires_grad_(False).eval().to(device)


def encode_store(cfg: TrainConfig, out: str, *, dtype: str = "bfloat16", batch_size: int = 8,
                 progress: bool = True) -> dict:
    """Encode ``cfg.data.source`` (video shards) into a state store in ``out``; returns its index.
    Resumes a store begun with the same settings; refuses one begun with others."""
    source = str(cfg.data.source)
    if is_state_store(source) or not is_shard_source(source):
        raise ConfigError(f"data.source: expected video shards (a shards.json or tar URLs written by "
                          f"'python -m fastlam.data shard'), got {source!r}; shard a manifest first")
    if dtype not in STORE_DTYPES:
        raise ConfigError(f"--dtype: expected one of {sorted(STORE_DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch: expected an int >= 1, got {batch_size}")
    m, d = cfg.model, cfg.data
    device = resolve_device(cfg.device)
    encoder = build_frozen_encoder(cfg, device)
    fingerprint = encoder_fingerprint(encoder)
    size = (m.image_size, m.image_size)
    tub, patch = m.encoder.tubelet, m.encoder.patch_size
    shape = [m.frames // tub, (m.image_size // patch) ** 2, encoder.width]
    shard_index = read_shard_index(source)  # (urls, counts, ...)
    urls, counts = shard_index[0], shard_index[1]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    header = {"fingerprint": fingerprint, "encoder": dataclasses.asdict(m.encoder), "num_frames": m.frames,
              "fps": float(d.fps), "size": list(size), "crop": d.crop, "short_policy": d.short_policy,
              "seed": int(cfg.seed), "dtype": dtype, "shape": shape, "precision": cfg.precision,
              "video_source": source}
    writer = StateStoreWriter(out, header, counts)
    bar = tqdm(total=int(offsets[-1]), unit="clip", desc="encode", file=sys.stderr, disable=not progress)
    for s, url in enumerate(urls):
        if writer.done(s):
            bar.update(counts[s])
            continue
        samples = []  # (key, meta, clip or None)
        for pos, (key, meta, data) in enumerate(shard_samples(url)):
            g = int(offsets[s]) + pos
            info = {"source": meta.get("source"), "label": meta.get("label"), "sample": g, "fps": float(d.fps),
                    "num_frames": m.frames, "crop": d.crop, "fingerprint": fingerprint}
            gen = torch.Generator().manual_seed(mix_seed(cfg.seed, 0, g))  # the stream's epoch-0 draws
            try:
                if data is None:
                    raise VideoDecodeError(meta.get("source", key), "the sample has no video member")
                clip, where = sample_clip(data, meta, num_frames=m.frames, fps=d.fps, size=size, crop=d.crop,
                                          short_policy=d.short_policy, generator=gen)
                samples.append((key, dict(info, **where), clip))
            except VideoDecodeError as e:
                samples.append((key, dict(info, bad=e.reason), None))
            except decode_errors() as e:
                samples.append((key, dict(info, bad=f"{type(e).__name__}: {e}"), None))
        states = _encode(encoder, [c for _, _, c in samples if c is not None], batch_size, device, cfg.precision)
        rows, k = [], 0
        for key, info, clip in samples:
            if clip is None:
                rows.append((key, info, None))
                continue
            body = states_to_bytes(states[k], STORE_DTYPES[dtype])
            k += 1
            rows.append((key, dict(info, shape=shape, dtype=dtype, sha256=hashlib.sha256(body).hexdigest()), body))
        writer.write_shard(s, rows)
        bar.update(counts[s])
    bar.close()
    return writer.finish()


@torch.no_grad()
def _encode(encoder, clips: list[torch.Tensor], batch_size: int, device: torch.device, precision: str) -> list:
    """States of ``clips`` in batches of ``batch_size``, under the training's autocast."""
    out = []
    for i in range(0, len(clips), batch_size):
        video = torch.stack(clips[i:i + batch_size]).to(device)
        with autocast_for(device, precision):
            out.extend(encoder(video, check_range=False).float().cpu())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastlam.encode_states", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the training YAML config (encoder, clip settings, seed)")
    ap.add_argument("--out", required=True, help="folder (or fsspec URL) of the state store to write or resume")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(STORE_DTYPES),
                    help="storage dtype of the states (default: %(default)s; float32 stores them exactly)")
    ap.add_argument("--batch", type=int, default=8, help="clips per encoder forward (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.source=shards/shards.json")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, list(args.overrides))
        index = encode_store(cfg, args.out, dtype=args.dtype, batch_size=args.batch, progress=not args.quiet)
    except (ConfigError, StateStoreError) as e:
        ap.exit(2, f"error: {e}\n")
    print(f"{index['samples']} clips ({len(index['bad'])} bad) in {len(index['shards'])} shards, "
          f"{index['bytes'] / 2**20:.1f} MiB; index {index['index_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
