"""Opening a whole-slide image with one of the readers of :mod:`pathme.wsi.readers` (cuCIM, OpenSlide, wsidicom), or
``auto``: the first reader of the slide's format that decodes it.

A slide is a file (SVS, TIFF, NDPI, ...) or a folder (a DICOM WSI series; a ``.dcm`` instance stands for its
folder). What a TIFF holds is checked before a reader decodes it (:mod:`pathme.wsi.tiff_layout`): one main image,
8-bit samples, and, before every read, whole compressed tiles; only the reader's levels that reduce level 0 are used.

With ``auto`` a slide that the first reader cannot open or decode is read with the next; that is never silent: the
reader that did the decoding is :attr:`Slide.backend` (what a store records) and :attr:`Slide.reader_note` says
why a reader was passed over. A slide that no reader can decode is an error naming each reader tried and its
reason; "damaged" is said only when the file is (a TIFF whose tiles point past its end, or whose header does not
parse).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathme.wsi.mpp import MPP_TOLERANCE, check_magnification, level0_mpp, stated_magnification
from pathme.wsi.readers import AUTO, SlideReader, readers_for, slide_name, slide_path
from pathme.wsi.slide_error import SlideError
from pathme.wsi.tiff_layout import TiffLayout, inspect_tiff, is_level_of

logger = logging.getLogger(__name__)


def _pyramid(level_sizes: list[tuple[int, int]], slide_id: str) -> list[int]:
    """The reader's level numbers that form level 0's pyramid: each a reduction of level 0 by one factor along both
    axes and smaller than the level before. OpenSlide lists every tiled image of a generic TIFF as a level, so an
    image of another aspect ratio (a second scene's reduced images, a stray overview) is left out, with a warning."""
    kept = [0]
    for level, size in enumerate(level_sizes[1:], start=1):
        previous = level_sizes[kept[-1]]
        if is_level_of(size, level_sizes[0]) and size[0] < previous[0] and size[1] < previous[1]:
            kept.append(level)
        else:
            logger.warning(
                "slide %s: reader level %d (%d x %d px) is not a reduction of level 0 (%d x %d px); not used",
                slide_id,
                level,
                *size,
                *level_sizes[0],
            )
    return kept


def _unreadable(slide_id: str, path: Path, backend: str, failures: Mapping[str, str]) -> SlideError:
    tried = "; ".join(f"{name}: {why}" for name, why in failures.items())
    if backend == AUTO:
        fix = "convert it to a format these readers decode (e.g. a tiled pyramidal TIFF with JPEG tiles)"
    else:
        fix = f"try reader backend '{AUTO}', which tries every reader of the slide's format"
    return SlideError(
        f"slide {slide_id}: {path} cannot be opened as a slide by {' or '.join(failures)} ({tried}); {fix}"
    )


@dataclass
class Slide:
    """An open slide: level geometry, level-0 µm/px with its source, and pixel reads in level coordinates."""

    path: Path
    slide_id: str
    backend: str  # the reader that decodes it (cucim, openslide, wsidicom), never auto
    mpp: float
    mpp_source: str
    magnification: float | None
    level_sizes: list[tuple[int, int]]  # (width, height) per level of level 0's pyramid
    _reader: SlideReader = field(repr=False)
    _levels: list[int] = field(repr=False)  # the reader's level number of each level
    channels: int | None = None  # colour channels the file stores (1: grayscale), None when the format does not say
    reader_note: str = ""  # why ``auto`` passed over a reader ("" when the first one read it)
    mpp_tolerance: float = MPP_TOLERANCE  # how much coarser than a target µm/px level 0 may be and be read at it
    _tiff: TiffLayout | None = field(default=None, repr=False)  # a TIFF's images, for tile checks before decoding
    decode_threads: int = 1  # threads the reader may decode one box on (cuCIM, wsidicom; OpenSlide has none)

    @classmethod
    def open(
        cls,
        path: str | Path,
        backend: str = AUTO,
        mpp: float | None = None,
        slide_id: str | None = None,
        mpp_source: str = "manifest",
        mpp_tolerance: float = MPP_TOLERANCE,
        decode_threads: int = 1,
    ) -> Slide:
        """Open ``path`` (a slide file or a DICOM WSI folder) with ``backend`` (``auto`` or a reader's name);
        ``mpp`` (level-0 µm/px, from ``mpp_source``) overrides the slide's metadata; ``mpp_tolerance`` (a fraction,
        see :data:`~pathme.wsi.mpp.MPP_TOLERANCE`) is how much coarser than a target µm/px level 0 may be and still
        be read at it; ``decode_threads`` is how many threads the reader may decode one box on. A TIFF is inspected
        first (:func:`~pathme.wsi.tiff_layout.inspect_tiff`), and levels that are not reductions of level 0 are not
        used. Raises SlideError naming the file (missing, damaged, several scenes, not 8-bit, undecodable, no
        plausible µm/px) and ValueError for an unknown backend, a negative tolerance or no decode thread."""
        path = slide_path(path)
        slide_id = slide_id or slide_name(path)
        if not path.exists():
            raise SlideError(f"slide {slide_id}: file not found: {path}")
        readers = readers_for(backend, path)
        if not 0 <= mpp_tolerance < 1:
            raise ValueError(f"mpp_tolerance must be a fraction in [0, 1), got {mpp_tolerance}")
        if decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {decode_threads}")
        tiff = inspect_tiff(path, slide_id) if path.is_file() else None
        failures: dict[str, str] = {}
        for reader_class in readers:
            name = reader_class.name
            try:
                reader = reader_class.open(path)
            except SlideError as error:  # the reader refuses the slide itself (e.g. a DICOM series without spacing)
                raise type(error)(f"slide {slide_id}: {error}") from error
            except Exception as error:  # readers raise RuntimeError, OpenSlideError, ValueError, ...
                failures[name] = f"{type(error).__name__}: {error}"
                continue
            level_sizes, properties = reader.level_sizes, reader.properties
            note = "; ".join(f"{other} cannot decode it ({why})" for other, why in failures.items())
            if note:
                note = f"{note}; read with {name}"
                logger.warning("slide %s: %s", slide_id, note)
            elif backend not in (AUTO, name):  # the named reader does not open this form: said, not warned about
                note = f"{backend} does not open a slide of this form; read with {name}"
                logger.info("slide %s: %s", slide_id, note)
            level0, source = level0_mpp(properties, mpp, f"{slide_id} ({path})", mpp_source)
            magnification = stated_magnification(properties)
            check_magnification(level0, magnification, slide_id)
            logger.info("slide %s: opened with %s, %.4f µm/px from %s", slide_id, name, level0, source)
            levels = _pyramid(level_sizes, slide_id)
            return cls(
                path,
                slide_id,
                name,
                level0,
                source,
                magnification,
                [level_sizes[level] for level in levels],
                reader,
                levels,
                channels=tiff.channels if tiff else reader.channels,
                reader_note=note,
                mpp_tolerance=mpp_tolerance,
                _tiff=tiff,
                decode_threads=decode_threads,
            )
        raise _unreadable(slide_id, path, backend, failures)

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
        """Read (height, width, 3) uint8 RGB from ``level`` at level pixel (x, y); the box must lie inside it (how
        each backend places a box on a level whose downsample is not an integer: :mod:`pathme.wsi.readers.monai_wsi`).
        The array is what the reader decoded, not copied: a strided view of its RGB channels when it decodes RGBA.

        Raises SlideError naming the slide and tile when a tile under the box is not a whole compressed image (checked
        before decoding, so no reader turns it into black), or naming the box when the reader fails to decode it.
        """
        level_width, level_height = self.level_sizes[level]
        if x < 0 or y < 0 or width <= 0 or height <= 0 or x + width > level_width or y + height > level_height:
            raise ValueError(
                f"slide {self.slide_id}: box ({x}, {y}, {width}, {height}) is outside level {level} "
                f"of size {level_width} x {level_height}"
            )
        if self._tiff is not None:
            self._tiff.check_tiles(level, self.level_sizes[level], x, y, width, height)
        try:
            patch = self._reader.read(self._levels[level], x, y, width, height, self.decode_threads)
        except Exception as error:
            raise SlideError(
                f"slide {self.slide_id}: {self.backend} cannot decode {self.path} at level {level}, box "
                f"({x}, {y}, {width}, {height}) ({type(error).__name__}: {error})"
            ) from error
        return patch[..., :3]
