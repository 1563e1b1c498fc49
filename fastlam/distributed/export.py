"""A ZeRO checkpoint's shards merged into the weights ``LatentActionWorldModel.from_checkpoint`` loads."""
from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..config import from_dict
from ..models import LatentActionWorldModel, ModelConfig
from .checkpoints import ENCODER_FILE, STATE_FILE


def export_consolidated(tag_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a ZeRO checkpoint's shards into fp32 weights and write ``config.json`` +
    ``model.safetensors`` (``LatentActionWorldModel.from_checkpoint(out_dir)``). Runs in one
    process on CPU, without a process group: ``python -m fastlam.distributed export TAG_DIR OUT``."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # optional dependency: DeepSpeed

    tag_dir = Path(tag_dir)
    if not (tag_dir / STATE_FILE).is_file():
        raise FileNotFoundError(f"export: {tag_dir} is not a complete fastlam DeepSpeed checkpoint (no {STATE_FILE})")
    state = load_checkpoint(tag_dir / STATE_FILE)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    if (tag_dir / ENCODER_FILE).is_file():
        weights.update({f"encoder.{k}": v.float() for k, v in load_checkpoint(tag_dir / ENCODER_FILE).items()})
    cfg = from_dict(ModelConfig, json.loads(state["model_config"]))
    cfg.encoder.checkpoint = None
    model = LatentActionWorldModel(cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"export: {tag_dir} does not match its model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.save_pretrained(out_dir)
