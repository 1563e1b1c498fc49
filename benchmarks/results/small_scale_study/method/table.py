"""The README's table of the method-option runs (issue 28 item 4): one row per run folder and
kind under this folder, from its study_<world>.json, with the copy baseline's L1 (predict
s_(t+1) = s_t) on the same held-out states, rebuilt from the run's recorded world settings.

    python benchmarks/results/small_scale_study/method/table.py   # from the repository root
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fastlam.data.worlds import load_backgrounds, make_world
from fastlam.models import EncoderConfig, LatentActionWorldModel, ModelConfig

HERE = Path(__file__).resolve().parent


def copy_l1(study: dict) -> float:
    """Mean |s_(t+1) - s_t| over the study's held-out clips (its test world: seed + 1)."""
    c, p = study["config"], study["world_preset"]
    canvas = c["size"] + 2 * p["max_step"] * (c["steps_t"] - 1) if p["kind"] == "pan" else c["size"]
    backgrounds, src = load_backgrounds(c["source"], canvas, per_video=4, seed=c["seed"])
    world = make_world(p["kind"], c["test_clips"], steps=c["steps_t"], tubelet=2, size=c["size"], agent=6,
                       distractor_size=5, max_step=p["max_step"], distractors=c["distractors"], flicker=c["flicker"],
                       backgrounds=backgrounds, background_source=src, seed=c["seed"] + 1)
    enc = EncoderConfig(kind="pixels", patch_size=c["patch"], tubelet=2, pool=c["pool"], token_norm=c["token_norm"])
    model = LatentActionWorldModel(ModelConfig(image_size=c["size"], frames=2 * c["steps_t"], encoder=enc))
    with torch.no_grad():
        s = torch.cat([model.encode(world.video[i:i + 64]) for i in range(0, world.video.shape[0], 64)])
    return float((s[:, 1:] - s[:, :-1]).abs().mean())


def main() -> None:
    print("| run | world | kind | overrides | copy L1 | L1 own / other z | action dep. | ridge z (shuffled) "
          "| MLP (z, s) | z -> next position | leakage |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    copies: dict = {}
    for path in sorted(HERE.glob("*/study_*.json")):
        st = json.loads(path.read_text())
        key = (st["world"], st["config"]["seed"])
        if key not in copies:
            copies[key] = copy_l1(st)
        sets = " ".join(st["config"].get("model_overrides", ())) or "(paper)"
        for kind, r in st["rows"].items():
            print(f"| {path.parent.name} | {st['world']} | {kind} | {sets} | {copies[key]:.4f} | "
                  f"{r['diag/l1_own']:.4f} / {r['diag/l1_other']:.4f} | x{r['diag/action_dependence']:.3f} | "
                  f"{r['ridge_trained']:.3f} ({r['ridge_shuffled']:.3f}) | {r['mlp_trained']:.3f} | "
                  f"{r.get('ridge_next_position', float('nan')):.3f} | x{r['leakage_ratio']:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
