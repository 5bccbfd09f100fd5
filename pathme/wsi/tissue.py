"""Tissue detection on a low-magnification thumbnail, pen ink, and the tissue fraction of every tile.

Reference method: Otsu thresholds on each RGB channel and on HSV saturation. A pixel is tissue when it is
more saturated than the saturation threshold and at or below the threshold of at least one colour channel.
Guards keep a blank (white or uniformly grey) slide from being split in two by Otsu: the saturation threshold
is at least ``min_saturation`` and the channel thresholds at most ``max_intensity``. The mask is then closed,
opened, hole-filled and cleared of objects smaller than ``min_area_um2`` (or, on a slide smaller than that
area allows for, than ``min_area_fraction`` of the slide, so a small crop keeps its tissue).

Pen ink (:func:`ink_mask`) is found first and kept out of everything: out of the Otsu thresholds (saturated
blue ink would otherwise lift the saturation threshold above pale tissue) and, with a margin for the blended
edge of a stroke, out of the mask. Ink is a colour H&E does not take at thumbnail scale (8 µm/px, where
nuclei and stroma average out): green or cyan (hue 80-170°), saturated and not dark blue (hue 195-245°; the
purple of hematoxylin-dense tissue lies at 250-300°, and dark pixels are left alone whatever their hue), or
near-black with little colour (hematoxylin-dense tissue is dark but saturated). Patches smaller than
``min_ink_area_um2`` are never ink (a marker stroke is millimetres long). Where this fails: ink over tissue
takes that tissue with it; blue-black markers as dark as dense nuclei, and red markers (eosin's colour), are
kept as tissue; black pigment (melanin, anthracosis) on little colour reads as black ink; unusually blue
hematoxylin may read as blue ink.
The preview shows what was rejected as ink; ``ink=False`` turns the rejection off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_objects

#: HSV bounds of pen ink at thumbnail scale: hue in degrees, saturation and value in [0, 1]
GREEN_INK_HUE, GREEN_INK_SATURATION = (80.0, 170.0), 0.25
BLUE_INK_HUE, BLUE_INK_SATURATION, BLUE_INK_VALUE = (195.0, 245.0), 0.35, 0.3
BLACK_INK_VALUE, BLACK_INK_SATURATION = 0.3, 0.25


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection parameters; all physical sizes are in micrometres."""

    mpp: float = 8.0  # thumbnail resolution (1.25x): an L0 tile is 16 x 16 thumbnail pixels
    min_saturation: float = 0.07  # floor of the HSV saturation threshold, 0..1
    max_intensity: float = 0.9  # ceiling of the RGB channel thresholds, 0..1
    closing_um: float = 32.0  # radius of the closing that joins nearby tissue
    opening_um: float = 16.0  # radius of the opening that removes specks
    min_area_um2: float = 50_000.0  # smallest tissue piece kept (0.05 mm²) ...
    min_area_fraction: float = 0.05  # ... or this share of the slide's area, where that is smaller
    min_tile_fraction: float = 0.25  # an L0 tile is on tissue when at least this share of it is tissue
    ink: bool = True  # find pen ink and keep it out of the tissue
    min_ink_area_um2: float = 20_000.0  # smallest patch of ink colour taken for ink (0.02 mm²)
    ink_margin_um: float = 16.0  # the blended edge of a stroke, kept out of the tissue with the ink

    def __post_init__(self) -> None:
        if self.mpp <= 0:
            raise ValueError(f"tissue.mpp must be positive, got {self.mpp}")
        for name in ("min_saturation", "max_intensity", "min_tile_fraction", "min_area_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"tissue.{name} must lie in [0, 1], got {value}")


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an RGB uint8 image (0 for black)."""
    high = rgb.max(axis=-1).astype(np.float32)
    low = rgb.min(axis=-1).astype(np.float32)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def _otsu(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    return float(threshold_otsu(values)) if values.min() < values.max() else float(values.min())


def _pixels(config: TissueConfig, area_um2: float) -> int:
    return int(area_um2 / config.mpp**2)


def ink_mask(thumbnail: np.ndarray, config: TissueConfig = TissueConfig()) -> np.ndarray:
    """Boolean mask of blue, green and black pen ink on an (H, W, 3) uint8 thumbnail at ``config.mpp`` µm/px
    (all False when ``config.ink`` is off); the colour bounds are the module's constants."""
    if not config.ink or thumbnail.size == 0:
        return np.zeros(thumbnail.shape[:2], dtype=bool)
    hsv = rgb2hsv(thumbnail)
    hue, sat, value = hsv[..., 0] * 360, hsv[..., 1], hsv[..., 2]
    green = (hue >= GREEN_INK_HUE[0]) & (hue <= GREEN_INK_HUE[1]) & (sat >= GREEN_INK_SATURATION)
    blue = (hue >= BLUE_INK_HUE[0]) & (hue <= BLUE_INK_HUE[1]) & (sat >= BLUE_INK_SATURATION)
    black = (value <= BLACK_INK_VALUE) & (sat <= BLACK_INK_SATURATION)
    ink = green | (blue & (value >= BLUE_INK_VALUE)) | black
    return remove_small_objects(ink, max_size=max(0, _pixels(config, config.min_ink_area_um2) - 1))


def tissue_mask(
    thumbnail: np.ndarray, config: TissueConfig = TissueConfig(), ink: np.ndarray | None = None
) -> np.ndarray:
    """Boolean tissue mask of an (H, W, 3) uint8 thumbnail at ``config.mpp`` µm/px, with ``ink`` (default:
    :func:`ink_mask`) and its margin left out."""
    ink = ink_mask(thumbnail, config) if ink is None else ink
    clean = ~ink
    saturated = saturation(thumbnail)
    mask = saturated > max(_otsu(saturated[clean]), config.min_saturation)
    darker = np.zeros_like(mask)
    for channel in range(3):
        values = thumbnail[..., channel]
        darker |= values <= min(_otsu(values[clean]), config.max_intensity * 255)
    mask &= darker & clean
    closing = max(1, round(config.closing_um / config.mpp))
    opening = max(1, round(config.opening_um / config.mpp))
    padded = np.pad(mask, closing, mode="edge")  # tissue cut by the slide's edge stays tissue up to that edge
    mask = ndimage.binary_closing(padded, structure=disk(closing))[closing:-closing, closing:-closing]
    mask = ndimage.binary_opening(mask, structure=disk(opening))
    mask = ndimage.binary_fill_holes(mask)
    if ink.any():
        margin = max(1, round(config.ink_margin_um / config.mpp))
        mask &= ~ndimage.binary_dilation(ink, structure=disk(margin))
    min_pixels = min(_pixels(config, config.min_area_um2), config.min_area_fraction * mask.size)
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
