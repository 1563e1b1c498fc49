"""Every run configuration of fastlam in one place: the dataclasses a YAML config file fills.

Plain data, below every layer that uses it (models, the trainer, the distributed runner), so
any of them may import a config without importing the code of another. Each class checks
its own keys (``check``), with a :class:`~fastlam.config.ConfigError` naming the dotted key,
the expected range and the value. Choices that belong to a piece of code above this layer
(the regularizer kinds, the prediction losses) are checked by that code:
:func:`fastlam.config_checks.validate_train_config` runs all of it once before a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from .config import ConfigError


# ---- rules: what a value must be, said the same way for every key --------------------------
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


def whole_at_least(lo) -> Rule:
    """An int (not a float, not a bool) >= ``lo``: for sizes a config built in Python may get wrong."""
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo, f"an int >= {lo}")


NON_EMPTY = Rule(lambda v: bool(str(v).strip()), "a non-empty string")


def key_error(key: str, expected: str, value) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {value!r}")


def check_keys(cfg, prefix: str, rules: dict[str, Rule]) -> None:
    """Raise a ConfigError for the first field of ``cfg`` named in ``rules`` whose value breaks
    its rule; ``prefix`` is where ``cfg`` sits in a run config ("" at the top)."""
    for name, rule in rules.items():
        value = getattr(cfg, name)
        if value is not None and not rule.ok(value):  # None: an optional left at its default
            raise key_error(f"{prefix}.{name}" if prefix else name, rule.expected, value)


# ---- distributed ---------------------------------------------------------------------------
BACKENDS = ("auto", "none", "ddp", "deepspeed")
ENCODER_PLACEMENTS = ("replicated", "sharded")


@dataclass
class DistributedConfig:
    backend: str = "auto"  # auto | none | ddp | deepspeed
    deepspeed_config: str | None = None  # a JSON file, e.g. configs/deepspeed/zero2.json
    encoder: str = "replicated"  # replicated (eval mode on every rank) | sharded (ZeRO-3 only)
    # Newton-Schulz variant of DeepSpeed's Muon: "standard" is the quintic iteration in bf16 that
    # torch.optim.Muon (the single-process optimizer) runs; "gram" is DeepSpeed's faster variant.
    muon_ns_method: str = "standard"
    muon_momentum: float = 0.95
    dist_backend: str = "auto"  # auto (nccl with CUDA, gloo without) | nccl | gloo
    timeout_min: float = 30.0

    def check(self, prefix: str = "distributed") -> None:
        check_keys(self, prefix, {
            "backend": one_of(*BACKENDS), "encoder": one_of(*ENCODER_PLACEMENTS),
            "muon_ns_method": one_of("standard", "gram"), "muon_momentum": within(0, 1, hi_open=True),
            "dist_backend": one_of("auto", "nccl", "gloo"), "timeout_min": above(0)})


# ---- the model -----------------------------------------------------------------------------
# (width, depth, heads, mlp_ratio); L/H/g are V-JEPA 2's ViT-L/16, ViT-H/16, ViT-g/16.
ENCODER_SIZES = {
    "tiny": (64, 2, 4, 4.0),
    "small": (384, 12, 6, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 22, 48 / 11),
}
ENCODER_KINDS = ("vit", "pixels")
PIXEL_PROJECTIONS = ("none", "orthogonal", "pca")


def check_heads(prefix: str, width: int, heads: int) -> None:
    if width % heads:
        raise ConfigError(f"{prefix}.width: expected a multiple of {prefix}.heads={heads}, got {width}")


@dataclass
class EncoderConfig:
    kind: str = "vit"  # vit (V-JEPA 2 style, checkpoints go here) | pixels (frozen, weight-free)
    size: str = "tiny"
    patch_size: int = 16
    tubelet: int = 2
    in_chans: int = 3
    frame_causal: bool = True  # the paper uses the encoder frame-causally
    rope_duplicated_freqs: bool = True  # V-JEPA 2's RoPE quirk, needed for its checkpoints
    width: int | None = None  # overrides of the size preset
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    checkpoint: str | None = None  # local V-JEPA 2 weights to load (never downloaded)
    # kind: pixels only. Each tubelet patch is average-pooled by ``pool`` in space (its raw
    # width is in_chans * tubelet * (patch / pool)^2), then optionally projected to ``width``
    # by a fixed matrix: a seeded random orthogonal one, or PCA whitening fitted on the first
    # batch the encoder sees (stored as buffers, so checkpoints keep it).
    pool: int = 1
    projection: str = "none"  # none | orthogonal | pca
    projection_seed: int = 0
    # kind: pixels only. Standardise each token's pooled pixels, frame by frame, to mean 0 and
    # variance 1 (like MAE's per-patch normalised targets): a brightness or contrast change
    # (lighting, flicker, exposure) then leaves the states unchanged, so the latent action is
    # not spent on it.
    token_norm: bool = False

    def check(self, prefix: str = "model.encoder") -> None:
        check_keys(self, prefix, {
            "kind": one_of(*ENCODER_KINDS), "size": one_of(*ENCODER_SIZES),
            "patch_size": whole_at_least(1), "tubelet": whole_at_least(1), "in_chans": at_least(1),
            "width": at_least(1), "depth": at_least(1), "heads": at_least(1), "mlp_ratio": above(0)})
        if self.kind == "vit":
            width, _, heads, _ = self.dims()
            check_heads(prefix, width, heads)
            return
        # pixels: no weights, no heads; its width is what the pooled patches give (or a projection of them)
        if self.checkpoint:
            raise ConfigError(f"{prefix}.checkpoint: a 'pixels' encoder has no weights to load; "
                              f"use {prefix}.kind=vit for a V-JEPA 2 checkpoint")
        if not isinstance(self.pool, int) or self.pool < 1 or self.patch_size % self.pool:
            raise ConfigError(f"{prefix}.pool: expected an int >= 1 dividing patch_size={self.patch_size}, "
                              f"got {self.pool!r}")
        if not isinstance(self.token_norm, bool):
            raise ConfigError(f"{prefix}.token_norm: expected true or false, got {self.token_norm!r}")
        check_keys(self, prefix, {"projection": one_of(*PIXEL_PROJECTIONS)})
        raw = self.pixel_features()
        if self.projection == "none":
            if self.width is not None and self.width != raw:
                raise ConfigError(f"{prefix}.width: {self.width} needs {prefix}.projection=orthogonal or pca "
                                  f"(the pooled patches have {raw} features)")
        elif self.width is None or not 1 <= self.width <= raw:
            raise ConfigError(f"{prefix}.width: projection={self.projection!r} needs a width in [1, {raw}] "
                              f"(the pooled patch features), got {self.width!r}")

    def pixel_features(self) -> int:
        return self.in_chans * self.tubelet * (self.patch_size // self.pool) ** 2

    def dims(self) -> tuple[int, int, int, float]:
        """(width, depth, heads, mlp_ratio): the size preset with the overrides applied."""
        check_keys(self, "model.encoder", {"size": one_of(*ENCODER_SIZES)})
        w, d, h, r = ENCODER_SIZES[self.size]
        pick = lambda override, preset: preset if override is None else override
        return (pick(self.width, w), pick(self.depth, d), pick(self.heads, h), pick(self.mlp_ratio, r))


@dataclass
class TransformerConfig:
    width: int = 96
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0

    def check(self, prefix: str) -> None:
        check_keys(self, prefix, {"width": at_least(1), "depth": at_least(1), "heads": at_least(1),
                                  "mlp_ratio": above(0)})
        check_heads(prefix, self.width, self.heads)


@dataclass
class RegularizerConfig:
    """The keys of every regularizer kind. Which kinds exist and which of these keys each takes
    is the regularizer registry's (``fastlam.nn.regularizers.REGULARIZER_KINDS``)."""

    kind: str = "noisy"  # none | deterministic | sparse | noisy | discrete
    # sparse (lam-spec.md 3.1): l_l1 is the swept strength, the rest are the paper's fixed values
    l_l1: float = 0.01
    l_l2: float = 1.0
    l_v: float = 0.1
    l_c: float = 0.001
    l_m: float = 0.1
    mean_term: str = "signed"
    # noisy (3.2)
    beta: float = 5e-5
    # noisy: guards against a collapsed z at small scale (the paper's beta was tuned for V-JEPA 2
    # features at batch 1024; the README's study measured z unused at beta 5e-5 where the action
    # explains a small part of the loss). Both off (0) is the paper's recipe.
    # free_bits: each latent dim's KL (averaged over the batch) is penalised only above this
    # many nats (Kingma et al. 2016): a few informative dims cost nothing, so z is not pushed
    # to the prior before the predictor has learnt to use it.
    free_bits: float = 0.0
    # beta_warmup_steps: beta ramps linearly from 0 to beta over this many training steps (the
    # regularizer counts its training forward calls in a buffer saved with the weights, so a
    # resumed run continues the ramp).
    beta_warmup_steps: int = 0
    # beta_delay_steps: beta is exactly 0 for this many training steps, then the warm-up (or the
    # full beta) starts. Measured on the study's pan (README, method options): with AdamW even a
    # ramping beta drives the posterior to unit noise before the predictor uses z, so a ramp
    # alone does not stop the collapse; a delay with a narrow start (logvar_offset) does.
    beta_delay_steps: int = 0
    # logvar_offset: added to the IDM's log-variance output. Negative starts the posterior
    # narrow (sigma = e^(offset / 2)), so z carries the IDM's mean from step 0 instead of noise
    # of unit scale. Measured (README, method options): alone it does not stop the pan's
    # collapse (the KL widens the posterior within ~100 steps); with beta_delay_steps it does.
    logvar_offset: float = 0.0
    # discrete (3.3). The paper resets dead codes every 300k videos (configs/paper_vitl.yaml);
    # a small run never sees that many, so by default the reset runs every reset_every_steps.
    num_codes: int = 1024
    commitment: float = 0.25
    reset_every_videos: int = 0  # 0: off
    reset_every_steps: int = 100  # 0: off
    dead_code_threshold: float = 1.0  # a code chosen fewer times since the last reset is dead
    codebook_init: str = "kmeans"  # kmeans (k-means++ on the first batch) | data | uniform | randn
    ema: bool = False  # EMA codebook updates instead of the codebook loss
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    cosine: bool = False

    def check(self, prefix: str = "model.regularizer") -> None:
        """The ranges of the numbers, whatever the kind (a value no regularizer can take is a
        mistake even where the chosen kind ignores it); the kind and the choices of its modules
        are checked by the registry (``fastlam.nn.regularizers.check_regularizer_config``)."""
        check_keys(self, prefix, {
            "l_l1": at_least(0), "l_l2": at_least(0), "l_v": at_least(0), "l_c": at_least(0), "l_m": at_least(0),
            "beta": at_least(0), "free_bits": at_least(0), "beta_warmup_steps": whole_at_least(0),
            "beta_delay_steps": whole_at_least(0),
            "logvar_offset": within(-20, 10),  # the clamp's range: beyond it the offset is lost
            "num_codes": at_least(1), "commitment": at_least(0),
            "reset_every_videos": at_least(0), "reset_every_steps": at_least(0),
            "ema_decay": within(0, 1, hi_open=True)})


PREDICTOR_TARGETS = ("state", "delta")


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    idm: TransformerConfig = field(default_factory=lambda: TransformerConfig(width=64, depth=2, heads=4))
    predictor: TransformerConfig = field(default_factory=TransformerConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    action_dim: int = 128
    image_size: int = 256
    frames: int = 16  # raw frames per clip (T = frames / tubelet time steps)
    loss: str = "l1"
    normalize_target: bool = False
    # What the predictor's head outputs. "state" (the paper, V-JEPA 2-AC): s_(t+1) itself.
    # "delta": s_(t+1) - s_t, added to s_t by a skip, with the head zero-initialised, so an
    # untrained predictor is exactly "copy the last state" (the README's study measured the
    # paper's predictor needing 1,500-3,000 steps just to beat copying, before it used z).
    # Either way the predictor returns next-state predictions.
    predictor_target: str = "state"
    # Prediction loss weighted toward the tokens that change: token weight
    # 1 + change_weight * |s_(t+1) - s_t| (mean over features, divided by its batch mean); the
    # loss is the weighted mean. 0: the paper's plain mean. Runs on the torch loss, not the
    # fused kernel.
    change_weight: float = 0.0

    def check(self, prefix: str = "model") -> None:
        """Its own keys and its parts'; ``loss`` and ``regularizer.kind`` are choices of code
        above this layer (``fastlam.config_checks`` and the regularizer registry check them)."""
        check_keys(self, prefix, {"action_dim": at_least(1), "image_size": at_least(1), "frames": at_least(2),
                                  "predictor_target": one_of(*PREDICTOR_TARGETS), "change_weight": at_least(0)})
        enc = self.encoder
        enc.check(f"{prefix}.encoder")
        self.idm.check(f"{prefix}.idm")
        self.predictor.check(f"{prefix}.predictor")
        self.regularizer.check(f"{prefix}.regularizer")
        if self.predictor_target == "delta" and self.normalize_target:
            # The skip adds the raw s_t while the loss would compare with a layer-normed s_(t+1):
            # the residual would start from the wrong scale instead of from "copy".
            raise ConfigError(f"{prefix}.predictor_target: 'delta' cannot be combined with "
                              f"{prefix}.normalize_target=true (the skip adds the raw s_t, the target is "
                              f"layer-normed); use predictor_target: state with normalize_target")
        if self.image_size % enc.patch_size:
            raise ConfigError(f"{prefix}.image_size: expected a multiple of {prefix}.encoder.patch_size="
                              f"{enc.patch_size}, got {self.image_size}")
        if self.frames % enc.tubelet or self.frames < 2 * enc.tubelet:
            raise ConfigError(f"{prefix}.frames: expected a multiple of {prefix}.encoder.tubelet={enc.tubelet} and "
                              f">= {2 * enc.tubelet} (two time steps), got {self.frames}")


# ---- optimisers ----------------------------------------------------------------------------
@dataclass
class OptimConfig:
    muon_lr: float = 0.02
    adamw_lr: float = 6.25e-4
    weight_decay: float = 0.04
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.1
    min_lr_frac: float = 0.0  # cosine decays to this fraction of the peak
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    use_muon: bool = True  # False: AdamW for everything

    def check(self, prefix: str = "optim") -> None:
        check_keys(self, prefix, {
            "muon_lr": above(0), "adamw_lr": above(0), "weight_decay": at_least(0),
            "warmup_frac": within(0, 1), "min_lr_frac": within(0, 1), "grad_clip": at_least(0)})
        beta = within(0, 1, hi_open=True)
        for i, b in enumerate(self.adamw_betas):
            if not beta.ok(b):
                raise key_error(f"{prefix}.adamw_betas[{i}]", beta.expected, b)


# ---- data ----------------------------------------------------------------------------------
@dataclass
class DataConfig:
    # a directory, a text file of paths, a manifest (.parquet/.jsonl from `python -m
    # fastlam.data index`), shards (shards.json or a tar URL pattern from `... shard`), a state
    # store (states.json from `... encode`: encoder states, no decoding), or "synthetic"
    source: str = "data/samples"
    shuffle_buffer: int = 256  # shard sources and state stores: samples mixed in each loader worker's buffer
    fps: float = 4.0
    crop: str = "random"
    short_policy: str = "pad"
    clips_per_video: int = 1
    num_workers: int = 0
    # auto: the DALI loader (NVDEC decoding, per-codec routing, prefetch) on CUDA when DALI is
    # installed, else the PyTorch DataLoader over VideoClipDataset (PyAV); dali | torch force one;
    # dali_stream: DaliStreamLoader (planning in DALI workers, DALI prefetch and async execution).
    loader: str = "auto"
    cache_mb: float = 0.0  # keep whole decoded videos in memory (per process) up to this size
    decode_timeout_s: float = 60.0
    # Bad inputs (undecodable files, damaged shard samples) are skipped and reported; more than
    # this share of an epoch's inputs bad stops the run with an error naming the worst files/shards.
    max_bad_fraction: float = 0.25
    synthetic_clips: int = 512  # for source: synthetic (sprites moved by known actions)
    # > 1 with wrap: a pan of sprites on a torus, all moved by the action (the learning test's data)
    synthetic_sprites: int = 1
    synthetic_wrap: bool = False

    def check(self, prefix: str = "data") -> None:
        check_keys(self, prefix, {
            "source": NON_EMPTY, "fps": above(0), "crop": one_of("random", "center"),
            "short_policy": one_of("pad", "skip"), "clips_per_video": at_least(1), "num_workers": at_least(0),
            "loader": one_of("auto", "dali", "dali_stream", "torch"), "cache_mb": at_least(0),
            "decode_timeout_s": above(0), "max_bad_fraction": within(0, 1), "synthetic_clips": at_least(1), "synthetic_sprites": at_least(1)})


# ---- the dashboard -------------------------------------------------------------------------
@dataclass
class LoggingConfig:
    tensorboard: bool = False
    wandb: bool = False  # needs the wandb package; WANDB_MODE=offline works without a network
    wandb_project: str = "fastlam"
    decoder: str | None = None  # pixel decoder folder: image strips in the dashboard
    image_every: int = 0  # steps between strips; 0 = every 10 x log_every

    def check(self, prefix: str = "logging") -> None:
        """Fail before training when a requested backend is missing (errors name the key)."""
        if self.image_every < 0:
            raise ConfigError(f"{prefix}.image_every: expected an int >= 0, got {self.image_every!r}")
        if self.tensorboard:
            try:
                import tensorboard  # noqa: F401  # optional dependency: tensorboard (the viz extra)
            except ImportError:
                raise ConfigError(f"{prefix}.tensorboard: the tensorboard package is not installed "
                                  "(pip install -e '.[viz]')") from None
        if self.wandb:
            try:
                import wandb  # noqa: F401  # optional dependency: wandb
            except ImportError:
                raise ConfigError(f"{prefix}.wandb: the wandb package is not installed (pip install wandb)") from None
        if self.decoder is not None:
            if not (self.tensorboard or self.wandb):
                raise ConfigError(f"{prefix}.decoder: image strips need {prefix}.tensorboard or {prefix}.wandb")
            if not Path(self.decoder).exists():
                raise ConfigError(f"{prefix}.decoder: no decoder at {self.decoder}")


@dataclass
class LatentCollapseConfig:
    """When the training diagnostics call the latent action collapsed (``fastlam.diagnostics``):
    the action dependence ``diag/action_dependence`` (held-out L1 with other clips' z / with the
    IDM's own z) within ``tolerance`` of 1.0 for the last ``window`` measurements, all taken
    after ``warmup`` (a share of the run's steps).

    Why these defaults: the predictor's AdaLN-zero start ignores z by construction (ratio
    exactly 1.0 at step 0) and a small one first learns to copy s_t, so the first half of a run
    is not judged. 1%: issue 28's collapsed run read 0.0480 / 0.0480 (x1.000) while a run that
    used z read x1.9; a z that moves the held-out error by under 1% carries next to nothing the
    predictor uses. Three measurements (``log_every`` apart) so one noisy reading is not a
    verdict."""

    tolerance: float = 0.01  # |action dependence - 1| at most this counts as "z ignored"
    window: int = 3  # consecutive diagnostics measurements that must all be within tolerance
    warmup: float = 0.5  # share of the run's steps before any measurement is judged

    def check(self, prefix: str = "latent_collapse") -> None:
        check_keys(self, prefix, {"tolerance": at_least(0), "window": whole_at_least(1),
                                  "warmup": within(0, 1)})


# ---- what every training run has ------------------------------------------------------------
@dataclass
class RunConfig:
    """The top-level keys a LAM run (:class:`TrainConfig`) and a pixel decoder run
    (:class:`DecoderTrainConfig`) share: one meaning and one check for both, so a change to how a
    run is sized, seeded, placed or logged reaches both."""

    batch_size: int = 8
    steps: int = 300  # training steps
    seed: int = 0
    out_dir: str = "runs/tiny_cpu"  # the run folder
    log_every: int = 10  # steps between logged metrics
    ckpt_every: int = 100  # steps between checkpoints
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True  # the progress bar

    def check(self) -> None:
        check_keys(self, "", {"batch_size": at_least(1), "steps": at_least(1), "log_every": at_least(1),
                              "ckpt_every": at_least(1), "out_dir": NON_EMPTY})


# ---- a LAM training run ----------------------------------------------------------------------
# torch.compile backends a training run may name (TrainConfig.compile_backend).
COMPILE_BACKENDS = ("inductor", "aot_eager")


@dataclass
class TrainConfig(RunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    grad_accum_steps: int = 1  # micro-batches per optimizer step (per rank)
    activation_checkpointing: bool = False  # recompute predictor blocks in backward
    # torch.compile the model's forward and backward (fastlam's custom ops are single nodes of the
    # graph; the VQ's codebook edits run eagerly between forward and backward); not with
    # DeepSpeed, whose engine owns the model. compile_backend: torch.compile's backend, inductor
    # (generated kernels; on CPU it needs a C++ compiler and minutes to compile) or aot_eager
    # (the same graphs run by eager kernels: checks capture quickly, no speed-up)
    compile: bool = False
    compile_backend: str = "inductor"
    diagnostics_clips: int = 8  # fixed held-out clips for the diag/* latent-use metrics (0: off)
    # when the diagnostics warn that z is ignored (see LatentCollapseConfig)
    latent_collapse: LatentCollapseConfig = field(default_factory=LatentCollapseConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # TensorBoard / W&B (metrics.jsonl always)

    def check(self) -> None:
        """Its own keys, then each part's (the device and the weights file are checked by
        :func:`fastlam.config_checks.validate_train_config`, which runs this first)."""
        super().check()
        check_keys(self, "", {
            "keep_checkpoints": at_least(1), "grad_accum_steps": at_least(1),
            "precision": one_of("auto", "bf16", "fp32"), "compile_backend": one_of(*COMPILE_BACKENDS)})
        deepspeed = self.distributed.backend == "deepspeed" or (self.distributed.backend == "auto"
                                                                and bool(self.distributed.deepspeed_config))
        if self.compile and deepspeed:
            raise ConfigError("compile: true is not supported with DeepSpeed (its engine wraps the model; "
                              "use distributed.backend=ddp or none, or compile=false)")
        self.data.check("data")
        self.optim.check("optim")
        self.model.check("model")
        self.distributed.check("distributed")
        self.logging.check("logging")
        self.latent_collapse.check("latent_collapse")


# ---- a pixel decoder training run (python -m fastlam.train_decoder) -------------------------
@dataclass
class DecoderArch(TransformerConfig):
    """The decoder's transformer: a TransformerConfig's keys and checks, a wider default."""

    width: int = 128

    def check(self, prefix: str = "decoder") -> None:
        super().check(prefix)


@dataclass
class DecoderData:
    source: str = "data/samples"
    fps: float = 4.0
    clips_per_video: int = 64
    cache_mb: float = 256.0
    num_workers: int = 0

    def check(self, prefix: str = "data") -> None:
        check_keys(self, prefix, {"source": NON_EMPTY, "fps": above(0), "clips_per_video": at_least(1),
                                  "cache_mb": at_least(0), "num_workers": at_least(0)})


@dataclass
class LPIPSConfig:
    weight: float = 0.0  # > 0 adds weight * LPIPS to the L1 loss (needs backbone)
    backbone: str | None = None  # local torchvision AlexNet/VGG16 state dict
    linear: str | None = None  # local lpips v0.1 per-layer weights (alex.pth / vgg.pth)
    net: str = "alex"

    def check(self, prefix: str = "lpips") -> None:
        check_keys(self, prefix, {"weight": at_least(0)})
        if self.weight > 0 and not self.backbone:
            raise ConfigError(f"{prefix}.backbone: {prefix}.weight > 0 needs local backbone weights "
                              "(a torchvision AlexNet/VGG16 state dict; fastlam downloads nothing)")
        check_keys(self, prefix, {"net": one_of("alex", "vgg")})


@dataclass
class DecoderTrainConfig(RunConfig):
    lam: str = "runs/tiny_cpu/final"
    decoder: DecoderArch = field(default_factory=DecoderArch)
    data: DecoderData = field(default_factory=DecoderData)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    holdout_videos: int = 1  # the last N videos of data.source never train; PSNR is measured on them
    eval_clips: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    out_dir: str = "runs/decoder_tiny_cpu"  # RunConfig's key, this run's default

    def check(self) -> None:
        super().check()
        check_keys(self, "", {
            "eval_clips": at_least(1), "holdout_videos": at_least(0), "lr": above(0), "weight_decay": at_least(0),
            "warmup_frac": within(0, 1), "grad_clip": at_least(0)})
        self.decoder.check("decoder")
        self.data.check("data")
        self.lpips.check("lpips")
