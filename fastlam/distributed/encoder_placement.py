"""Where the frozen encoder lives under DeepSpeed (``distributed.encoder``).

*replicated*: kept out of the engine, run in eval mode under ``no_grad`` on every rank, its
weights saved beside the ZeRO shards. *sharded*: inside the engine, so ZeRO-3 partitions its
weights. It is frozen, so it has no gradients and no optimizer state in either case.
"""
from __future__ import annotations

import torch
from torch import nn


class TrainablePart(nn.Module):
    """The LAM without its frozen encoder, for an engine that must not own (or cast, or shard)
    the encoder: its submodules are the LAM's own, so the LAM's forward on cached ``states``
    runs through them and DeepSpeed's hooks on them."""

    def __init__(self, lam: nn.Module):
        super().__init__()
        for name, child in lam.named_children():
            if name != "encoder":
                self.add_module(name, child)
        self._lam = [lam]  # a list: not registered, so the encoder stays out of parameters()

    def forward(self, states: torch.Tensor):
        return self._lam[0](states=states)

