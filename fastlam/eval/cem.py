"""The cross-entropy method (CEM): the planner of the planning protocols (lam-spec.md section 5).

The protocols' settings: arm (DROID) 300 samples, top 10, 15 iterations (:data:`ARM_CEM`);
navigation (RECON) one iteration of 120 samples (:data:`NAV_CEM`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class CEMConfig:
    samples: int = 300
    top_k: int = 10
    iterations: int = 15
    min_std: float = 1e-4  # keeps a dimension from collapsing to a point before the last iteration


ARM_CEM = CEMConfig(samples=300, top_k=10, iterations=15)
NAV_CEM = CEMConfig(samples=120, top_k=10, iterations=1)


def cem(cost_fn: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
        cfg: CEMConfig = ARM_CEM, *, low: torch.Tensor | None = None, high: torch.Tensor | None = None,
        generator: torch.Generator | None = None) -> dict:
    """Minimise ``cost_fn`` over action sequences with the cross-entropy method.

    Args:
        cost_fn: maps candidates (S, *shape) to costs (S,), all samples in one call.
        mean, std: the initial Gaussian over candidates, shape ``shape`` (e.g. (H, A)).
            A dimension with std 0 stays at its mean.
        low, high: optional bounds (broadcast to ``shape``); samples are clamped into them.

    Returns ``{"plan": the final mean, "best": the lowest-cost sample seen, "best_cost",
    "costs": mean elite cost per iteration}``.
    """
    if mean.shape != std.shape:
        raise ValueError(f"std: expected the shape of mean {tuple(mean.shape)}, got {tuple(std.shape)}")
    if not 1 <= cfg.top_k <= cfg.samples:
        raise ValueError(f"top_k: expected 1..samples={cfg.samples}, got {cfg.top_k}")
    mean, std = mean.clone().float(), std.clone().float()
    fixed = std <= 0
    best, best_cost, history = mean.clone(), math.inf, []
    for _ in range(cfg.iterations):
        eps = torch.randn((cfg.samples, *mean.shape), generator=generator)
        cand = mean + std * eps
        if low is not None:
            cand = torch.maximum(cand, torch.as_tensor(low, dtype=cand.dtype))
        if high is not None:
            cand = torch.minimum(cand, torch.as_tensor(high, dtype=cand.dtype))
        costs = cost_fn(cand).float()
        if costs.shape != (cfg.samples,):
            raise ValueError(f"cost_fn: expected costs of shape ({cfg.samples},), got {tuple(costs.shape)}")
        elite_cost, idx = costs.topk(cfg.top_k, largest=False)
        elites = cand[idx]
        if float(elite_cost[0]) < best_cost:
            best_cost, best = float(elite_cost[0]), elites[0].clone()
        mean = elites.mean(0)
        std = torch.where(fixed, torch.zeros_like(std),
                          elites.std(0, unbiased=False).clamp_min(cfg.min_std) if cfg.top_k > 1 else std)
        history.append(float(elite_cost.mean()))
    return {"plan": mean, "best": best, "best_cost": best_cost, "costs": history}
