"""DICOM WSI (VL Whole Slide Microscopy Image Storage) through ``wsidicom``, a folder of instances per slide.

Why wsidicom and not OpenSlide 4, which also opens DICOM WSI (measured with scripts/bench_dicom.py, docs/benchmarks.md
"DICOM WSI"): on series made by wsidicomizer, whose level 0 holds the SVS's own JPEG tiles and whose levels 1-4 it
encodes itself, OpenSlide 4.0.1 returned level 0 to the bit but levels 1-4 with wrong colours (green and blue near
127: a mean error of 77 grey levels against the area average of level 0, where wsidicom's is 1-4) or failed on them
("Dimensional mismatch reading JPEG"); and it read a 4096² px region of level 0 3.9x slower than wsidicom. wsidicom
also opens a DICOMDIR or DICOMweb as one slide. So a DICOM series is read by wsidicom only.

Level-0 µm/px comes from the pixel spacing of the base level (Pixel Measures Sequence, in mm), written as
``dicom.PixelSpacing`` for the µm/px policy. A series without it is refused (:class:`~pathme.wsi.mpp.MissingMppError`,
even with a manifest ``mpp``: wsidicom cannot place the levels of such a series). A series that is not a whole-slide
image, holds more than one pyramid (several scanned regions) or stores samples other than 8-bit is refused with the
folder's name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pathme.gpu_libraries import import_image_codecs_quietly
from pathme.wsi.mpp import MissingMppError
from pathme.wsi.readers.slide_reader import SlideReader

#: SOP Class UID of VL Whole Slide Microscopy Image Storage
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


class _LibraryDeprecations(logging.Filter):
    """Drops pydicom's notices that an API is deprecated (``get_frame_offsets``, which wsidicom's DICOMweb client
    calls on every frame index): they are for those libraries' authors, not for someone reading a slide, and pydicom
    logs them at WARNING besides raising a DeprecationWarning."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a deprecation notice."""
        return "is deprecated and will be removed" not in record.getMessage()


_PYDICOM_DEPRECATIONS = _LibraryDeprecations()


def dicom_instances(folder: Path) -> list[Path]:
    """The ``.dcm`` files of a folder, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")


def is_dicom_series(path: Path) -> bool:
    """Whether ``path`` is a folder holding DICOM instances (``.dcm``): the form a DICOM WSI series takes."""
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def wsi_series(folder: Path) -> dict[str, list[Path]]:
    """Series Instance UID -> the VL Whole Slide Microscopy instances of that series among a folder's ``.dcm`` files
    (read to their headers), for each series that holds a pyramid level (Image Type VOLUME): a series of only a label
    or overview image is no slide. Files pydicom cannot read, and instances of other kinds, are left out: the reader
    refuses them when it opens the folder."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[Path]] = {}
    volumes = set()
    tags = ["SOPClassUID", "SeriesInstanceUID", "ImageType"]
    for path in dicom_instances(folder):
        try:
            header = dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except (InvalidDicomError, OSError, EOFError):
            continue
        if str(header.get("SOPClassUID", "")) == WSI_SOP_CLASS and "SeriesInstanceUID" in header:
            uid = str(header.SeriesInstanceUID)
            series.setdefault(uid, []).append(path)
            if "VOLUME" in list(header.get("ImageType", []))[2:3]:
                volumes.add(uid)
    return {uid: instances for uid, instances in series.items() if uid in volumes}


def _pixel_spacing(dataset: object) -> object:
    """The Pixel Spacing of an instance's shared Pixel Measures, None when it has none."""
    for group in getattr(dataset, "SharedFunctionalGroupsSequence", []):
        for measures in getattr(group, "PixelMeasuresSequence", []):
            if "PixelSpacing" in measures:
                return measures.PixelSpacing
    return None


class DicomWsiReader(SlideReader):
    """A DICOM WSI series (a folder of ``.dcm`` instances) opened with ``wsidicom.WsiDicom``."""

    name = "wsidicom"
    suffixes = ()  # a series is a folder (opens)

    def __init__(self, wsi: object) -> None:
        self._wsi = wsi
        self._levels = list(wsi.levels)
        self.level_sizes = [(level.size.width, level.size.height) for level in self._levels]
        base = self._levels[0].default_instance.dataset
        spacing = self._levels[0].pixel_spacing
        self.properties = {"dicom.SOPClassUID": str(base.SOPClassUID)}
        if spacing is not None:  # mm per pixel, written as DICOM's Pixel Spacing: row spacing \ column spacing
            self.properties["dicom.PixelSpacing"] = f"{spacing.height}\\{spacing.width}"
        self.channels = int(base.SamplesPerPixel)
        if int(base.BitsAllocated) != 8:
            raise ValueError(f"{base.BitsAllocated}-bit samples; pathme reads 8-bit slides")

    @classmethod
    def opens(cls, path: Path) -> bool:
        """A folder holding ``.dcm`` instances."""
        return is_dicom_series(path)

    @classmethod
    def open(cls, path: Path) -> DicomWsiReader:
        """Open the series in the folder ``path``. ValueError when no instance is a VL Whole Slide Microscopy
        image, when it holds several pyramids or samples that are not 8-bit; MissingMppError when it states no
        pixel spacing; wsidicom's own errors for what it cannot read."""
        from pydicom import dcmread

        if _PYDICOM_DEPRECATIONS not in logging.getLogger("pydicom").filters:
            logging.getLogger("pydicom").addFilter(_PYDICOM_DEPRECATIONS)
        import_image_codecs_quietly()  # wsidicom imports nvImageCodec, which reports missing GPU codecs on a CPU
        from wsidicom import WsiDicom

        if not is_dicom_series(path):
            raise ValueError("not a folder of DICOM instances (.dcm)")
        headers = [dcmread(f, stop_before_pixels=True) for f in dicom_instances(path)]
        classes = {str(header.SOPClassUID) for header in headers}
        if WSI_SOP_CLASS not in classes:
            raise ValueError(
                f"no VL Whole Slide Microscopy image in the series (SOP classes {', '.join(sorted(classes))})"
            )
        if not any(_pixel_spacing(header) for header in headers):
            raise MissingMppError(
                f"{path}: the series states no pixel spacing (Shared Functional Groups, Pixel Measures), without "
                "which no DICOM reader places its levels; export it again with its pixel spacing from the scanner "
                "or archive"
            )
        wsi = WsiDicom.open(path)
        if len(wsi.pyramids) > 1:
            raise ValueError(f"{len(wsi.pyramids)} pyramids (scanned regions) in one series; give one per slide")
        opened = cls(wsi)
        for level in sorted({0, len(opened.level_sizes) - 1}):
            opened.read(level, 0, 0, 1, 1)
        return opened

    def read(self, level: int, x: int, y: int, width: int, height: int, threads: int = 1) -> np.ndarray:
        """(height, width, 3) uint8 RGB at level pixel (x, y), as wsidicom decodes and stitches the frames (on
        ``threads`` threads)."""
        image = self._wsi.read_region((x, y), self._levels[level].level, (width, height), threads=threads)
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
