"""Slide readers, one class per backend (:class:`~.slide_reader.SlideReader`), and the ``auto`` choice.

``auto`` tries, in the order of :data:`READERS`, each reader whose :meth:`~SlideReader.opens` accepts the slide's
form: cuCIM then OpenSlide for a TIFF-based file, wsidicom for a DICOM WSI folder. Importing this
package imports no reader library; each reader imports its own when it opens a slide.
"""

from __future__ import annotations

from pathlib import Path

from pathme.wsi.readers.dicom import DicomWsiReader, dicom_instances, is_dicom_series
from pathme.wsi.readers.monai_wsi import CuCIMReader, OpenSlideReader
from pathme.wsi.readers.slide_reader import SlideReader

#: the readers by backend name, in the order ``auto`` tries them
READERS: dict[str, type[SlideReader]] = {cls.name: cls for cls in (CuCIMReader, DicomWsiReader, OpenSlideReader)}
AUTO = "auto"
BACKENDS = (AUTO, *READERS)
#: file suffixes of the slide formats these readers open: what a folder of slides (Deploy input, GDC download) is
#: searched for, besides DICOM series folders
SLIDE_SUFFIXES = tuple(dict.fromkeys(s for cls in READERS.values() for s in cls.suffixes))


def readers_for(backend: str, path: Path) -> tuple[type[SlideReader], ...]:
    """The readers to try, in order, for a configured backend and a slide; ValueError for an unknown backend.

    A named backend is a choice among the readers of a slide's form: a slide it does not open but others do (a DICOM
    WSI folder under ``openslide``, as the Deploy app configures) is read as under ``auto``; the store records the
    reader that did."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown reader backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    fitting = tuple(cls for cls in READERS.values() if cls.opens(path))
    if backend != AUTO and (READERS[backend] in fitting or not fitting):
        return (READERS[backend],)
    return fitting or tuple(READERS.values())


def is_slide(path: Path) -> bool:
    """Whether ``path`` is a slide file of a known format or a DICOM WSI series folder."""
    return (path.is_file() and path.suffix.lower() in SLIDE_SUFFIXES) or is_dicom_series(path)


def slide_path(path: str | Path) -> Path:
    """The slide a path names: a DICOM instance (``.dcm``) stands for the series folder it lies in."""
    path = Path(path)
    return path.parent if path.is_file() and path.suffix.lower() == ".dcm" else path


def slide_name(path: Path) -> str:
    """A slide's default id: a file's name without its extension (``TCGA-XX.svs`` -> ``TCGA-XX``), a series folder's
    whole name (DICOM folders are often named by a UID, whose dots are no extension)."""
    return path.name if path.is_dir() else path.stem


def slide_files(path: Path) -> list[Path]:
    """The files a slide's pixels are read from: the file itself, or a series folder's ``.dcm`` instances (what its
    fingerprint and size cover; other files in the folder, such as a DICOMDIR, do not count)."""
    return dicom_instances(path) if is_dicom_series(path) else [path]


__all__ = [
    "AUTO",
    "BACKENDS",
    "READERS",
    "SLIDE_SUFFIXES",
    "SlideReader",
    "is_slide",
    "readers_for",
    "slide_files",
    "slide_name",
    "slide_path",
]
