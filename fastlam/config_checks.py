"""Value checks for a training config: every range and choice, checked before anything runs.

:func:`fastlam.config.from_dict` checks each value's *type*; :func:`validate_train_config`
checks what the types cannot say (``batch_size >= 1``, ``lr > 0``, ``kind`` among the known
regularizers, ``image_size`` divisible by the patch, ...). Each error is a
:class:`~fastlam.config.ConfigError` naming the dotted key, the expected range and the value.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from .checkpoint import check_weights_path
from .config import ConfigError


class Rule(NamedTuple):
    ok: Callable[[object], bool]
    expected: str


def at_least(lo) -> Rule:
    return Rule(lambda v: v >= lo, f">= {lo}")


def above(lo) -> Rule:
    return Rule(lambda v: v > lo, f"> {lo}")


def within(lo, hi, *, hi_open: bool = False) -> Rule:
    if hi_open:
        return Rule(lambda v: lo <= v < hi, f"in [{lo}, {hi})")
    return Rule(lambda v: lo <= v <= hi, f"in [{lo}, {hi}]")


def one_of(*choices) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


NON_EMPTY = Rule(lambda v: bool(str(v).strip()), "a non-empty string")


def _rules() -> dict[str, Rule]:
    # Imported here: the choice lists live with the code that uses them (one definition each).
    from .distributed import BACKENDS as DIST_BACKENDS, ENCODER_PLACEMENTS
    from .models.encoder import ENCODER_SIZES
    from .nn.regularizers import REGULARIZERS
    from .ops.prediction_loss import LOSS_KINDS
    from .ops.regularizers import MEAN_TERMS

    transformer = {"width": at_least(1), "depth": at_least(1), "heads": at_least(1), "mlp_ratio": above(0)}
    rules = {
        "batch_size": at_least(1), "steps": at_least(1), "log_every": at_least(1), "ckpt_every": at_least(1),
        "keep_checkpoints": at_least(1), "grad_accum_steps": at_least(1), "out_dir": NON_EMPTY,
        "precision": one_of("auto", "bf16", "fp32"),
        "data.source": NON_EMPTY, "data.fps": above(0), "data.crop": one_of("random", "center"),
        "data.short_policy": one_of("pad", "skip"), "data.clips_per_video": at_least(1),
        "data.num_workers": at_least(0), "data.loader": one_of("auto", "dali", "dali_stream", "torch"),
        "data.cache_mb": at_least(0), "data.decode_timeout_s": above(0), "data.synthetic_clips": at_least(1),
        "data.synthetic_sprites": at_least(1),
        "optim.muon_lr": above(0), "optim.adamw_lr": above(0), "optim.weight_decay": at_least(0),
        "optim.warmup_frac": within(0, 1), "optim.min_lr_frac": within(0, 1), "optim.grad_clip": at_least(0),
        "model.action_dim": at_least(1), "model.image_size": at_least(1), "model.frames": at_least(2),
        "model.loss": one_of(*LOSS_KINDS),
        "model.encoder.size": one_of(*ENCODER_SIZES), "model.encoder.patch_size": at_least(1),
        "model.encoder.tubelet": at_least(1), "model.encoder.in_chans": at_least(1),
        "model.encoder.width": at_least(1), "model.encoder.depth": at_least(1),
        "model.encoder.heads": at_least(1), "model.encoder.mlp_ratio": above(0),
        "model.regularizer.kind": one_of(*REGULARIZERS), "model.regularizer.mean_term": one_of(*MEAN_TERMS),
        "model.regularizer.l_l1": at_least(0), "model.regularizer.l_l2": at_least(0),
        "model.regularizer.l_v": at_least(0), "model.regularizer.l_c": at_least(0),
        "model.regularizer.l_m": at_least(0), "model.regularizer.beta": at_least(0),
        "model.regularizer.num_codes": at_least(1), "model.regularizer.commitment": at_least(0),
        "model.regularizer.reset_every_videos": at_least(0),
        "distributed.backend": one_of(*DIST_BACKENDS), "distributed.encoder": one_of(*ENCODER_PLACEMENTS),
        "distributed.muon_ns_method": one_of("standard", "gram"), "distributed.muon_momentum": within(0, 1, hi_open=True),
        "distributed.dist_backend": one_of("auto", "nccl", "gloo"), "distributed.timeout_min": above(0),
    }
    for part in ("idm", "predictor"):
        rules.update({f"model.{part}.{k}": r for k, r in transformer.items()})
    return rules


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _fail(key: str, expected: str, value) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {value!r}")


def validate_train_config(cfg) -> None:
    """Raise ConfigError naming the first key of ``cfg`` (a :class:`fastlam.trainer.TrainConfig`)
    whose value is out of range, not an allowed choice, or inconsistent with another key."""
    for key, rule in _rules().items():
        value = _get(cfg, key)
        if value is not None and not rule.ok(value):  # None: an optional left at its default
            raise _fail(key, rule.expected, value)
    for i, beta in enumerate(cfg.optim.adamw_betas):
        if not 0 <= beta < 1:
            raise _fail(f"optim.adamw_betas[{i}]", "in [0, 1)", beta)
    _check_device(cfg.device)
    if cfg.model.encoder.checkpoint:
        # Headers only (a ViT-g file costs nothing here): a text file, a truncated download or
        # a folder without weights stops the run now, with one line, not in the middle of set-up.
        check_weights_path(cfg.model.encoder.checkpoint, name="model.encoder.checkpoint",
                           expected="local V-JEPA 2 weights: a .pt / .pth, a .safetensors file or a transformers "
                                    "folder (fastlam never downloads weights)")
    m, enc = cfg.model, cfg.model.encoder
    enc.validate()  # the encoder's own keys, checked by the config that owns them
    if m.image_size % enc.patch_size:
        raise ConfigError(f"model.image_size: expected a multiple of model.encoder.patch_size={enc.patch_size}, "
                          f"got {m.image_size}")
    if m.frames % enc.tubelet or m.frames < 2 * enc.tubelet:
        raise ConfigError(f"model.frames: expected a multiple of model.encoder.tubelet={enc.tubelet} and "
                          f">= {2 * enc.tubelet} (two time steps), got {m.frames}")
    width, _, heads, _ = enc.dims()
    for key, (w, h) in {"model.encoder": (width, heads), "model.idm": (m.idm.width, m.idm.heads),
                        "model.predictor": (m.predictor.width, m.predictor.heads)}.items():
        if w % h:
            raise ConfigError(f"{key}.width: expected a multiple of {key}.heads={h}, got {w}")


def _check_device(name: str) -> None:
    import torch

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available (use device=auto or cpu)")
