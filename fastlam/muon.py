"""fastlam's Muon: ``torch.optim.Muon``'s update with the Newton-Schulz iteration batched.

``torch.optim.Muon`` orthogonalises one matrix at a time: five quintic Newton-Schulz steps of
three small matmuls each, so a transformer's dozens of hidden matrices cost hundreds of
kernel launches per optimizer step, each too small to fill a GPU. Here the matrices of one
parameter group are grouped by their shape up to transposition (a block's ``fc1`` (4D, D) is
orthogonalised as its transpose (D, 4D), as ``fc2`` is), stacked, and iterated together with
batched matmuls: the same bf16 arithmetic, coefficients, steps, momentum / Nesterov, decoupled
weight decay and learning-rate adjustment, and the same optimizer state (``momentum_buffer``),
so checkpoints of either load into the other. It is the tree's one Newton-Schulz: DeepSpeed
runs use DeepSpeed's own Muon (:mod:`fastlam.distributed.muon`), which ZeRO recognises by type.

:func:`muon_step_flops` is the optimizer's side of the FLOP model: the training log reports it
beside the model's MFU (``muon_mfu``) and as a share of the model's FLOPs.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch

# torch < 2.9 has no Muon; fastlam warns at import and build_optimizers raises before any
# instance is made, so the class only needs a base to be defined against there.
_TorchMuon = getattr(torch.optim, "Muon", torch.optim.Optimizer)


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning rate: ``"original"`` (None) scales by
    sqrt(max(1, rows / cols)), ``"match_rms_adamw"`` by 0.2 sqrt(max(rows, cols))."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


def newton_schulz_batched(x: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                          eps: float) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon on a stack (B, m, n), m <= n, in
    bf16: each matrix divided by its Frobenius norm, then ``steps`` of X <- aX + (bA + cA^2)X
    with A = X X^T."""
    if steps >= 100:  # torch.optim.Muon's bound, kept so that both accept the same settings
        raise ValueError(f"ns_steps: expected fewer than 100 Newton-Schulz steps, got {steps}")
    a, b, c = coefficients
    x = x.bfloat16()
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x


def orthogonalise(updates: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> list[torch.Tensor]:
    """Newton-Schulz of every matrix in ``updates``, one batched iteration per (shape up to
    transposition, device); returned in the input's order and orientation."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, u in enumerate(updates):
        groups[(min(u.shape), max(u.shape), u.device)].append(i)
    out: list[torch.Tensor | None] = [None] * len(updates)
    for idx in groups.values():
        wide = [updates[i].shape[0] <= updates[i].shape[1] for i in idx]
        stack = torch.stack([updates[i] if w else updates[i].T for i, w in zip(idx, wide)])
        ortho = newton_schulz_batched(stack, coefficients, steps, eps)
        for i, w, o in zip(idx, wide, ortho.unbind(0)):
            out[i] = o if w else o.T
    return out


class Muon(_TorchMuon):
    """``torch.optim.Muon`` (same arguments, defaults, checks and state) whose step runs the
    Newton-Schulz iteration batched over the matrices of one shape (see the module docstring)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if torch.is_complex(p) or p.grad.is_sparse:
                    raise RuntimeError("Muon does not support complex parameters or sparse gradients")
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            lr = group["lr"]
            lr = lr.item() if isinstance(lr, torch.Tensor) else lr
            momentum = group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            ortho = orthogonalise(updates, group["ns_coefficients"], group["ns_steps"], group["eps"])
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            for p, u in zip(params, ortho):
                p.add_(u, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


# ---- FLOPs: the optimizer's side of the FLOP model (fastlam.flops counts the model's) -------

def newton_schulz_flops(shape, steps: int = 5) -> float:
    """Matmul FLOPs of one Muon orthogonalisation of an (m, n) matrix, oriented so that
    m <= n as every Muon here runs it: per quintic step A = X X^T (2 m^2 n), A A (2 m^3) and
    (bA + cA^2) X (2 m^2 n). The norm and the elementwise work are not counted (the convention
    of fastlam.flops: matmuls only)."""
    m, n = min(shape[:2]), max(shape[:2])
    return steps * (4.0 * m * m * n + 2.0 * m ** 3)


def muon_step_flops(optimizers) -> float:
    """Newton-Schulz FLOPs of one optimizer step of every Muon in ``optimizers`` (torch's,
    fastlam's, DeepSpeed's ``MuonWithAuxAdam``, matched by class name; the AdamW groups of the
    latter, ``use_muon=False``, are skipped), per process: each process orthogonalises every
    matrix it updates. Kept out of the model FLOPs behind MFU (those count the model, the
    convention benchmarks compare against); the training log reports it beside MFU."""
    total = 0.0
    for opt in optimizers:
        if "Muon" not in type(opt).__name__:
            continue
        for group in opt.param_groups:
            if not group.get("use_muon", True):
                continue
            steps = group.get("ns_steps", 5)
            total += sum(newton_schulz_flops(p.shape, steps) for p in group["params"] if p.ndim == 2)
    return total
