"""Load released V-JEPA 2 weights into fastlam's encoder (and V-JEPA 2-AC's predictor).

Two on-disk formats are understood; nothing is ever downloaded, the user passes a path:

- **Official PyTorch checkpoints** (``vitl.pt``, ``vith.pt``, ``vitg.pt``, ``vjepa2-ac-vitg.pt``
  from facebookresearch/vjepa2): a dict holding the ``encoder`` / ``target_encoder`` (and for
  V-JEPA 2-AC ``predictor``) state dicts, keys prefixed ``module.`` and/or ``backbone.``. The
  parameter names are already fastlam's (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``norm``
  ...). Read with ``torch.load(weights_only=True)``: nothing in the file can run code.
- **Hugging Face transformers** (``VJEPA2Model``): a ``model.safetensors`` file, or a directory
  with ``config.json`` and ``model.safetensors`` (or a sharded index). Keys such as
  ``encoder.layer.N.attention.query.weight`` are renamed and the separate q / k / v
  projections are concatenated into fastlam's fused ``qkv``. When ``config.json`` is present
  the head count, LayerNorm eps and activation are checked too (shapes cannot reveal them).

Numerics. fastlam's encoder computes exactly V-JEPA 2's function (same float32 round-off):
Conv3d tubelet embedding with no normalisation after it and no absolute position embedding;
pre-norm blocks with LayerNorm(eps=1e-6), qkv bias, exact (erf) GELU, softmax scale
``head_dim ** -0.5``; 3D RoPE on q and k with V-JEPA 2's duplicated-frequency quirk
(``EncoderConfig.rope_duplicated_freqs=True``), head dim split into (t, h, w) chunks of
``2 * ((head_dim // 3) // 2)`` channels with the remainder unrotated, positions taken from the
input's own patch grid (as the official ``handle_nonsquare_inputs=True`` path does; no spatial
scaling or interpolation in the encoder); a final LayerNorm(eps=1e-6). Two differences are
deliberate and documented: fastlam's encoder takes video in [0, 1] and applies the ImageNet
mean / std itself (V-JEPA 2 expects normalised pixels), and transformers' port derives its
RoPE grid from ``config.crop_size`` rather than from the input, so the two agree only at the
configured resolution.

Frame-causal encoder. V-JEPA 2 was trained with full attention over the clip. The LAM paper
uses the encoder frame-causally so that the state of step t never depends on later frames
(otherwise s_t would leak the future into the IDM and predictor). fastlam implements this as
``EncoderConfig.frame_causal=True`` (the default): every encoder block uses the block-causal
mask (``mask="frame_causal"``, a token of tubelet-step t attends to all tokens of steps <= t)
with the released weights unchanged. The alternative, encoding each time step independently,
would also be causal but discards the temporal context the encoder was trained to use. Set
``frame_causal: false`` to reproduce V-JEPA 2's own (full-attention) features, e.g. to
compare with the reference implementation.

Command line::

    python -m fastlam.models.vjepa2 inspect CHECKPOINT
    python -m fastlam.models.vjepa2 convert CHECKPOINT OUT.safetensors [--part encoder|predictor] [--key auto]
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import atomic_write, load_checkpoint, load_safetensors
from ..config import ConfigError
from ..inputs import InputError, MissingInputError, describe_path, output_folder, read_json
from .encoder import ENCODER_SIZES

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "convert",
    "convert_hf_encoder",
    "convert_official",
    "describe_encoder_state",
    "load_vjepa2_ac_predictor",
    "load_vjepa2_encoder",
    "read_checkpoint",
    "vjepa2_encoder_state",
    "vjepa2_predictor_state",
]

ENCODER_KEYS = ("target_encoder", "encoder")  # "auto" prefers the EMA (target) encoder, as V-JEPA 2's hub does
# Official encoder state dicts may carry an absolute sin-cos ``pos_embed`` that RoPE models never
# read (the official loader uses strict=False for exactly this reason).
UNUSED_OFFICIAL_KEYS = ("pos_embed",)


class CheckpointMismatchError(ValueError):
    """The file's architecture does not match the module it is loaded into."""


@dataclass
class LoadReport:
    """What a load did: the source format, the sub-dict used, and any keys left out."""

    path: str
    format: str  # "official", "hf" or "fastlam"
    key: str | None  # the top-level checkpoint entry used (official format)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# ---- reading files -----------------------------------------------------------------------
EXPECTED = ("a V-JEPA 2 checkpoint: an official .pt / .pth of tensors only (read with torch.load(weights_only=True)), "
            "a transformers .safetensors file or folder, or a file from 'python -m fastlam.models.vjepa2 convert'")


def _torch_load(path: Path) -> dict:
    # mmap keeps a multi-GB ViT-g checkpoint (with optimizer state) out of RAM.
    return load_checkpoint(path, "cpu", expected=EXPECTED, mmap=True)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path, "cpu", expected=EXPECTED)


def _hf_config(path: Path) -> dict | None:
    """A transformers V-JEPA 2 ``config.json`` (other configs, e.g. fastlam's own, are ignored)."""
    if not path.is_file():
        return None
    cfg = read_json(path, "checkpoint", "a transformers config.json beside the weights (or no config.json)")
    return cfg if str(cfg.get("model_type", "")).startswith("vjepa2") else None


def _converted_config(path: Path) -> dict | None:
    """The head count ``convert`` stored in a file's metadata (weights alone cannot show it)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("converted_by") == "fastlam.models.vjepa2" and meta.get("heads", "None") != "None":
        return {"num_attention_heads": int(meta["heads"])}
    return None


def read_checkpoint(path: str | Path) -> tuple[dict, dict | None]:
    """Read ``path`` into (contents, transformers config or None), never unpickling objects.

    ``path`` may be a ``.pt`` / ``.pth`` / ``.bin`` file (torch), a ``.safetensors`` file, or a
    directory holding ``model.safetensors`` (or ``model.safetensors.index.json`` with shards)
    and optionally ``config.json``. Anything else is an :class:`~fastlam.inputs.InputError`
    naming the path, what is there and what to pass.
    """
    path = Path(path)
    if path.is_dir():
        hf_cfg = _hf_config(path / "config.json")
        index = path / "model.safetensors.index.json"
        if (path / "model.safetensors").is_file():
            return _load_safetensors(path / "model.safetensors"), hf_cfg
        if index.is_file():
            weight_map = read_json(index, "checkpoint", "a sharded safetensors index", keys=("weight_map",))["weight_map"]
            if not isinstance(weight_map, dict):
                raise InputError(f"checkpoint: {index}: 'weight_map' is not a mapping of tensor names to shard files")
            state: dict = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                state.update(_load_safetensors(path / shard))
            return state, hf_cfg
        raise InputError(f"checkpoint: {path} is {describe_path(path)} without model.safetensors or "
                         f"model.safetensors.index.json; pass {EXPECTED}")
    if not path.exists():
        raise MissingInputError(f"checkpoint: no file at {path} (fastlam never downloads weights; pass a local path "
                                "to a V-JEPA 2 .pt / .safetensors file or transformers folder)")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
        return state, _hf_config(path.parent / "config.json") or _converted_config(path)
    contents = _torch_load(path)
    if not isinstance(contents, dict):
        raise InputError(f"checkpoint: {path} holds a {type(contents).__name__}, expected a dict of state dicts "
                         f"({EXPECTED})")
    return contents, None


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP wraps in `module.`, V-JEPA 2's MultiSeqWrapper in `backbone.`; either or both occur.
    out = {}
    for k, v in state.items():
        while k.startswith(("module.", "backbone.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _detect_format(state: dict[str, torch.Tensor]) -> str:
    if any(".attention.query." in k or "embeddings.patch_embeddings." in k for k in state):
        return "hf"
    return "official"


# ---- key conversion ----------------------------------------------------------------------
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def convert_hf_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """transformers ``VJEPA2Model`` keys -> fastlam encoder keys; returns (state, ignored keys).

    ``VJEPA2ForVideoClassification`` files (``vjepa2.`` prefix, pooler, classifier) work too;
    the predictor, pooler and classifier weights are reported as ignored.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    ignored = []
    for key, val in state.items():
        k = key[len("vjepa2."):] if key.startswith("vjepa2.") else key
        if k.startswith("encoder.embeddings.patch_embeddings.proj."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = val
        elif k.startswith("encoder.layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = val
        elif m := _HF_LAYER.match(k):
            i, rest = int(m.group(1)), m.group(2)
            name, leaf = rest.rsplit(".", 1)
            if name in ("attention.query", "attention.key", "attention.value"):
                qkv.setdefault((i, leaf), {})[name.split(".")[1]] = val
            elif name in _HF_RENAMES:
                out[f"blocks.{i}.{_HF_RENAMES[name]}.{leaf}"] = val
            else:
                out[f"blocks.{i}.{rest}"] = val  # unknown: surfaces as an unexpected key
        else:
            ignored.append(key)
    for (i, leaf), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise CheckpointMismatchError(
                f"checkpoint: encoder.layer.{i}.attention has no {'/'.join(missing)}.{leaf} (incomplete file?)"
            )
        # fastlam's fused projection lays its output out as [q | k | v] (see STAttention).
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out, ignored


def convert_official(contents: dict, part: str = "encoder", key: str = "auto") -> tuple[dict[str, torch.Tensor], str | None]:
    """Pick the ``part`` state dict out of an official checkpoint and strip its prefixes.

    ``key="auto"`` uses ``target_encoder`` (the EMA weights V-JEPA 2 releases as its encoder)
    when present, else ``encoder``; for ``part="predictor"`` it uses ``predictor``. A file that
    is itself a flat state dict is used as is. Returns (state dict, the entry used or None).
    """
    if _is_state_dict(contents):
        return _strip_prefixes(contents), None
    if key == "auto":
        candidates = ENCODER_KEYS if part == "encoder" else ("predictor",)
        key = next((c for c in candidates if c in contents), None)
        if key is None:
            raise KeyError(
                f"checkpoint: no {' / '.join(candidates)} entry; it has {sorted(map(str, contents))}. "
                f"Pass key= with the entry that holds the {part} state dict."
            )
    elif key not in contents:
        raise KeyError(f"checkpoint: key={key!r} not found; it has {sorted(map(str, contents))}")
    sub = contents[key]
    if not _is_state_dict(sub):
        raise ValueError(f"checkpoint: entry {key!r} is not a state dict of tensors")
    return _strip_prefixes(sub), key


def describe_encoder_state(state: dict[str, torch.Tensor], hf_cfg: dict | None = None) -> dict:
    """Architecture implied by fastlam-named encoder weights (heads only from a config)."""
    info: dict = {}
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.dim() == 5:
        info.update(width=w.shape[0], in_chans=w.shape[1], tubelet=w.shape[2], patch_size=w.shape[3])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        info["depth"] = max(blocks) + 1
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and "width" in info:
        info["mlp_ratio"] = fc1.shape[0] / info["width"]
    if hf_cfg:
        info["heads"] = hf_cfg.get("num_attention_heads")
    sizes = [name for name, (wd, d, _, _) in ENCODER_SIZES.items() if wd == info.get("width") and d == info.get("depth")]
    if sizes:
        info["size"] = sizes[0]
    return info


def _check_hf_config(hf_cfg: dict, encoder: nn.Module) -> None:
    cfg = encoder.cfg
    width, depth, heads, mlp_ratio = cfg.dims()
    checks = [
        ("num_attention_heads", heads, "model.encoder.heads"),
        ("hidden_size", width, "model.encoder.width"),
        ("num_hidden_layers", depth, "model.encoder.depth"),
        ("patch_size", cfg.patch_size, "model.encoder.patch_size"),
        ("tubelet_size", cfg.tubelet, "model.encoder.tubelet"),
    ]
    for hf_key, ours, where in checks:
        if hf_key in hf_cfg and hf_cfg[hf_key] != ours:
            raise CheckpointMismatchError(
                f"the checkpoint's config has {hf_key}={hf_cfg[hf_key]} but {where} is {ours}"
            )
    if "mlp_ratio" in hf_cfg and int(width * hf_cfg["mlp_ratio"]) != int(width * mlp_ratio):
        raise CheckpointMismatchError(
            f"the checkpoint's config has mlp_ratio={hf_cfg['mlp_ratio']} but model.encoder.mlp_ratio is {mlp_ratio}"
        )
    # fastlam's blocks hard-code what every released V-JEPA 2 uses; anything else would load
    # without a shape error and silently compute a different function.
    if hf_cfg.get("layer_norm_eps", 1e-6) != 1e-6:
        raise CheckpointMismatchError(f"the checkpoint's config has layer_norm_eps={hf_cfg['layer_norm_eps']}; fastlam uses 1e-6")
    if hf_cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointMismatchError(f"the checkpoint's config has hidden_act={hf_cfg['hidden_act']!r}; fastlam uses exact GELU")


def vjepa2_encoder_state(path: str | Path, key: str = "auto") -> tuple[dict[str, torch.Tensor], LoadReport, dict | None]:
    """Read ``path`` (any supported format) into fastlam encoder names.

    Returns (state dict, report without missing / unexpected yet, transformers config or None).
    """
    contents, hf_cfg = read_checkpoint(path)
    if _is_state_dict(contents) and _detect_format(contents) == "hf":
        state, ignored = convert_hf_encoder(contents)
        return state, LoadReport(str(path), "hf", None, ignored=ignored), hf_cfg
    state, used = convert_official(contents, "encoder", key)
    ignored = [k for k in UNUSED_OFFICIAL_KEYS if k in state]
    for k in ignored:
        del state[k]
    if ignored:
        warnings.warn(
            f"load_vjepa2_encoder: ignored {ignored} in {path}: V-JEPA 2 encoders use RoPE and never read it "
            f"(a V-JEPA 1 checkpoint, which relies on it, would not be reproduced)",
            RuntimeWarning,
            stacklevel=3,
        )
    fmt = "official" if used is not None or Path(path).suffix != ".safetensors" else "fastlam"
    return state, LoadReport(str(path), fmt, used, ignored=ignored), hf_cfg


def vjepa2_predictor_state(path: str | Path, key: str = "auto") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Read a V-JEPA 2-AC predictor state dict (official ``predictor`` entry or a converted file)."""
    contents, _ = read_checkpoint(path)
    state, used = convert_official(contents, "predictor", key)
    fmt = "official" if used is not None else "fastlam"
    return state, LoadReport(str(path), fmt, used)


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, *, strict: bool,
               what: str, hint: str = "") -> LoadReport:
    """Copy ``state`` into ``module`` after checking every key and shape, naming the first problem."""
    expected = module.state_dict()
    for name, ref in expected.items():
        if name not in state:
            if strict:
                raise CheckpointMismatchError(
                    f"{report.path}: {what} expects key {name!r} with shape {tuple(ref.shape)}, which the "
                    f"checkpoint does not have{hint}"
                )
            report.missing.append(name)
        elif tuple(state[name].shape) != tuple(ref.shape):
            # A shape mismatch is an error even when strict=False: nothing sensible can be loaded.
            raise CheckpointMismatchError(
                f"{report.path}: key {name!r} has shape {tuple(state[name].shape)} in the checkpoint but "
                f"{tuple(ref.shape)} in {what}{hint}"
            )
    report.unexpected = [k for k in state if k not in expected]
    if strict and report.unexpected:
        k = report.unexpected[0]
        raise CheckpointMismatchError(
            f"{report.path}: checkpoint key {k!r} (shape {tuple(state[k].shape)}) has no counterpart in {what} "
            f"({len(report.unexpected)} unexpected keys in all){hint}"
        )
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return report


def load_vjepa2_encoder(encoder: nn.Module, path: str | Path, *, strict: bool = True, key: str = "auto") -> LoadReport:
    """Load V-JEPA 2 encoder weights from a local file into a fastlam ``VideoEncoder``.

    Args:
        encoder: the :class:`~fastlam.models.VideoEncoder` to fill; its config must describe
            the same architecture (e.g. ``size: large`` for ViT-L/16, ``huge``, ``giant``).
        path: an official ``.pt`` / ``.pth`` checkpoint, a transformers ``VJEPA2Model``
            directory or ``.safetensors`` file, or a file written by ``convert`` below.
        strict: every parameter of ``encoder`` must be in the file and every encoder weight in
            the file must be used. Shape mismatches are errors either way.
        key: which entry of an official checkpoint holds the encoder (``auto``: ``target_encoder``
            if present, else ``encoder``).

    Returns:
        a :class:`LoadReport` (format used, entry used, missing / unexpected / ignored keys).

    Raises:
        CheckpointMismatchError: naming the first mismatched key and both shapes.
    """
    state, report, hf_cfg = vjepa2_encoder_state(path, key)
    found = describe_encoder_state(state, hf_cfg)
    shown = {k: found[k] for k in ("size", "width", "depth", "heads", "patch_size", "tubelet") if found.get(k) is not None}
    hint = f" (the checkpoint looks like {shown}; set model.encoder accordingly)" if shown else ""
    if hf_cfg is not None and hasattr(encoder, "cfg"):
        _check_hf_config(hf_cfg, encoder)
    return _load_into(encoder, state, report, strict=strict, what="model.encoder", hint=hint)


def load_vjepa2_ac_predictor(predictor: nn.Module, path: str | Path, *, strict: bool = True, key: str = "auto") -> LoadReport:
    """Load V-JEPA 2-AC predictor weights (official ``predictor`` entry, or a converted or
    :meth:`ACPredictor.save_pretrained` file) into a :class:`~fastlam.models.ac_predictor.ACPredictor`."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    state, report = vjepa2_predictor_state(path, key)
    return _load_into(predictor, state, report, strict=strict, what="the AC predictor")


# ---- command line ------------------------------------------------------------------------
def convert(src: str | Path, dst: str | Path, *, part: str = "encoder", key: str = "auto") -> Path:
    """Write the ``part`` weights of ``src`` with fastlam names into ``dst`` (safetensors)."""
    if part == "encoder":
        state, report, hf_cfg = vjepa2_encoder_state(src, key)
        meta = {k: str(v) for k, v in describe_encoder_state(state, hf_cfg).items()}
    elif part == "predictor":
        state, report = vjepa2_predictor_state(src, key)
        meta = {}
    else:
        raise ValueError(f"part: expected 'encoder' or 'predictor', got {part!r}")
    meta.update(source=str(src), source_format=report.format, part=part, converted_by="fastlam.models.vjepa2")
    state = {k: v.detach().contiguous() for k, v in state.items()}
    return atomic_write(Path(dst), lambda p: save_file(state, str(p), metadata=meta))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fastlam.models.vjepa2",
        description="Inspect or convert released V-JEPA 2 weights (official .pt / .pth checkpoints, transformers "
                    "safetensors files or folders) for fastlam's encoder and V-JEPA 2-AC predictor. Nothing is "
                    "downloaded: pass a local path.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{convert,inspect}",
                            help="convert: write fastlam-named safetensors; inspect: print what a checkpoint holds")
    c = sub.add_parser("convert", help="convert a V-JEPA 2 checkpoint to fastlam-named safetensors")
    c.add_argument("src", help="V-JEPA 2 weights: an official .pt / .pth, a transformers .safetensors file, or a "
                               "folder holding model.safetensors (or a sharded index) and config.json")
    c.add_argument("dst", help="output file; must end in .safetensors (written atomically)")
    c.add_argument("--part", default="encoder", choices=["encoder", "predictor"],
                   help="which weights to convert: the encoder, or V-JEPA 2-AC's action-conditioned predictor "
                        "(default: encoder)")
    c.add_argument("--key", default="auto",
                   help="entry of an official checkpoint that holds the weights, e.g. target_encoder, encoder or "
                        "predictor (default: auto, which prefers target_encoder, the EMA weights V-JEPA 2 releases)")
    i = sub.add_parser("inspect", help="print the format and architecture of a checkpoint")
    i.add_argument("src", help="V-JEPA 2 weights: an official .pt / .pth, a transformers .safetensors file or its "
                               "folder, or a converted file")
    i.add_argument("--key", default="auto",
                   help="entry of an official checkpoint that holds the encoder (default: auto, which prefers "
                        "target_encoder, then encoder)")
    return ap


def _run(args) -> None:
    if args.cmd == "convert":
        dst = Path(args.dst)
        if not str(dst).endswith(".safetensors"):
            raise InputError(f"dst: {dst} must end in .safetensors")
        if dst.is_dir():
            raise InputError(f"dst: {dst} is {describe_path(dst)}; pass a file name ending in .safetensors")
        output_folder(dst.parent, "dst")
        out = convert(args.src, dst, part=args.part, key=args.key)
        print(f"wrote {out}")
    else:
        state, report, hf_cfg = vjepa2_encoder_state(args.src, args.key)
        print(f"format: {report.format}" + (f" (entry {report.key!r})" if report.key else ""))
        for k, v in describe_encoder_state(state, hf_cfg).items():
            print(f"{k}: {v}")
        print(f"encoder tensors: {len(state)}, ignored: {len(report.ignored)}")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        _run(args)
    # ConfigError covers every unreadable or wrong file (InputError, CheckpointError);
    # CheckpointMismatchError is a ValueError; convert_official raises KeyError for a missing
    # entry, whose str() would add quotes.
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        ap.exit(2, f"error: {msg}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
