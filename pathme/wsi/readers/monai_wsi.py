"""cuCIM and OpenSlide, each opened through MONAI's ``WSIReader`` (the reader MONAI's own pathology transforms use).

Pixels are read from the library's own handle rather than through ``WSIReader.get_data``, whose channel handling
(``np.take`` of the RGB channels) copies every patch: a quarter of a second for the 8,192² px box of a 40x region.
cuCIM decodes a box's tiles on ``threads`` threads of its own (``num_workers``); OpenSlide has no such option, and
its RGBA is made RGB in one contiguous copy (MONAI's ``convert("RGB")`` drops alpha the same way).

Backends map a level-0 location to level pixels differently: cuCIM floors it, OpenSlide resamples at the fractional
position. Where a level's downsample is an integer the location is exact and both return the stored pixels;
otherwise it is placed just past the level pixel's start, which cuCIM floors to that pixel and OpenSlide
interpolates (up to one pixel of blur at such levels).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np

from pathme.gpu_libraries import quiet_first_cucim_open
from pathme.wsi.readers.slide_reader import SlideReader

#: the TIFF-based formats both libraries open (Aperio .svs, TIFF, Hamamatsu .ndpi and .vms, MIRAX .mrxs, Leica
#: .scn, Ventana .bif, Sakura .svslide)
TIFF_LIKE = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide")


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


class MonaiSlideReader(SlideReader):
    """A slide opened by MONAI's ``WSIReader`` with the backend :attr:`name`."""

    def __init__(self, reader: object, handle: object) -> None:
        self._reader, self._handle = reader, handle
        self.level_sizes = [reader.get_size(handle, level)[::-1] for level in range(reader.get_level_count(handle))]
        self.properties = self._properties(handle)

    @staticmethod
    def _properties(handle: object) -> dict[str, str]:
        return dict(handle.properties)

    @classmethod
    def open(cls, path: Path) -> MonaiSlideReader:
        """Open the file with MONAI's ``WSIReader(backend=name)``; the library's errors when it cannot."""
        from monai.data import WSIReader  # MONAI's import is slow: only when a slide is opened

        with quiet_first_cucim_open() if cls.name == "cucim" else nullcontext():  # cuFile's "no CUDA driver" lines
            reader = WSIReader(backend=cls.name, channel_dim=-1)
            opened = cls(reader, reader.read(str(path)))
        for level in sorted({0, len(opened.level_sizes) - 1}):
            opened.read(level, 0, 0, 1, 1)
        return opened

    def read(self, level: int, x: int, y: int, width: int, height: int, threads: int = 1) -> np.ndarray:
        """(height, width, channels) uint8 at level pixel (x, y), placed on level 0 as the module docstring says."""
        x0, y0 = self._level0_location(level, x), self._level0_location(level, y)
        return self._read_region(level, x0, y0, width, height, threads)

    @abstractmethod
    def _read_region(self, level: int, x0: int, y0: int, width: int, height: int, threads: int) -> np.ndarray:
        """The library's decode of the box of ``level`` whose top-left is level-0 pixel (x0, y0)."""

    def _level0_location(self, level: int, coordinate: int) -> int:
        ratio = self._reader.get_downsample_ratio(self._handle, level)
        if abs(ratio - round(ratio)) < 1e-9:
            return coordinate * round(ratio)
        return math.ceil(coordinate * ratio + 1e-3)


class CuCIMReader(MonaiSlideReader):
    """cuCIM (``cucim.CuImage``): TIFF-based formats, the GPU-capable decoder."""

    name = "cucim"
    suffixes = (".svs", ".tif", ".tiff")

    @staticmethod
    def _properties(handle: object) -> dict[str, str]:
        return _cucim_properties(handle.metadata)

    def _read_region(self, level: int, x0: int, y0: int, width: int, height: int, threads: int) -> np.ndarray:
        # num_workers 0 decodes in the calling thread, with no pool (what MONAI asked for); a pool only for threads > 1
        workers = threads if threads > 1 else 0
        region = self._handle.read_region(location=(x0, y0), size=(width, height), level=level, num_workers=workers)
        return np.asarray(region)  # the decoded buffer itself (array interface), RGB


class OpenSlideReader(MonaiSlideReader):
    """OpenSlide: every TIFF-based vendor format (its DICOM support is not used: see :mod:`.dicom`)."""

    name = "openslide"
    suffixes = TIFF_LIKE

    def _read_region(self, level: int, x0: int, y0: int, width: int, height: int, threads: int) -> np.ndarray:
        rgba = np.asarray(self._handle.read_region((x0, y0), level, (width, height)))
        # alpha dropped in one contiguous copy: strided RGB views of RGBA made every later step several times slower
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
