"""Checkpoints of attention blocks across the peers' layouts and fastlam's ``STAttention``, both ways.

fastlam stores one ``qkv`` linear (q, k, v stacked on the output axis), ``proj``, and the
qk-norm as ``q_norm`` / ``k_norm`` or, shared, ``norm``. The peers:

- ``"univla"``: UniVLA's LAM and lucidrains-style blocks: separate ``to_q / to_k / to_v``
  linears (biased or not, all alike) and ``to_out.0`` (``to_out = Sequential(Linear, Dropout)``).
- ``"vjepa2"``: V-JEPA 2's attention (``qkv`` / ``proj``: fastlam's own names) and its
  ``CrossAttention`` (``q`` and ``kv = [k; v]``, no output projection: an ``STAttention(...,
  out_proj=False)``).
- ``"1xgpt"``: 1xgpt's ST blocks (``qkv`` / ``proj`` and one shared qk LayerNorm ``norm``:
  ``STAttention(..., qk_norm="shared")``), so nothing is renamed.

Peer -> fastlam: :func:`peer_attention_keys_to_fastlam_` (what ``STAttention.load_state_dict``
runs, so a peer state dict loads directly); a peer without biases loads into biased linears as
zero biases. fastlam -> peer: :func:`to_peer_attention_state_dict` writes the layout the peer's
module was built with; a bias the peer's module has no place for must be zero, or it is an
error (dropping it would change the function).

This module knows state-dict keys, not module classes: every module whose
``peer_checkpoint_layout`` is ``"attention"`` (fastlam's STAttention) is converted, at any
depth of a model; other keys pass unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

ATTENTION_LAYOUT = "attention"
PEERS = ("univla", "vjepa2", "1xgpt")
SEPARATE_QKV = ("to_q", "to_k", "to_v")
OUT_NAMES = ("to_out.0", "to_out")  # the Sequential(Linear, Dropout) form first


def _fuse(state_dict: dict, prefix: str, names, *, with_bias: bool) -> list[str]:
    """Concatenate ``names``' weights (and biases) into ``qkv`` in place; error messages."""
    weights = [f"{prefix}{n}.weight" for n in names]
    biases = [f"{prefix}{n}.bias" for n in names]
    present = [b in state_dict for b in biases]
    if any(present) and not all(present):
        return [f"{prefix or 'attention'}: biases on some of {list(names)} only ({biases}); fastlam's qkv has "
                "one bias for all of them"]
    fused = torch.cat([state_dict.pop(w) for w in weights], 0)
    state_dict[f"{prefix}qkv.weight"] = fused
    if all(present):
        state_dict[f"{prefix}qkv.bias"] = torch.cat([state_dict.pop(b) for b in biases], 0)
    elif with_bias:  # a bias-free peer in a biased module: the same function
        state_dict[f"{prefix}qkv.bias"] = fused.new_zeros(fused.shape[0])
    return []


def peer_attention_keys_to_fastlam_(state_dict: dict, prefix: str, *, qkv_bias: bool,
                                    proj_bias: bool | None) -> list[str]:
    """Rewrite, in place, a peer's attention keys at ``prefix`` into STAttention's names
    (``qkv_bias``: whether its qkv has a bias; ``proj_bias``: whether its proj has one, None
    when it has no projection). Returns error messages; keys already in fastlam's names, or of
    no peer, are left alone."""
    if all(f"{prefix}{n}.weight" in state_dict for n in SEPARATE_QKV):
        errors = _fuse(state_dict, prefix, SEPARATE_QKV, with_bias=qkv_bias)
    elif f"{prefix}q.weight" in state_dict and f"{prefix}kv.weight" in state_dict:
        errors = _fuse(state_dict, prefix, ("q", "kv"), with_bias=qkv_bias)
    else:
        errors = []
    for out in OUT_NAMES:
        if f"{prefix}{out}.weight" not in state_dict:
            continue
        if proj_bias is None:
            errors.append(f"{prefix}{out}.weight: an output projection, and this STAttention has none "
                          "(out_proj=False)")
            break
        state_dict[f"{prefix}proj.weight"] = state_dict.pop(f"{prefix}{out}.weight")
        if f"{prefix}{out}.bias" in state_dict:
            state_dict[f"{prefix}proj.bias"] = state_dict.pop(f"{prefix}{out}.bias")
        elif proj_bias:
            state_dict[f"{prefix}proj.bias"] = state_dict[f"{prefix}proj.weight"].new_zeros(
                state_dict[f"{prefix}proj.weight"].shape[0])
        break
    return errors


def _attention_modules(module: nn.Module):
    for name, sub in module.named_modules():
        if getattr(sub, "peer_checkpoint_layout", None) == ATTENTION_LAYOUT:
            yield (name + "." if name else ""), sub


def _split(state: dict, prefix: str, names, sizes) -> None:
    for kind in ("weight", "bias"):
        key = f"{prefix}qkv.{kind}"
        if key in state:
            for n, part in zip(names, state.pop(key).split(sizes, 0)):
                state[f"{prefix}{n}.{kind}"] = part.clone()


def _drop_zero_bias(state: dict, key: str, peer: str) -> None:
    bias = state.pop(key, None)
    if bias is not None and bool(bias.ne(0).any()):
        raise ValueError(f"{key}: non-zero, and the {peer} layout has no bias there (built without it, dropping it "
                         "would change the function)")


def to_peer_attention_state_dict(module: nn.Module, peer: str, *, qkv_bias: bool = False,
                                 proj_bias: bool = True, out_name: str = "to_out.0") -> dict:
    """``module.state_dict()`` with every STAttention in it written in ``peer``'s names (one of
    :data:`PEERS`; see the module docstring): loads into the peer's module with ``strict=True``.

    ``"univla"`` only: ``qkv_bias`` / ``proj_bias`` say whether the peer's ``to_q/to_k/to_v`` /
    output linears have biases (UniVLA: no, yes); a fastlam bias with no place there must be
    zero. ``out_name``: ``"to_out.0"`` (Sequential) or ``"to_out"`` (a plain Linear)."""
    if peer not in PEERS:
        raise ValueError(f"peer: expected one of {PEERS}, got {peer!r}")
    if out_name not in OUT_NAMES:
        raise ValueError(f"out_name: expected one of {OUT_NAMES}, got {out_name!r}")
    state = dict(module.state_dict())
    for prefix, attn in _attention_modules(module):
        dim = attn.qkv.in_features
        if peer == "univla":
            if attn.shared_qk_norm or not isinstance(attn.q_norm, nn.Identity):
                raise ValueError(f"{prefix or 'attention'}: qk-norm, which the univla layout has no place for")
            if not qkv_bias:
                _drop_zero_bias(state, f"{prefix}qkv.bias", peer)
            _split(state, prefix, SEPARATE_QKV, [dim, dim, dim])
            if isinstance(attn.proj, nn.Identity):
                raise ValueError(f"{prefix or 'attention'}: no output projection, which the univla layout has")
            if not proj_bias:
                _drop_zero_bias(state, f"{prefix}proj.bias", peer)
            for kind in ("weight", "bias"):
                if f"{prefix}proj.{kind}" in state:
                    state[f"{prefix}{out_name}.{kind}"] = state.pop(f"{prefix}proj.{kind}")
        elif peer == "vjepa2" and isinstance(attn.proj, nn.Identity):
            _split(state, prefix, ("q", "kv"), [dim, 2 * dim])  # CrossAttention
        elif peer == "1xgpt" and not attn.shared_qk_norm and not isinstance(attn.q_norm, nn.Identity):
            raise ValueError(f"{prefix or 'attention'}: separate q_norm / k_norm; 1xgpt shares one (build "
                             "STAttention(..., qk_norm='shared'))")
    return state


def from_peer_attention_state_dict(module: nn.Module, peer_state_dict: dict) -> dict:
    """A peer's state dict in the layout of fastlam's ``module`` (the counterpart of
    :func:`to_peer_attention_state_dict`, whichever peer wrote it); keys of other submodules pass
    unchanged. ``module.load_state_dict(peer_state_dict)`` does the same conversion itself."""
    state = dict(peer_state_dict)
    errors = []
    for prefix, attn in _attention_modules(module):
        proj_bias = None if isinstance(attn.proj, nn.Identity) else attn.proj.bias is not None
        errors += peer_attention_keys_to_fastlam_(state, prefix, qkv_bias=attn.qkv.bias is not None,
                                                  proj_bias=proj_bias)
    if errors:
        raise ValueError("cannot convert the peer's attention state dict:\n  " + "\n  ".join(errors))
    return state
