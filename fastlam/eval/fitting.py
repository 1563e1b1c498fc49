"""The optimiser recipe the evaluation models share (the paper's, for its controller): AdamW,
linear warmup then cosine, minibatches drawn at random with a seeded generator, one step each
through :func:`fastlam.loop.train_steps`. The controller (:func:`fastlam.eval.controller.train_controller`)
and the action-conditioned baseline (:func:`fastlam.eval.ac_baseline.train_ac_baseline`) fit
this way; their training configs extend :class:`RandomBatchRecipe`, with their own defaults where
the paper's differ.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..loop import train_steps
from ..optim import warmup_cosine


@dataclass
class RandomBatchRecipe:
    """The fitting schedule; the defaults are the action-conditioned baseline's."""
    iterations: int = 2000
    warmup: int = 100  # steps of linear warmup before the cosine decay
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.04
    seed: int = 0  # of the generator that draws the minibatches


def fit_on_random_batches(model: nn.Module, batch_loss: Callable[[torch.Tensor], torch.Tensor], items: int,
                          recipe: RandomBatchRecipe, *, log_every: int = 0,
                          log: Callable[[int, float], None] | None = None) -> list[float]:
    """Minimise ``batch_loss(indices)`` (a scalar tensor for a minibatch of item indices, drawn
    with replacement from ``range(items)``, ``recipe.batch_size`` or all items if fewer) for
    ``recipe.iterations`` steps. Returns the loss of every step; the model is left in eval mode."""
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(recipe.iterations, warmup_steps=recipe.warmup))

    def loss_of(_):
        return batch_loss(torch.randint(0, items, (min(recipe.batch_size, items),), generator=g))

    return train_steps(model, loss_of, recipe.iterations, [opt], [sched], log_every=log_every, log=log)
