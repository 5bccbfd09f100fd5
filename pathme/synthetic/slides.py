"""Synthetic multi-level slides written with tifffile, for tests and the demo cohort.

Two container flavours are written, both tiled and readable by cuCIM and OpenSlide:

* ``"tiff"``: a generic pyramidal TIFF whose µm/px lives in the resolution tags (unit: centimetre).
* ``"svs"``: an Aperio-style SVS whose first ImageDescription carries ``AppMag`` and ``MPP``.

Each pyramid level is an area (box) downsample of level 0, so a level's pixels are known exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TILE = 256


def downsample_area(image: np.ndarray | Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Area-resize a uint8 image (gray, RGB or RGBA) to ``size`` = (width, height) with PIL's box filter. A PIL image
    (the array converted once) spares the conversion when one image is resized to several sizes."""
    if isinstance(image, np.ndarray):
        if (image.shape[1], image.shape[0]) == tuple(size):
            return image
        image = Image.fromarray(image)
    return np.asarray(image if image.size == tuple(size) else image.resize(size, Image.Resampling.BOX))


def _aperio_description(width: int, height: int, mpp: float | None, magnification: float | None) -> str:
    fields = [f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) RAW"]
    if magnification is not None:
        fields.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:.4f}")
    fields.append("Filename = synthetic")
    return "|".join(fields)


Render = Callable[[int, int, int, int, int], np.ndarray]  # (level, x, y, width, height) -> that box's pixels


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
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))) or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    sizes = level_sizes((width, height), downsamples)
    source = Image.fromarray(image)  # converted once for all levels
    levels = [image, *(downsample_area(source, size) for size in sizes[1:])]
    del source

    def render(level: int, x: int, y: int, box_width: int, box_height: int) -> np.ndarray:
        return levels[level][y : y + box_height, x : x + box_width]

    channels = image.shape[2] if image.ndim == 3 else 0
    return write_tiled_pyramid(
        path, (width, height), render, mpp, flavour, downsamples, magnification, compression, channels
    )


def level_sizes(size: tuple[int, int], downsamples: Sequence[float]) -> list[tuple[int, int]]:
    """(width, height) of each level: ``round(W / d) x round(H / d)``, at least 1 x 1."""
    if downsamples[0] != 1:
        raise ValueError("the first downsample must be 1 (level 0)")
    return [(max(1, round(size[0] / d)), max(1, round(size[1] / d))) for d in downsamples]


def write_tiled_pyramid(
    path: str | Path,
    size: tuple[int, int],
    render: Render,
    mpp: float | None,
    flavour: str = "tiff",
    downsamples: Sequence[float] = (1, 4, 16),
    magnification: float | None = None,
    compression: str = "zlib",
    channels: int = 3,
) -> list[tuple[int, int]]:
    """Write a tiled multi-level slide of level-0 ``size`` (width, height) whose pixels ``render(level, x, y, w,
    h)`` gives box by box (uint8 [h, w, channels], or [h, w] when ``channels`` is 0), one 256 x 256 tile at a
    time, so a slide larger than memory can be written; returns each level's (width, height). Flavours and
    ``mpp`` as in :func:`write_pyramid`. BigTIFF when level 0 holds more than 2**31 bytes.
    """
    if flavour not in ("tiff", "svs"):
        raise ValueError(f"unknown synthetic slide flavour {flavour!r}: use 'tiff' or 'svs'")
    sizes = level_sizes(size, downsamples)
    width, height = size
    sample = (channels,) if channels else ()
    with tifffile.TiffWriter(path, bigtiff=width * height * max(1, channels) > 2**31) as tif:
        for level, (level_width, level_height) in enumerate(sizes):
            extra: dict = {}
            if flavour == "svs" and level == 0:
                extra["description"] = _aperio_description(width, height, mpp, magnification)
            if flavour == "tiff" and mpp is not None:
                per_cm = 1e4 / (mpp * downsamples[level])
                extra["resolution"] = (per_cm, per_cm)
                extra["resolutionunit"] = "CENTIMETER"

            def tiles(level: int = level, level_width: int = level_width, level_height: int = level_height):
                for y in range(0, level_height, TILE):
                    for x in range(0, level_width, TILE):
                        box = render(level, x, y, min(TILE, level_width - x), min(TILE, level_height - y))
                        tile = np.zeros((TILE, TILE, *sample), np.uint8)  # edge tiles padded
                        tile[: box.shape[0], : box.shape[1]] = box
                        yield tile

            tif.write(
                tiles(),
                shape=(level_height, level_width, *sample),
                dtype=np.uint8,
                photometric="rgb" if channels else "minisblack",
                tile=(TILE, TILE),
                compression=compression,
                subfiletype=0 if level == 0 else 1,
                metadata=None,
                **extra,
            )
    return sizes
