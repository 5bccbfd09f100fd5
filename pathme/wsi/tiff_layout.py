"""What a TIFF slide holds, read from its image directories before any reader decodes a pixel.

Why pathme reads the directories itself (with tifffile) rather than trusting the readers: OpenSlide's generic TIFF
driver lists every tiled image of a file as a level of the first one, so a second scene's reduced images enter the
first scene's pyramid; neither OpenSlide nor cuCIM says that a file holds a second main image; samples other than
8-bit are cast to 8 bits without a word; and cuCIM decodes a tile that is not a JPEG stream as black, leaving only
a libjpeg line on stderr. So a slide file is checked when it is opened (:func:`inspect_tiff`) and every tile is
checked for a whole compressed stream just before it is decoded (:meth:`TiffLayout.check_tiles`); what pathme
cannot represent is refused with a :class:`~pathme.wsi.slide_error.SlideError` naming the file and the fix.

The *main image* is the largest tiled image; its levels are the smaller tiled images it can be reduced to
(:func:`is_level_of`). Another tiled image that is not flagged reduced-resolution (TIFF NewSubfileType bit 0), not a
level and not much smaller (:data:`SCENE_AREA`) is a second main image: a second scene, or a second plane (a focal
plane or channel) of the first one's size. Scanners store labels,
macros and thumbnails as stripped or small images, so they are neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from pathme.wsi.slide_error import SlideError

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SINGLE_CHANNEL = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
_REDUCED = 1  # NewSubfileType bit 0: a reduced-resolution version of another image
_SAMPLES = (1, 3, 4)  # gray, RGB, RGBA
_COLOURS = (*_SINGLE_CHANNEL, tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR, tifffile.PHOTOMETRIC.PALETTE)

#: (first bytes, last bytes) of the streams each compression's tiles must hold: JPEG's start- and end-of-image
#: markers; a JPEG 2000 codestream's start-of-codestream and end-of-codestream (Aperio's 33003 and 33005)
STREAM_MARKERS = {
    tifffile.COMPRESSION.JPEG: (b"\xff\xd8", b"\xff\xd9"),
    33003: (b"\xff\x4f", b"\xff\xd9"),
    33005: (b"\xff\x4f", b"\xff\xd9"),
}
#: a full-resolution tiled image at least 1/SCENE_AREA of the main image's area, and not a level of it, is a second
#: main image; smaller ones are overviews and labels some formats store tiled
SCENE_AREA = 100
#: bytes at the end of a tile searched for the end marker (encoders may pad a stream to an even length)
TAIL_BYTES = 8


def is_level_of(size: tuple[int, int], level0: tuple[int, int]) -> bool:
    """True when an image of ``size`` (width, height) can be ``level0`` reduced by one factor along both axes, to
    within a pixel of rounding (or 1 %, for large images whose writers rounded tile-wise)."""
    (width, height), (width0, height0) = size, level0
    if width > width0 or height > height0 or width < 1 or height < 1:
        return False
    low, high = 0.0, math.inf
    for side, side0 in ((width, width0), (height, height0)):
        slack = max(1.0, 0.01 * side)
        low = max(low, side0 / (side + slack))
        high = min(high, side0 / (side - slack) if side > slack else math.inf)
    return low <= high


@dataclass(frozen=True)
class TiledLevel:
    """One tiled image of the main pyramid: its tile grid and where each tile's bytes lie in the file."""

    size: tuple[int, int]  # (width, height) in pixels
    tile: tuple[int, int]  # (width, height) of a tile
    offsets: np.ndarray = field(repr=False)  # [tiles] int64 byte offset of each tile, row by row
    counts: np.ndarray = field(repr=False)  # [tiles] int64 byte count (0: a tile the writer left out)
    markers: tuple[bytes, bytes] | None = None  # the stream markers its compression must show, if checked

    @property
    def across(self) -> int:
        """Tiles per row."""
        return -(-self.size[0] // self.tile[0])


@dataclass
class TiffLayout:
    """A TIFF slide's main image: its colour channels and, by (width, height), the tiled images of its pyramid."""

    path: Path
    slide_id: str
    channels: int  # 1 for grayscale, 3 otherwise
    levels: dict[tuple[int, int], TiledLevel]
    _bytes: np.memmap | None = field(default=None, repr=False)

    def check_tiles(self, level: int, size: tuple[int, int], x: int, y: int, width: int, height: int) -> None:
        """Raise SlideError naming the first tile under the box (level pixels ``x, y, width, height`` of the level of
        ``size``, numbered ``level`` in the message) whose bytes are not a whole stream of its compression, before any
        reader decodes it; levels that are not tiled images of this file, or whose compression has no stream markers
        here, are not checked."""
        tiled = self.levels.get(tuple(size))
        if tiled is None or tiled.markers is None or width <= 0 or height <= 0:
            return
        tile_w, tile_h = tiled.tile
        cols = np.arange(x // tile_w, (x + width - 1) // tile_w + 1)
        rows = np.arange(y // tile_h, (y + height - 1) // tile_h + 1)
        index = (rows[:, None] * tiled.across + cols[None, :]).ravel()
        index = index[index < len(tiled.offsets)]
        counts = tiled.counts[index]
        index, counts = index[counts > 0], counts[counts > 0]  # tiles left out are the reader's business
        if not len(index):
            return
        head_marker, tail_marker = tiled.markers
        data = self._file_bytes()
        starts = tiled.offsets[index]
        heads = data[starts[:, None] + np.arange(len(head_marker))]
        tail_len = np.minimum(counts, TAIL_BYTES)
        window = np.maximum(starts + counts - TAIL_BYTES, starts)[:, None] + np.arange(TAIL_BYTES)
        tails = data[np.minimum(window, len(data) - 1)]  # a tile shorter than the window: masked below
        head_ok = (heads == np.frombuffer(head_marker, np.uint8)).all(axis=1)
        pairs = (tails[:, :-1] == tail_marker[0]) & (tails[:, 1:] == tail_marker[1])
        pairs &= np.arange(1, TAIL_BYTES)[None, :] < tail_len[:, None]
        bad = np.flatnonzero(~(head_ok & pairs.any(axis=1)))
        if bad.size:
            first = int(bad[0])
            self._refuse(level, tiled, int(index[first]), bytes(heads[first]), bool(head_ok[first]), len(bad))

    def _file_bytes(self) -> np.memmap:
        if self._bytes is None:  # mapped once per process, on the first check
            self._bytes = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._bytes

    def _refuse(self, level: int, tiled: TiledLevel, index: int, head: bytes, head_ok: bool, bad: int) -> None:
        row, col = divmod(index, tiled.across)
        x0, y0 = col * tiled.tile[0], row * tiled.tile[1]
        what = (
            f"ends before its end marker {tiled.markers[1].hex(' ')}"
            if head_ok
            else (f"starts with {head.hex(' ')}, not the start marker {tiled.markers[0].hex(' ')}")
        )
        more = f" ({bad} tiles of the read are)" if bad > 1 else ""
        raise SlideError(
            f"slide {self.slide_id}: tile column {col}, row {row} of level {level} (level px x {x0}-"
            f"{x0 + tiled.tile[0]}, y {y0}-{y0 + tiled.tile[1]}) of {self.path} is not a whole compressed image: its "
            f"stream {what}{more}; the file is damaged there and a reader would decode it as black or noise: "
            "export or scan the slide again, or leave it out"
        )


def _page_problem(page: tifffile.TiffPage) -> str | None:
    """Why pathme cannot represent the pixels of a main-image page, or None."""
    if page.sampleformat != tifffile.SAMPLEFORMAT.UINT or page.bitspersample != 8:
        kind = {tifffile.SAMPLEFORMAT.IEEEFP: "floating-point", tifffile.SAMPLEFORMAT.INT: "signed"}.get(
            page.sampleformat, "unsigned"
        )
        return (
            f"it stores {page.bitspersample}-bit {kind} samples, and pathme's experts take 8-bit bright-field RGB "
            "(a higher bit depth is usually a fluorescence or multiplex scan); convert it to 8-bit RGB only if it is "
            "an H&E scan, or leave it out"
        )
    if page.photometric not in _COLOURS:
        return (
            f"it stores {page.photometric.name} pixels (pathme reads gray, RGB, YCbCr or palette colour, as "
            "bright-field scanners write); export it as RGB, or leave it out"
        )
    if page.samplesperpixel not in _SAMPLES:
        return (
            f"it stores {page.samplesperpixel} samples per pixel (pathme reads gray, RGB or RGBA), a multichannel "
            "image no H&E expert takes; leave it out or export it as RGB"
        )
    return None


def _reduces(page: tifffile.TiffPage, level0: tuple[int, int]) -> bool:
    """Whether ``page`` is a smaller image level 0 reduces to (an image of level 0's size is another plane)."""
    width, height = page.imagewidth, page.imagelength
    return width < level0[0] and height < level0[1] and is_level_of((width, height), level0)


def _area(page: tifffile.TiffPage) -> int:
    return page.imagewidth * page.imagelength


def _tiled_level(page: tifffile.TiffPage) -> TiledLevel:
    return TiledLevel(
        size=(page.imagewidth, page.imagelength),
        tile=(page.tilewidth, page.tilelength),
        offsets=np.asarray(page.dataoffsets, dtype=np.int64),
        counts=np.asarray(page.databytecounts, dtype=np.int64),
        markers=STREAM_MARKERS.get(page.compression),
    )


def inspect_tiff(path: Path, slide_id: str) -> TiffLayout | None:
    """The layout of a TIFF slide (SVS, generic TIFF, NDPI, ...), None for another format.

    Raises SlideError naming the file when tiles point past its end (a truncated copy), when its header does not
    parse, when it holds more than one main image (scenes; one slide file must be one section's pyramid), and when
    its main image stores samples that are not 8-bit unsigned, not gray, RGB or RGBA, or in a colour space other than
    gray, RGB, YCbCr or palette (CMYK, CIELAB, raw sensor data).
    """
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic not in _TIFF_MAGIC:
        return None
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            for index, page in enumerate(pages):
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True) if n]
                if ends and max(ends) > size:
                    raise SlideError(
                        f"slide {slide_id}: {path} is truncated: image {index} needs {max(ends)} bytes, "
                        f"the file has {size}; copy or download it again"
                    )
            tiled = [page for page in pages if page.is_tiled]
            main = max(tiled or pages, key=_area)
            level0 = (main.imagewidth, main.imagelength)
            levels = [page for page in tiled if page is main or _reduces(page, level0)]
            others = [
                page
                for page in tiled
                if page not in levels and not page.subfiletype & _REDUCED and _area(page) * SCENE_AREA >= _area(main)
            ]
            if others:
                sizes = ", ".join(f"{p.imagewidth} x {p.imagelength}" for p in pages if p is main or p in others)
                raise SlideError(
                    f"slide {slide_id}: {path} holds {len(others) + 1} main images (scenes, sections or planes: "
                    f"{sizes} px) and pathme reads one per slide file; export each scene as a file of its own (e.g. "
                    "with bfconvert -series, QuPath or vips) and list each in the manifest"
                )
            problem = next((p for p in map(_page_problem, [main, *levels]) if p), None)
            if problem:
                raise SlideError(f"slide {slide_id}: {path}: {problem}")
            channels = 1 if main.photometric in _SINGLE_CHANNEL else 3
            return TiffLayout(path, slide_id, channels, {level.size: level for level in map(_tiled_level, levels)})
    except SlideError:
        raise
    except Exception as error:  # tifffile raises many types for damaged headers
        raise SlideError(f"slide {slide_id}: {path} is a damaged TIFF ({error}); copy or download it again") from error
