"""What the LAM trainer feeds: the dataset ``data.source`` names (:func:`build_dataset`), the
loader that hands out this rank's batches from a resume position (:func:`iter_batches`, with
DALI chosen by :func:`use_dali`), the resumable sampler behind it (:class:`ResumableBatches`) and
the check that a state store fits the run's encoder (:func:`check_state_store`)."""
from __future__ import annotations

from pathlib import Path

import torch

from fastlam.config import ConfigError
from fastlam.configs import TrainConfig
from fastlam.data import VideoClipDataset
from fastlam.data.dali import DaliVideoLoader, dali_available
from fastlam.data.dali_stream import DaliStreamLoader
from fastlam.data.shards import ShardLoader, ShardStream, is_shard_source
from fastlam.data.state_store import StateStream, is_state_store
from fastlam.data.synthetic import make_sprite_clips
from fastlam.epochs import EpochIndexed
from fastlam.models import LatentActionWorldModel
from fastlam.models.encoder_record import encoder_fingerprint


class ResumableBatches(torch.utils.data.Sampler):
    """Endless batches of (epoch, index) keys: a fresh permutation per epoch from (seed,
    epoch); ``position`` = global batches consumed, which is all a resume needs.

    ``batch_size`` is the global batch; with ``world_size`` > 1 each rank gets its contiguous
    share ``batch_size / world_size`` of every global batch: the ranks' shares are disjoint and
    together are exactly the batch a single process would draw."""

    def __init__(self, n: int, batch_size: int, seed: int, position: int = 0, rank: int = 0, world_size: int = 1):
        if n < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} clips)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not divisible by world_size={world_size}")
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self.rank, self.world_size = rank, world_size
        self.per_epoch = n // batch_size

    def __iter__(self):
        # The epoch's permutation is drawn once per epoch (O(n) every n / batch_size batches),
        # not per batch: O(batch) per step. Same order as before: a pure function of (seed, epoch).
        pos, perm_epoch, perm = self.position, None, None
        share = self.batch_size // self.world_size
        while True:
            epoch, b = divmod(pos, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
            start = b * self.batch_size + self.rank * share
            yield [(epoch, i) for i in perm[start : start + share]]
            pos += 1


class _SyntheticClips(torch.utils.data.Dataset):
    def __init__(self, cfg: TrainConfig):
        m = cfg.model  # data.synthetic_sprites >= 1: checked with the config (DataConfig.check)
        self.video, self.actions = make_sprite_clips(
            cfg.data.synthetic_clips, steps=m.frames // m.encoder.tubelet, tubelet=m.encoder.tubelet,
            size=m.image_size, num_sprites=cfg.data.synthetic_sprites, wrap=cfg.data.synthetic_wrap, seed=cfg.seed,
        )

    def __len__(self):
        return self.video.shape[0]

    def __getitem__(self, i):
        return self.video[i]


def build_dataset(cfg: TrainConfig):
    """The clip dataset; bad files found by any DataLoader worker are appended to
    ``out_dir/bad_files.jsonl`` so the main process can report them all."""
    if cfg.data.source == "synthetic":
        return _SyntheticClips(cfg)

    m = cfg.model
    if is_state_store(cfg.data.source):  # encoder states (python -m fastlam.data encode): no decoding
        return StateStream(cfg.data.source, seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer, drop_last=True,
                           bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
                           max_bad_fraction=cfg.data.max_bad_fraction)
    if is_shard_source(cfg.data.source):  # rank and world size are set by iter_batches
        return ShardStream(cfg.data.source, num_frames=m.frames, fps=cfg.data.fps,
                           size=(m.image_size, m.image_size), crop=cfg.data.crop,
                           short_policy=cfg.data.short_policy, seed=cfg.seed,
                           shuffle_buffer=cfg.data.shuffle_buffer, drop_last=True,
                           bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
                           max_bad_fraction=cfg.data.max_bad_fraction)
    return VideoClipDataset(
        cfg.data.source, num_frames=m.frames, fps=cfg.data.fps, size=(m.image_size, m.image_size),
        crop=cfg.data.crop, short_policy=cfg.data.short_policy, seed=cfg.seed,
        clips_per_video=cfg.data.clips_per_video, cache_mb=cfg.data.cache_mb,
        decode_timeout_s=cfg.data.decode_timeout_s, bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
        max_bad_fraction=cfg.data.max_bad_fraction,
    )


def use_dali(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.data.source == "synthetic" or cfg.data.loader == "torch" or is_shard_source(cfg.data.source):
        if cfg.data.loader in ("dali", "dali_stream"):
            raise ConfigError(f"data.loader={cfg.data.loader} needs a folder, list or manifest of real video, "
                              f"not data.source={cfg.data.source!r}")
        return False

    if cfg.data.loader in ("dali", "dali_stream"):
        if not dali_available():
            raise ConfigError("data.loader=dali: NVIDIA DALI is not installed (pip install -e '.[dali]')")
        return True
    return device.type == "cuda" and dali_available()


def iter_batches(cfg: TrainConfig, dataset, device: torch.device, env, position: int,
                 data_state: dict | None = None):
    """Endless batches for this rank, starting after ``position`` global batches.

    ``position`` is the only data state a checkpoint keeps for folders, lists and manifests,
    whichever loader runs: the DALI loader's (epoch, clips consumed) is derived from it, so a
    resume continues exactly. Shard sources resume from ``data_state`` (the merged consumed
    bitmap saved beside the checkpoint), with any world size."""
    per_rank = cfg.batch_size // env.world_size

    if isinstance(dataset, ShardStream):
        if dataset.n // env.world_size < per_rank:
            raise ConfigError(f"batch_size={cfg.batch_size}: each of the {env.world_size} rank(s) "
                              f"needs {per_rank} clips per batch but the shards hold {dataset.n} "
                              f"(one clip per video per epoch)")
        dataset.rank, dataset.world_size = env.rank, env.world_size
        loader = ShardLoader(dataset, per_rank, num_workers=cfg.data.num_workers,
                             pin_memory=device.type == "cuda", drop_last_batch=True)
        if data_state is not None:
            loader.load_state_dict(data_state)
        dataset.loader_state = loader.state_dict  # what checkpoint() saves
        while True:
            yield from loader
    if use_dali(cfg, device):
        m = cfg.model
        # dali_stream: planning in DALI's worker processes, DALI prefetch + async execution.
        loader = (DaliStreamLoader if cfg.data.loader == "dali_stream" else DaliVideoLoader)(
            cfg.data.source, batch_size=per_rank, num_frames=m.frames, fps=cfg.data.fps,
            size=(m.image_size, m.image_size), crop=cfg.data.crop, short_policy=cfg.data.short_policy,
            seed=cfg.seed, clips_per_video=cfg.data.clips_per_video, rank=env.rank, world_size=env.world_size,
            device=device.type, device_id=device.index if device.type == "cuda" else None,
            dtype=torch.float32, bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
            decode_timeout_s=cfg.data.decode_timeout_s,
        )
        loader.dataset.max_bad_fraction = cfg.data.max_bad_fraction  # its own copy of the dataset
        state = loader.state_dict()["sampler"]
        state["epoch"], done = divmod(position, len(loader))
        state["consumed"] = done * per_rank
        loader.load_state_dict({"sampler": state})
        while True:
            yield from loader
    sampler = ResumableBatches(len(dataset), cfg.batch_size, cfg.seed, position=position,
                               rank=env.rank, world_size=env.world_size)
    yield from torch.utils.data.DataLoader(
        EpochIndexed(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0,
        # Its own generator, so creating the loader does not consume the global RNG that a
        # resume restores (which would make a resumed run diverge from an uninterrupted one).
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def check_state_store(store: StateStream, model: LatentActionWorldModel, cfg: TrainConfig) -> None:
    """Refuse a state store made by another encoder (its fingerprint: config + weights) or for
    other clips than the run's (frames, size, fps): its states would train a model of them."""
    h, want = store.header, encoder_fingerprint(model.encoder)
    if h["fingerprint"] != want:
        raise ConfigError(f"data.source: the state store {cfg.data.source} was encoded by another encoder "
                          f"(fingerprint {h['fingerprint'][:16]}..., {h['encoder'].get('kind')} encoder) than "
                          f"model.encoder builds (fingerprint {want[:16]}..., {cfg.model.encoder.kind}); encode "
                          f"the store with this run's model.encoder and seed, or train with the store's")
    m = cfg.model
    tub, p = m.encoder.tubelet, m.encoder.patch_size
    shape = [m.frames // tub, (m.image_size // p) ** 2, model.encoder.width]
    mine = {"num_frames": m.frames, "size": [m.image_size, m.image_size], "fps": float(cfg.data.fps), "shape": shape}
    diff = {k: (h[k], v) for k, v in mine.items() if h[k] != v}
    if diff:
        raise ConfigError("data.source: the state store's clips differ from this run's: "
                          + "; ".join(f"{k} {a} in the store, {b} here" for k, (a, b) in diff.items()))

