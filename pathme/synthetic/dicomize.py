"""DICOM WSI series made from slide files with wsidicomizer (the converter of the wsidicom authors), for tests and
benchmarks of the DICOM reader.

wsidicomizer copies an SVS's level-0 JPEG tiles into the series unchanged, so level 0 decodes to the same pixels as
the SVS; the levels it adds (``levels=True``) it encodes itself, as JPEG (lossy). It is a development dependency
(the ``dev`` extra) and needs libjpeg-turbo's TurboJPEG library (Debian's libturbojpeg0:
scripts/install_test_packages.sh).
"""

from __future__ import annotations

from pathlib import Path


def to_dicom(slide: Path, folder: Path, levels: bool = False) -> Path:
    """Convert ``slide`` into a new folder ``folder`` (one instance per level; no label, overview or thumbnail
    image); ``levels`` adds the 2x, 4x, ... reductions the file lacks. Returns ``folder``. ImportError without
    wsidicomizer, FileNotFoundError without the TurboJPEG library."""
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
