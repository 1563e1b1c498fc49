"""One FLOP model and one peak table for every MFU figure fastlam prints (the training log's
``mfu`` and benchmarks/bench_train_step.py).

Model FLOPs, counted from the modules' shapes: 2 x in x out per token per linear layer (the
tubelet conv as a linear), 4 x width per query-key pair the mask allows for attention (QK^T
and AV; masked pairs are not counted), elementwise work not counted; the trainable parts count
forward + backward, the frozen encoder forward only; recomputation not counted. The backward
counts :data:`LINEAR_BACKWARD_FACTOR` (2) x the forward for linear layers and
:data:`ATTENTION_BACKWARD_FACTOR` (2.5) x for attention, FlashAttention's convention, which
benchmarks/bench_attention.py uses too: a training step is 3 x the linear FLOPs + 3.5 x the
attention FLOPs.
The IDM is counted as it runs: T - 1 transitions of two frames (query token + N patches each)
under a full mask.

Peaks are datasheet dense bf16 tensor-core rates (no sparsity) keyed by the exact name
``torch.cuda.get_device_name`` reports: an H100 PCIe (756 TFLOP/s) is not an SXM (989), and a
device not in the table gets no MFU rather than a guessed one.
"""
from __future__ import annotations

from torch import nn

from fastlam.models.blocks import AdaLNZeroBlock

# A linear layer's backward is two matmuls the size of its forward one (dX and dW).
LINEAR_BACKWARD_FACTOR = 2.0
# FlashAttention's count: the backward recomputes QK^T and computes dV, dP, dQ and dK, 5
# matmuls against the forward's 2 (QK^T and PV), so forward + backward = 3.5 x forward.
ATTENTION_BACKWARD_FACTOR = 2.5
# Multipliers of (linear, attention) forward FLOPs: the forward alone, and forward + backward.
FORWARD = (1.0, 1.0)
FORWARD_BACKWARD = (1.0 + LINEAR_BACKWARD_FACTOR, 1.0 + ATTENTION_BACKWARD_FACTOR)

# torch.cuda.get_device_name() -> dense bf16 FLOP/s (vendor datasheets, no sparsity).
PEAK_BF16_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,  # SXM5
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # SXM
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA L40S": 362e12,
    "NVIDIA A10": 125e12,
}


def datasheet_bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak of the device named exactly so, or None when it is not in the table."""
    return PEAK_BF16_FLOPS.get(device_name.strip())


def linear_flops(tokens: float, layer: nn.Linear) -> float:
    return 2.0 * tokens * layer.in_features * layer.out_features


def attention_flops(seqs: int, pairs: int, width: int) -> float:
    """Forward FLOPs of attention, QK^T and AV over the allowed pairs, all heads (width =
    heads x head_dim)."""
    return 4.0 * seqs * pairs * width


def block_flops(blk, seqs: int, seq_len: int, pairs: int, cond_rows: int = 0, passes=FORWARD) -> float:
    """One transformer block over ``seqs`` sequences of ``seq_len`` tokens whose mask allows
    ``pairs`` query-key pairs each; ``cond_rows`` AdaLN modulation rows (one per frame);
    ``passes``: (linear, attention) multipliers, :data:`FORWARD` or :data:`FORWARD_BACKWARD`."""
    tokens = seqs * seq_len
    width = blk.attn.qkv.in_features
    f = linear_flops(tokens, blk.attn.qkv) + linear_flops(tokens, blk.attn.proj)
    f += linear_flops(tokens, blk.mlp.fc1) + linear_flops(tokens, blk.mlp.fc2)
    if isinstance(blk, AdaLNZeroBlock):
        f += linear_flops(cond_rows, blk.adaLN_modulation[1])
    return passes[0] * f + passes[1] * attention_flops(seqs, pairs, width)


def allowed_pairs(frames: int, frame_len: int, mask: str, dense: bool = False) -> int:
    """Query-key pairs a mask allows over ``frames`` frames (``dense``: all L^2, as a dense
    attention computes them)."""
    L = frames * frame_len
    if dense or mask == "full":
        return L * L
    if mask != "frame_causal":
        raise ValueError(f"mask: expected 'full' or 'frame_causal', got {mask!r}")
    return frame_len * frame_len * frames * (frames + 1) // 2


def lam_flops(model, dense: bool = False, passes=FORWARD) -> dict:
    """Forward FLOPs of one clip through each part of a LatentActionWorldModel (encoder, idm,
    predictor); with ``passes=FORWARD_BACKWARD`` the IDM and predictor count forward + backward
    (the frozen encoder runs forward only either way)."""
    lin = passes[0]
    cfg = model.cfg
    enc = cfg.encoder
    grid = cfg.image_size // enc.patch_size
    N, T = grid * grid, cfg.frames // enc.tubelet
    mask = "frame_causal" if enc.frame_causal else "full"
    conv = getattr(getattr(model.encoder, "patch_embed", None), "proj", None)
    if conv is not None:  # a ViT: the tubelet patch embedding
        patch_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * conv.kernel_size[2]
        encoder = 2.0 * T * N * patch_in * conv.out_channels
    else:  # the weight-free pixels encoder: at most one fixed projection per token
        proj = getattr(model.encoder, "proj", None)
        encoder = 2.0 * T * N * proj.shape[0] * proj.shape[1] if proj is not None else 0.0
    encoder += sum(block_flops(b, 1, T * N, allowed_pairs(T, N, mask, dense)) for b in model.encoder.blocks)
    idm = 0.0
    if model.idm is not None:
        # T - 1 transitions, each two frames of (query token + N patches) under a full mask.
        S, frame = T - 1, N + 1
        idm = lin * (linear_flops(S * 2 * N, model.idm.embed) + linear_flops(S, model.idm.head))
        idm += sum(block_flops(b, S, 2 * frame, allowed_pairs(2, frame, "full"), passes=passes)
                   for b in model.idm.blocks)
    p = model.predictor
    predictor = lin * (linear_flops((T - 1) * N, p.embed) + linear_flops((T - 1) * N, p.head))
    if model.idm is not None:
        predictor += lin * linear_flops(T - 1, p.action_embed)
    predictor += sum(block_flops(b, 1, (T - 1) * N, allowed_pairs(T - 1, N, "frame_causal", dense), cond_rows=T - 1,
                                 passes=passes)
                     for b in p.blocks)
    return {"encoder": encoder, "idm": idm, "predictor": predictor}


def lam_train_flops_per_clip(model, with_encoder: bool = True) -> float:
    """Model FLOPs of one training clip: the frozen encoder's forward (``with_encoder``; off
    when training from cached states) + forward and backward of the IDM and predictor."""
    f = lam_flops(model, passes=FORWARD_BACKWARD)
    return (f["encoder"] if with_encoder else 0.0) + f["idm"] + f["predictor"]
