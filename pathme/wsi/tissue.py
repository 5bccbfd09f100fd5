"""Tissue detection on a low-magnification thumbnail, and the tissue fraction of every tile.

Reference method: Otsu thresholds on each RGB channel and on HSV saturation. A pixel is tissue when it is
more saturated than the saturation threshold and at or below the threshold of at least one colour channel.
Guards keep a blank (white or uniformly grey) slide from being split in two by Otsu: the saturation threshold
is at least ``min_saturation`` and the channel thresholds at most ``max_intensity``. The mask is then closed,
opened, hole-filled and cleared of objects smaller than ``min_area_um2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_objects


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection parameters; all physical sizes are in micrometres."""

    mpp: float = 8.0  # thumbnail resolution (1.25x): an L0 tile is 16 x 16 thumbnail pixels
    min_saturation: float = 0.07  # floor of the HSV saturation threshold, 0..1
    max_intensity: float = 0.9  # ceiling of the RGB channel thresholds, 0..1
    closing_um: float = 32.0  # radius of the closing that joins nearby tissue
    opening_um: float = 16.0  # radius of the opening that removes specks
    min_area_um2: float = 50_000.0  # smallest tissue piece kept (0.05 mm²)
    min_tile_fraction: float = 0.25  # an L0 tile is on tissue when at least this share of it is tissue

    def __post_init__(self) -> None:
        if self.mpp <= 0:
            raise ValueError(f"tissue.mpp must be positive, got {self.mpp}")
        for name in ("min_saturation", "max_intensity", "min_tile_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"tissue.{name} must lie in [0, 1], got {value}")


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an RGB uint8 image (0 for black)."""
    high = rgb.max(axis=-1).astype(np.float32)
    low = rgb.min(axis=-1).astype(np.float32)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def _otsu(values: np.ndarray) -> float:
    return float(threshold_otsu(values)) if values.min() < values.max() else float(values.min())


def tissue_mask(thumbnail: np.ndarray, config: TissueConfig = TissueConfig()) -> np.ndarray:
    """Boolean tissue mask of an (H, W, 3) uint8 thumbnail at ``config.mpp`` µm/px."""
    saturated = saturation(thumbnail)
    mask = saturated > max(_otsu(saturated), config.min_saturation)
    darker = np.zeros_like(mask)
    for channel in range(3):
        values = thumbnail[..., channel]
        darker |= values <= min(_otsu(values), config.max_intensity * 255)
    mask &= darker
    closing = max(1, round(config.closing_um / config.mpp))
    opening = max(1, round(config.opening_um / config.mpp))
    mask = ndimage.binary_closing(mask, structure=disk(closing), border_value=0)
    mask = ndimage.binary_opening(mask, structure=disk(opening))
    mask = ndimage.binary_fill_holes(mask)
    min_pixels = config.min_area_um2 / config.mpp**2
    return remove_small_objects(mask, max_size=max(0, int(min_pixels) - 1))


def box_fractions(mask: np.ndarray, boxes: np.ndarray, scale: float) -> np.ndarray:
    """Tissue fraction of each level-0 box (x, y, w, h); ``scale`` = mask pixels per level-0 pixel.

    Boxes are rounded to whole mask pixels; the part of a box outside the mask counts as background.
    """
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    height, width = mask.shape
    x0 = np.clip(np.rint(boxes[:, 0] * scale).astype(int), 0, width)
    y0 = np.clip(np.rint(boxes[:, 1] * scale).astype(int), 0, height)
    x1 = np.clip(np.rint((boxes[:, 0] + boxes[:, 2]) * scale).astype(int), 0, width)
    y1 = np.clip(np.rint((boxes[:, 1] + boxes[:, 3]) * scale).astype(int), 0, height)
    area = np.maximum(np.rint(boxes[:, 2] * scale) * np.rint(boxes[:, 3] * scale), 1)
    counts = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return counts / area
