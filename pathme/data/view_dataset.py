"""Reproducible views of stored regions for PatHME distillation: one region of a store -> its views, per epoch.

Why a per-item generator: views drawn from a generator seeded by (seed, epoch, index) are the same in the main
process and in any DataLoader worker, whatever the worker count, so a run can be repeated and resumed exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pathme.data.distill_dataset import RegionStoreDataset
from pathme.data.views import ViewConfig, make_views

__all__ = ["ViewDataset", "item_generator"]


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose state depends only on (seed, epoch, index), well mixed (no seed + index collisions)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class ViewDataset(Dataset):
    """The views (:func:`make_views`) of each region of a :class:`RegionStoreDataset`, new ones every epoch.

    Call :meth:`set_epoch` before each epoch; DataLoader workers see the new epoch only if they are started
    afresh for it (``persistent_workers=False``, the default).
    """

    def __init__(self, dataset: RegionStoreDataset, config: ViewConfig | None = None, seed: int = 0):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.config = config or ViewConfig()
        self.seed = seed
        self.epoch = 0

    @property
    def region_ids(self) -> list[tuple[str, int]]:
        """(slide id, region index) of each item, as the wrapped dataset lists them."""
        return self.dataset.region_ids

    def set_epoch(self, epoch: int) -> None:
        """Draw the views of ``epoch`` (a count from 0) from now on; call it before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return make_views(self.dataset[index], self.config, item_generator(self.seed, self.epoch, index))
