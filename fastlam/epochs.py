"""Epoch-addressed datasets: the wrapper both trainers (:mod:`fastlam.train` and
:mod:`fastlam.train_decoder`) put between a clip dataset and their resumable batch sampler."""
from __future__ import annotations

import torch

__all__ = ["EpochIndexed"]


class EpochIndexed(torch.utils.data.Dataset):
    """Items are addressed by (epoch, index) so every DataLoader worker samples the same
    clip start for a given epoch: resumable and identical with any number of workers."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]
