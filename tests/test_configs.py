"""fastlam.configs: every run configuration in one place, each checking its own keys; the
regularizer registry owning its kinds, their choices and their constructor arguments."""
import dataclasses
import warnings

import pytest

from fastlam import configs
from fastlam.config import ConfigError, from_dict, load_config
from fastlam.config_checks import validate_train_config
from fastlam.configs import (DataConfig, DecoderArch, DecoderData, DecoderTrainConfig, DistributedConfig, EncoderConfig,
                             LoggingConfig, LPIPSConfig, ModelConfig, OptimConfig, RegularizerConfig, TrainConfig,
                             TransformerConfig)
from fastlam.nn import REGULARIZER_KINDS, build_regularizer, check_regularizer_config, regularizer_from_config


@pytest.mark.parametrize("make, prefix, match", [
    (lambda: TrainConfig(batch_size=0), None, r"^batch_size: expected >= 1, got 0$"),
    (lambda: TrainConfig(precision="fp8"), None, r"^precision: expected one of auto, bf16, fp32, got 'fp8'$"),
    (lambda: DataConfig(fps=0.0), "data", r"^data.fps: expected > 0, got 0.0$"),
    (lambda: DataConfig(synthetic_sprites=0), "data", r"^data.synthetic_sprites: expected >= 1, got 0$"),
    (lambda: OptimConfig(warmup_frac=1.5), "optim", r"^optim.warmup_frac: expected in \[0, 1\], got 1.5$"),
    (lambda: OptimConfig(adamw_betas=(0.9, 1.0)), "optim", r"^optim.adamw_betas\[1\]: expected in \[0, 1\), got 1.0$"),
    (lambda: DistributedConfig(backend="mpi"), "distributed", r"^distributed.backend: expected one of auto, none"),
    (lambda: DistributedConfig(muon_momentum=1.0), "distributed", r"^distributed.muon_momentum: expected in \[0, 1\)"),
    (lambda: TransformerConfig(width=96, heads=5), "model.idm",
     r"^model.idm.width: expected a multiple of model.idm.heads=5, got 96$"),
    (lambda: TransformerConfig(mlp_ratio=0.0), "model.predictor", r"^model.predictor.mlp_ratio: expected > 0, got 0.0$"),
    (lambda: EncoderConfig(size="enormous"), "model.encoder", r"^model.encoder.size: expected one of tiny, small"),
    (lambda: EncoderConfig(patch_size=0), "model.encoder", r"^model.encoder.patch_size: expected an int >= 1, got 0$"),
    (lambda: EncoderConfig(kind="pixels", pool=3), "model.encoder", r"^model.encoder.pool: expected an int >= 1 dividing"),
    (lambda: RegularizerConfig(l_l1=-0.1), "model.regularizer", r"^model.regularizer.l_l1: expected >= 0, got -0.1$"),
    (lambda: RegularizerConfig(ema_decay=1.5), "model.regularizer",
     r"^model.regularizer.ema_decay: expected in \[0, 1\), got 1.5$"),
    (lambda: ModelConfig(image_size=60), "model",
     r"^model.image_size: expected a multiple of model.encoder.patch_size=16, got 60$"),
    (lambda: ModelConfig(frames=15), "model", r"^model.frames: expected a multiple of model.encoder.tubelet=2"),
    (lambda: LoggingConfig(image_every=-1), "logging", r"^logging.image_every: expected an int >= 0, got -1$"),
    (lambda: DecoderTrainConfig(lr=0.0), None, r"^lr: expected > 0, got 0.0$"),
    (lambda: DecoderArch(width=130, heads=4), "decoder", r"^decoder.width: expected a multiple of decoder.heads=4"),
    (lambda: DecoderData(clips_per_video=0), "data", r"^data.clips_per_video: expected >= 1, got 0$"),
    (lambda: LPIPSConfig(net="squeeze"), "lpips", r"^lpips.net: expected one of alex, vgg, got 'squeeze'$"),
    (lambda: LPIPSConfig(weight=1.0), "lpips", r"^lpips.backbone: lpips.weight > 0 needs local backbone weights"),
])
def test_every_config_checks_its_own_keys(make, prefix, match):
    cfg = make()
    with pytest.raises(ConfigError, match=match):
        cfg.check() if prefix is None else cfg.check(prefix)


def test_defaults_pass_and_a_part_is_named_where_it_sits():
    for cls in (TrainConfig, DecoderTrainConfig):
        cls().check()
    cfg = TrainConfig()
    cfg.model.encoder.patch_size = 0
    with pytest.raises(ConfigError, match=r"^model.encoder.patch_size: expected an int >= 1"):
        cfg.check()  # TrainConfig.check runs its parts, each under its dotted place
    cfg = DecoderTrainConfig()
    cfg.data.fps = -1.0
    with pytest.raises(ConfigError, match=r"^data.fps: expected > 0"):
        cfg.check()


def test_old_import_paths_are_the_same_classes():
    from fastlam import dashboard, optim, train, train_decoder, trainer
    from fastlam.models import encoder, lam

    assert trainer.TrainConfig is train.TrainConfig is TrainConfig and trainer.DataConfig is DataConfig
    assert lam.ModelConfig is ModelConfig and lam.RegularizerConfig is RegularizerConfig
    assert lam.TransformerConfig is TransformerConfig and encoder.EncoderConfig is EncoderConfig
    assert encoder.ENCODER_SIZES is configs.ENCODER_SIZES and optim.OptimConfig is OptimConfig
    assert dashboard.LoggingConfig is LoggingConfig and train_decoder.DecoderTrainConfig is DecoderTrainConfig
    assert (train_decoder.DecoderArch, train_decoder.DecoderData, train_decoder.LPIPSConfig) == (
        DecoderArch, DecoderData, LPIPSConfig)


def test_from_dict_builds_the_nested_classes():
    cfg = from_dict(TrainConfig, {"model": {"encoder": {"kind": "pixels", "pool": 4}, "idm": {"width": 32},
                                            "regularizer": {"kind": "discrete", "num_codes": 8}},
                                  "optim": {"adamw_betas": [0.8, 0.9]}, "logging": {"image_every": 3}})
    assert isinstance(cfg.model.encoder, EncoderConfig) and cfg.model.encoder.pool == 4
    assert isinstance(cfg.model.idm, TransformerConfig) and (cfg.model.idm.width, cfg.model.idm.heads) == (32, 4)
    assert isinstance(cfg.model.regularizer, RegularizerConfig) and cfg.model.regularizer.num_codes == 8
    assert cfg.optim.adamw_betas == (0.8, 0.9) and cfg.logging.image_every == 3
    dec = from_dict(DecoderTrainConfig, {"decoder": {"width": 64}, "lpips": {"net": "vgg"}})
    assert isinstance(dec.decoder, DecoderArch) and dec.decoder.width == 64 and dec.lpips.net == "vgg"


# ---- the regularizer registry -----------------------------------------------------------------
@pytest.mark.parametrize("kind", list(REGULARIZER_KINDS))
def test_every_registered_kind_builds_from_a_config(kind):
    entry = REGULARIZER_KINDS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the registry uses each module's current argument names
        reg = regularizer_from_config(RegularizerConfig(kind=kind, num_codes=8, beta=0.5, l_l1=0.2), 16, 3)
        by_name = build_regularizer(kind, 16)
    if entry.module is None:
        assert reg is None and by_name is None
        return
    assert type(reg) is entry.module and type(by_name) is entry.module
    assert reg.head_features(16) in (16, 32)
    if kind == "noisy":
        assert reg.beta == 0.5
    if kind == "sparse":
        assert reg.coeffs["l_l1"] == 0.2


def test_the_registry_maps_config_keys_to_constructor_arguments():
    vq = regularizer_from_config(RegularizerConfig(kind="discrete", num_codes=8, reset_every_videos=10,
                                                   reset_every_steps=0, codebook_init="data"), 16, 7)
    assert vq.reset_every == 70 and vq.reset_every_steps is None and vq.init == "data"


def test_an_unknown_kind_names_the_key_and_the_known_kinds():
    with pytest.raises(ConfigError) as e:
        check_regularizer_config(RegularizerConfig(kind="sparce"))
    msg = str(e.value)
    assert msg.startswith("model.regularizer.kind: expected one of ") and msg.endswith("got 'sparce'")
    assert all(kind in msg for kind in REGULARIZER_KINDS)
    with pytest.raises(ConfigError, match="model.regularizer.kind"):
        regularizer_from_config(RegularizerConfig(kind="sparce"), 16, 3)


@pytest.mark.parametrize("key, value", [("mean_term", "odd"), ("codebook_init", "zeros")])
def test_choices_of_a_kinds_module_are_checked_by_the_registry(key, value):
    cfg = dataclasses.replace(RegularizerConfig(kind="noisy"), **{key: value})
    cfg.check()  # not a number range: the config itself cannot know the module's choices
    with pytest.raises(ConfigError, match=rf"^model.regularizer.{key}: expected one of .*got '{value}'$"):
        check_regularizer_config(cfg)


def test_validate_train_config_asks_every_owner():
    base = load_config(TrainConfig, "configs/tiny_cpu.yaml")
    validate_train_config(base)
    for override, match in (("model.loss=l3", r"^model.loss: expected one of l1, l2, got 'l3'$"),
                            ("model.regularizer.kind=vq", r"^model.regularizer.kind: expected one of none"),
                            ("logging.image_every=-2", r"^logging.image_every: expected an int >= 0"),
                            ("data.synthetic_sprites=0", r"^data.synthetic_sprites: expected >= 1")):
        with pytest.raises(ConfigError, match=match):
            validate_train_config(load_config(TrainConfig, "configs/tiny_cpu.yaml", [override]))
