"""Synthetic multi-level slides written with tifffile, for tests and the demo cohort.

Two container flavours are written, both tiled and readable by cuCIM and OpenSlide:

* ``"tiff"``: a generic pyramidal TIFF whose µm/px lives in the resolution tags (unit: centimetre).
* ``"svs"``: an Aperio-style SVS whose first ImageDescription carries ``AppMag`` and ``MPP``.

Each pyramid level is an area (box) downsample of level 0, so a level's pixels are known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TILE = 256


def downsample_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize a uint8 image (gray, RGB or RGBA) to ``size`` = (width, height) with PIL's box filter."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _aperio_description(width: int, height: int, mpp: float | None, magnification: float | None) -> str:
    fields = [f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) RAW"]
    if magnification is not None:
        fields.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:.4f}")
    fields.append("Filename = synthetic")
    return "|".join(fields)


def write_pyramid(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None,
    flavour: str = "tiff",
    downsamples: Sequence[float] = (1, 4, 16),
    magnification: float | None = None,
    compression: str = "zlib",
) -> list[tuple[int, int]]:
    """Write ``image`` as a tiled multi-level slide and return each level's (width, height).

    ``image`` is uint8 RGB (H, W, 3), RGBA (H, W, 4: an RGB TIFF with an alpha sample) or grayscale (H, W: a
    single-channel, min-is-black TIFF). ``downsamples`` need not be powers of two; level ``k`` has size
    ``round(W / d_k) x round(H / d_k)``. ``mpp=None`` writes a slide with no µm/px anywhere (no resolution
    tags, no ``MPP`` field).
    """
    if flavour not in ("tiff", "svs"):
        raise ValueError(f"unknown synthetic slide flavour {flavour!r}: use 'tiff' or 'svs'")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))) or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) uint8 image, got {image.shape} {image.dtype}")
    if downsamples[0] != 1:
        raise ValueError("the first downsample must be 1 (level 0)")
    height, width = image.shape[:2]
    sizes = [(max(1, round(width / d)), max(1, round(height / d))) for d in downsamples]
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for level, size in enumerate(sizes):
            pixels = downsample_area(image, size)
            extra: dict = {}
            if flavour == "svs" and level == 0:
                extra["description"] = _aperio_description(width, height, mpp, magnification)
            if flavour == "tiff" and mpp is not None:
                per_cm = 1e4 / (mpp * downsamples[level])
                extra["resolution"] = (per_cm, per_cm)
                extra["resolutionunit"] = "CENTIMETER"
            tif.write(
                pixels,
                photometric="minisblack" if image.ndim == 2 else "rgb",
                tile=(TILE, TILE),
                compression=compression,
                subfiletype=0 if level == 0 else 1,
                metadata=None,
                **extra,
            )
    return sizes
