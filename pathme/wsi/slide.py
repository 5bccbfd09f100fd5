"""Opening a whole-slide image through MONAI's ``WSIReader`` (cuCIM by default, OpenSlide when configured).

There is no silent fallback between backends: the backend that opened a slide is logged and recorded in
:attr:`Slide.backend`, and a slide that the configured backend cannot open is an error naming the file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from monai.data import WSIReader

from pathme.wsi.backends import BACKENDS
from pathme.wsi.errors import SlideError
from pathme.wsi.mpp import check_magnification, level0_mpp, stated_magnification

logger = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _check_tiff_integrity(path: Path, slide_id: str) -> None:
    """Refuse a TIFF whose tiles point past the end of the file (a truncated copy or download)."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic not in _TIFF_MAGIC:
        return
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True) if n]
                if ends and max(ends) > size:
                    raise SlideError(
                        f"slide {slide_id}: {path} is truncated: image {index} needs {max(ends)} bytes, "
                        f"the file has {size}; copy or download it again"
                    )
    except SlideError:
        raise
    except Exception as error:  # tifffile raises many types for damaged headers
        raise SlideError(f"slide {slide_id}: {path} is a damaged TIFF ({error}); copy or download it again") from error


def _cucim_properties(metadata: Mapping) -> dict[str, str]:
    """Flatten cuCIM metadata into OpenSlide-style property names, so one µm/px policy serves both."""
    properties = {f"aperio.{key}": str(value) for key, value in metadata.get("aperio", {}).items()}
    tiff = metadata.get("tiff", {})
    for ours, theirs in (
        ("tiff.XResolution", "x_resolution"),
        ("tiff.YResolution", "y_resolution"),
        ("tiff.ResolutionUnit", "resolution_unit"),
    ):
        if theirs in tiff:
            properties[ours] = str(tiff[theirs])
    return properties


@dataclass
class Slide:
    """An open slide: level geometry, level-0 µm/px with its source, and pixel reads in level coordinates."""

    path: Path
    slide_id: str
    backend: str
    mpp: float
    mpp_source: str
    magnification: float | None
    level_sizes: list[tuple[int, int]]  # (width, height) per level
    _reader: WSIReader = field(repr=False)
    _handle: object = field(repr=False)

    @classmethod
    def open(
        cls,
        path: str | Path,
        backend: str = "cucim",
        mpp: float | None = None,
        slide_id: str | None = None,
    ) -> Slide:
        """Open ``path`` with ``backend``; ``mpp`` (level-0 µm/px) overrides the slide's metadata."""
        path = Path(path)
        slide_id = slide_id or path.stem
        if backend not in BACKENDS:
            raise ValueError(f"unknown reader backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if not path.is_file():
            raise SlideError(f"slide {slide_id}: file not found: {path}")
        _check_tiff_integrity(path, slide_id)
        reader = WSIReader(backend=backend, channel_dim=-1)
        try:
            handle = reader.read(str(path))
            level_count = reader.get_level_count(handle)
            level_sizes = [reader.get_size(handle, level)[::-1] for level in range(level_count)]
        except Exception as error:
            raise SlideError(
                f"slide {slide_id}: {path} cannot be opened as a slide by {backend} ({type(error).__name__}: {error})"
            ) from error
        properties = _cucim_properties(handle.metadata) if backend == "cucim" else dict(handle.properties)
        level0, source = level0_mpp(properties, mpp, f"{slide_id} ({path})")
        magnification = stated_magnification(properties)
        check_magnification(level0, magnification, slide_id)
        logger.info("slide %s: opened with %s, %.4f µm/px from %s", slide_id, backend, level0, source)
        slide = cls(path, slide_id, backend, level0, source, magnification, level_sizes, reader, handle)
        slide.read_level(len(level_sizes) - 1, 0, 0, 1, 1)  # a first decode, so unreadable pixels fail here
        return slide

    @property
    def size(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_sizes[0]

    def level_scale(self, level: int) -> tuple[float, float]:
        """Level-0 pixels per level pixel along x and y, from the stored sizes (need not be powers of two)."""
        width, height = self.level_sizes[level]
        return self.size[0] / width, self.size[1] / height

    def level_mpp(self, level: int) -> float:
        """µm/px of a level (the coarser of its two axes)."""
        return self.mpp * max(self.level_scale(level))

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read (height, width, 3) uint8 RGB from ``level`` at level pixel (x, y); the box must lie inside it.

        Backends map a level-0 location to level pixels differently: cuCIM floors it, OpenSlide resamples at
        the fractional position. Where the level's downsample is an integer the location is exact and both
        return the stored pixels; otherwise it is placed just past the level pixel's start, which cuCIM
        floors to that pixel and OpenSlide interpolates (up to one pixel of blur at such levels).
        """
        level_width, level_height = self.level_sizes[level]
        if x < 0 or y < 0 or width <= 0 or height <= 0 or x + width > level_width or y + height > level_height:
            raise ValueError(
                f"slide {self.slide_id}: box ({x}, {y}, {width}, {height}) is outside level {level} "
                f"of size {level_width} x {level_height}"
            )
        x0, y0 = self._level0_location(level, x), self._level0_location(level, y)
        try:
            patch, _ = self._reader.get_data(self._handle, location=(y0, x0), size=(height, width), level=level)
        except Exception as error:
            raise SlideError(
                f"slide {self.slide_id}: reading {self.path} at level {level} failed "
                f"({type(error).__name__}: {error}); the file may be damaged"
            ) from error
        return np.ascontiguousarray(np.asarray(patch, dtype=np.uint8)[..., :3])

    def _level0_location(self, level: int, coordinate: int) -> int:
        ratio = self._reader.get_downsample_ratio(self._handle, level)
        if abs(ratio - round(ratio)) < 1e-9:
            return coordinate * round(ratio)
        return math.ceil(coordinate * ratio + 1e-3)
