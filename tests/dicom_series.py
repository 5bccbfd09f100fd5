"""DICOM WSI series made at test time from slide files, with wsidicomizer (the converter of the wsidicom authors).

wsidicomizer copies an SVS's level-0 JPEG tiles into the series unchanged, so level 0 decodes to the same pixels
as the SVS; the levels it adds (``levels=True``) it encodes itself, as JPEG (lossy). It needs libjpeg-turbo's
TurboJPEG library (Debian's libturbojpeg0, installed by scripts/install_test_packages.sh); without it the tests
that need a series skip and say so.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pydicom
import pytest


def to_dicom(slide: Path, folder: Path, levels: bool = False) -> Path:
    """Convert ``slide`` into a new folder ``folder`` (one instance per level; no label, overview or thumbnail
    image); ``levels`` adds the 2x, 4x, ... reductions the file lacks. Returns ``folder``."""
    if ctypes.util.find_library("turbojpeg") is None:
        pytest.skip("libturbojpeg is not installed: sudo scripts/install_test_packages.sh")
    from wsidicomizer import WsiDicomizer

    folder.mkdir(parents=True)
    WsiDicomizer.convert(
        slide,
        folder,
        add_missing_levels=levels,
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
        workers=1,
    )
    return folder


def rewrite(folder: Path, change) -> None:
    """Apply ``change(dataset)`` to every instance of a series and save it in place."""
    for path in sorted(folder.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        change(dataset)
        dataset.save_as(path)
