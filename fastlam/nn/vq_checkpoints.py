"""Checkpoints of the VQ family across vector-quantize-pytorch and fastlam, both ways.

The layouts differ only for ``VectorQuantize`` (and so ``ResidualVQ``, whose layers are
VectorQuantize): the peer keeps its codebook in a ``_codebook`` submodule with a leading
codebook axis (``_codebook.embed`` (1, K, D), ``_codebook.cluster_size`` (1, K),
``_codebook.embed_avg`` (1, K, D), ``_codebook.initted``), and always stores the EMA statistics;
fastlam keeps ``codebook.weight`` (K, D), the EMA statistics only with ``ema=True``, and a
dead-code window of its own (``usage``, ``seen_since_reset``, ``steps_since_reset``). FSQ and
LFQ have the same layout in both (their projections; LFQ's ``mask`` buffer), so their state
dicts cross unchanged.

Peer -> fastlam: the codebook, ``initted`` and (with EMA) the statistics map one to one; the
dead-code window starts empty, as after a reset (the peer has none); without EMA the peer's
statistics are dropped (fastlam's learnable codebook reads none). fastlam -> peer: the window is
dropped; without EMA the statistics are written as the peer initialises them (ones, and the
current codes): the peer's learnable codebook never reads them (it tracks them only to expire
codes by ``threshold_ema_dead_code``, which fastlam refuses for a learnable codebook).

This module knows state-dict keys, not module classes: a module whose ``peer_checkpoint_layout``
is ``"vector_quantize"`` (fastlam's VectorQuantizer) is converted, at any depth of a model.
"""
from __future__ import annotations

import torch
from torch import nn

VECTOR_QUANTIZE_LAYOUT = "vector_quantize"
PEER_CODEBOOK_KEYS = ("embed", "initted", "cluster_size", "embed_avg")  # under "_codebook."
FASTLAM_WINDOW_BUFFERS = ("usage", "seen_since_reset", "steps_since_reset")


def is_peer_vq_state(state_dict: dict, prefix: str = "") -> bool:
    """Whether ``state_dict`` holds a vector-quantize-pytorch VectorQuantize at ``prefix``."""
    return prefix + "_codebook.embed" in state_dict


def peer_vq_keys_to_fastlam_(state_dict: dict, prefix: str, *, codebook_size: int, dim: int, ema: bool) -> list[str]:
    """Rewrite, in place, the vector-quantize-pytorch VectorQuantize state at ``prefix`` into the
    layout of fastlam's ``VectorQuantizer(codebook_size, dim, ema=ema)``. Returns error messages
    naming the keys that cannot be mapped (empty when converted, or when there was nothing of
    the peer's at ``prefix``); on an error nothing is changed."""
    if not is_peer_vq_state(state_dict, prefix):
        return []
    peer = prefix + "_codebook."
    unknown = sorted(k for k in state_dict if k.startswith(peer) and k[len(peer):] not in PEER_CODEBOOK_KEYS)
    if unknown:  # the peer's affine / multi-head / in-place-optimiser options: no fastlam counterpart
        return [f"{prefix or 'the quantizer'}: vector-quantize-pytorch keys with no fastlam counterpart: {unknown} "
                "(fastlam's VectorQuantizer has no affine statistics, heads or in-place optimiser)"]
    missing = [peer + k for k in PEER_CODEBOOK_KEYS if peer + k not in state_dict]
    if missing:
        return [f"{prefix or 'the quantizer'}: incomplete vector-quantize-pytorch VectorQuantize state, missing {missing}"]
    errors = []
    for key, shape in (("embed", (1, codebook_size, dim)), ("embed_avg", (1, codebook_size, dim)),
                       ("cluster_size", (1, codebook_size))):
        got = tuple(state_dict[peer + key].shape)
        if got != shape:
            errors.append(f"{peer + key}: shape {got}, this VectorQuantizer expects {shape} (one codebook of "
                          f"codebook_size={codebook_size}, dim={dim}; the peer's heads / separate codebooks have "
                          "no fastlam counterpart)")
    if errors:
        return errors
    peer_state = {k: state_dict.pop(peer + k) for k in PEER_CODEBOOK_KEYS}
    state_dict[prefix + "codebook.weight"] = peer_state["embed"][0]
    state_dict[prefix + "initted"] = peer_state["initted"]
    if ema:
        state_dict[prefix + "cluster_size"] = peer_state["cluster_size"][0]
        state_dict[prefix + "embed_avg"] = peer_state["embed_avg"][0]
    device = peer_state["embed"].device
    state_dict.setdefault(prefix + "usage", torch.zeros(codebook_size, dtype=torch.long, device=device))
    for name in FASTLAM_WINDOW_BUFFERS[1:]:
        state_dict.setdefault(prefix + name, torch.zeros((), dtype=torch.long, device=device))
    return []


def fastlam_vq_keys_to_peer_(state_dict: dict, prefix: str, *, ema: bool) -> None:
    """Rewrite, in place, fastlam's VectorQuantizer state at ``prefix`` into
    vector-quantize-pytorch's VectorQuantize layout (see the module docstring)."""
    weight = state_dict.pop(prefix + "codebook.weight")
    state_dict[prefix + "_codebook.embed"] = weight[None].clone()
    state_dict[prefix + "_codebook.initted"] = state_dict.pop(prefix + "initted").clone()
    if ema:
        state_dict[prefix + "_codebook.cluster_size"] = state_dict.pop(prefix + "cluster_size")[None].clone()
        state_dict[prefix + "_codebook.embed_avg"] = state_dict.pop(prefix + "embed_avg")[None].clone()
    else:
        state_dict[prefix + "_codebook.cluster_size"] = torch.ones(1, weight.shape[0], dtype=weight.dtype,
                                                                   device=weight.device)
        state_dict[prefix + "_codebook.embed_avg"] = weight[None].clone()
    for name in FASTLAM_WINDOW_BUFFERS:
        state_dict.pop(prefix + name, None)


def _vq_modules(module: nn.Module):
    for name, sub in module.named_modules():
        if getattr(sub, "peer_checkpoint_layout", None) == VECTOR_QUANTIZE_LAYOUT:
            yield (name + "." if name else ""), sub


def to_peer_state_dict(module: nn.Module) -> dict:
    """``module.state_dict()`` in vector-quantize-pytorch's layout: every fastlam VectorQuantizer
    in it (alone, in a ResidualVQ or anywhere in a model) as the peer's VectorQuantize; FSQ and
    LFQ as they are. Loads into the peer's module with ``strict=True``."""
    state = dict(module.state_dict())
    for prefix, vq in _vq_modules(module):
        fastlam_vq_keys_to_peer_(state, prefix, ema=vq.ema)
    return state


def from_peer_state_dict(module: nn.Module, peer_state_dict: dict) -> dict:
    """A vector-quantize-pytorch state dict in the layout of fastlam's ``module`` (the
    counterpart of :func:`to_peer_state_dict`); keys of other submodules pass unchanged. A
    VectorQuantize state that cannot be mapped is a ValueError naming its keys.
    ``module.load_state_dict(peer_state_dict)`` does the same conversion itself."""
    state = dict(peer_state_dict)
    errors = []
    for prefix, vq in _vq_modules(module):
        errors += peer_vq_keys_to_fastlam_(state, prefix, codebook_size=vq.codebook_size, dim=vq.dim, ema=vq.ema)
    if errors:
        raise ValueError("cannot convert the vector-quantize-pytorch state dict:\n  " + "\n  ".join(errors))
    return state
