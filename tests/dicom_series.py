"""DICOM WSI series made at test time (:mod:`pathme.synthetic.dicomize`), and series changed in place; without the
TurboJPEG library wsidicomizer needs (scripts/install_test_packages.sh) the tests that need a series skip and say
so."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pydicom
import pytest

from pathme.synthetic import dicomize


def to_dicom(slide: Path, folder: Path, levels: bool = False) -> Path:
    """:func:`pathme.synthetic.dicomize.to_dicom`, skipping the test where the TurboJPEG library is missing."""
    if ctypes.util.find_library("turbojpeg") is None:
        pytest.skip("libturbojpeg is not installed: sudo scripts/install_test_packages.sh")
    return dicomize.to_dicom(slide, folder, levels)


def rewrite(folder: Path, change) -> None:
    """Apply ``change(dataset)`` to every instance of a series and save it in place."""
    for path in sorted(folder.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        change(dataset)
        dataset.save_as(path)


def drop_pixel_spacing(dataset: pydicom.Dataset) -> None:
    """A :func:`rewrite` change: the instance loses its Pixel Spacing (Shared Functional Groups, Pixel Measures)."""
    for group in dataset.SharedFunctionalGroupsSequence:
        for measures in group.PixelMeasuresSequence:
            del measures.PixelSpacing


def make_ct(dataset: pydicom.Dataset) -> None:
    """A :func:`rewrite` change: the instance claims to be a CT image (no whole-slide image)."""
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
