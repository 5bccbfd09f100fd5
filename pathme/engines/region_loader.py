"""Reading regions ahead of the encoders: a map-style dataset over one slide's planned regions.

DataLoader workers each open the slide themselves (a slide handle is not shared across processes) and read
whole regions once (:func:`pathme.wsi.tiles.read_region_tiles`), so decoding overlaps encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from pathme.wsi.mpp import MPP_TOLERANCE
from pathme.wsi.regions import Region
from pathme.wsi.slide import Slide
from pathme.wsi.tiles import read_region_tiles


@dataclass(frozen=True)
class SlideSource:
    """How to open a slide again in another process."""

    path: Path
    slide_id: str
    backend: str
    mpp: float | None
    mpp_tolerance: float = MPP_TOLERANCE
    decode_threads: int = 1  # threads each reading process decodes and resamples a region on

    def open(self) -> Slide:
        """Open the slide with its backend, µm/px override, tolerance and decode threads; raises SlideError naming the
        file if it is unreadable."""
        return Slide.open(
            self.path,
            backend=self.backend,
            mpp=self.mpp,
            slide_id=self.slide_id,
            mpp_tolerance=self.mpp_tolerance,
            decode_threads=self.decode_threads,
        )


def tile_validity(region: Region) -> np.ndarray:
    """Validity of the 273 stacked tiles; the L2 tile of an existing region is always valid."""
    return np.concatenate([region.valid_l0, region.valid_l1, [True]])


class RegionDataset(Dataset):
    """Item ``i``: the index and the stacked uint8 tiles [273, 256, 256, 3] of the slide's i-th planned region."""

    def __init__(self, source: SlideSource, regions: list[Region]) -> None:
        self.source = source
        self.regions = regions
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.regions)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        if self._slide is None:  # first item of this process: its slide handle
            if get_worker_info() is not None and self.source.decode_threads > 1:  # OpenCV on its decode threads too
                cv2.setNumThreads(self.source.decode_threads)  # only here: see pathme.wsi.resize on fork
            self._slide = self.source.open()
        return index, torch.from_numpy(read_region_tiles(self._slide, self.regions[index]).stack)


def region_loader(dataset: RegionDataset, num_workers: int, pin_memory: bool) -> DataLoader:
    """Regions in order, one per item, read by ``num_workers`` processes ahead of the consumer."""
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,
    )
