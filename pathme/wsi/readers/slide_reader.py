"""The slide-reader protocol: one class per backend, each opening one slide and reading pixels in level coordinates.

:class:`~pathme.wsi.slide.Slide` owns what is common to every format (the µm/px policy, the pyramid of level 0,
box checks, one error type); a reader only knows its library. A reader is added by writing one module with a
subclass of :class:`SlideReader` and listing it in :data:`pathme.wsi.readers.READERS` (docs/architecture.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np


class SlideReader(ABC):
    """One open slide, as a backend library sees it.

    ``level_sizes``: (width, height) of each of the reader's levels, level 0 first; ``properties``: metadata under
    OpenSlide-style names (``aperio.MPP``, ``tiff.XResolution``, ``openslide.mpp-x``, ``dicom.PixelSpacing``), which
    the µm/px policy (:mod:`pathme.wsi.mpp`) reads; ``channels``: the colour channels the slide stores, None when
    the format does not say.
    """

    #: the backend's name (``--reader-backend``), what a store records as ``reader_backend``
    name: ClassVar[str]
    #: file suffixes of the formats it opens (lower case), for finding slides in a folder
    suffixes: ClassVar[tuple[str, ...]]

    level_sizes: list[tuple[int, int]]
    properties: dict[str, str]
    channels: int | None = None

    @classmethod
    def opens(cls, path: Path) -> bool:
        """Whether ``path`` has the form of a slide this reader opens (by name only; nothing is read)."""
        return path.is_file() and path.suffix.lower() in cls.suffixes

    @classmethod
    @abstractmethod
    def open(cls, path: Path) -> SlideReader:
        """Open ``path`` and decode one pixel of its finest and of its coarsest level, so a reader that opens a
        file it cannot decode fails here; any exception means this reader cannot read it."""

    @abstractmethod
    def read(self, level: int, x: int, y: int, width: int, height: int, threads: int = 1) -> np.ndarray:
        """(height, width, channels >= 3) uint8 of the reader's ``level`` at level pixel (x, y), RGB first, as the
        library decoded it (no copy for the caller's sake); the box lies inside the level (the caller checks).
        ``threads``: decoding threads the library may use for this box, where it has them."""
