"""Slide maps (tissue mask, attention) as 2-D NIfTI images that carry their physical spacing and place.

A map of shape [H, W] whose pixel covers ``downsample`` x ``downsample`` level-0 pixels, starting at the slide's
level-0 corner (0, 0) (the thumbnail of :func:`pathme.wsi.reading.read_thumbnail` and the tissue mask on it, the
cell grid of :attr:`pathme.viz.heatmap.AttentionMap.grid`), is written so that MONAI (``LoadImage``, its spatial
transforms, MONAI Label) and medical viewers place it on the slide in micrometres, and two maps of one slide at
different resolutions overlay where they belong.

Conventions (NIfTI-1 header format, https://nifti.nimh.nih.gov/nifti-1; checked with nibabel, MONAI's
``LoadImage`` and SimpleITK):

- Axes: voxel index i is the slide's x (map column), j its y (map row); the data is stored as [W, H] (the map
  transposed), so i runs fastest on disk like the rows of a PNG and viewers show the map upright (ITK reads an
  identity direction matrix, as for a PNG, and ``GetArrayFromImage`` gives the [H, W] map back).
  ``LoadImage(image_only=True)`` gives a [W, H] MetaTensor; ``.T`` of it is the [H, W] map.
- Units: ``xyzt_units`` says micrometres, so the affine's numbers and ``pixdim`` are µm (``mpp * downsample``
  in both axes). Viewers that work in millimetres (ITK, 3D Slicer) convert them.
- World frame: NIfTI's world is RAS+; the affine maps voxel (i, j) to the world position of the voxel's
  **centre**: (-x, -y, 0) µm, where (x, y) is that centre in level-0 µm from the slide's top-left corner
  (pixel (0, 0) is centred at x = y = ``mpp * downsample / 2``). In LPS+ terms (ITK, DICOM) the world position
  is simply (x, y, 0) µm: axis codes ``('L', 'P', 'S')`` (``nibabel.aff2axcodes``), which viewers display with
  x to the right and y downwards, as on the slide; ``monai.transforms.Orientation(axcodes="LP")`` leaves the
  data as it is.
  The third affine column has the in-plane spacing, so the one slice is a cube of that side.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from pathme.store.atomic import write_atomic

#: qform/sform code of the maps: coordinates aligned to the slide, not to a scanner or a template
_ALIGNED = 2


def map_affine(mpp: float, downsample: float) -> np.ndarray:
    """The [4, 4] NIfTI affine (RAS+ µm, see the module docstring) of a map with ``downsample`` level-0 px per map
    pixel on a slide of ``mpp`` level-0 µm/px. Raises ValueError unless both are positive and finite."""
    if not (np.isfinite(mpp) and mpp > 0 and np.isfinite(downsample) and downsample > 0):
        raise ValueError(f"mpp and downsample must be positive, got {mpp} µm/px and {downsample} level-0 px per pixel")
    spacing = float(mpp) * float(downsample)
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:2, 3] = -spacing / 2  # the centre of pixel (0, 0), half a pixel from the slide's corner
    return affine


def write_map_nifti(path: str | Path, values: np.ndarray, mpp: float, downsample: float, description: str = "") -> Path:
    """Write the [H, W] map ``values`` as a gzipped 2-D NIfTI-1 image at ``path`` (``.nii.gz``), atomically, with
    the affine of :func:`map_affine` and units of micrometres; returns ``path``.

    Boolean maps are stored as uint8 0/1, other dtypes as they are. ``description`` (ASCII, at most 79
    characters) goes into the header's ``descrip``. Raises ValueError for a map that is not 2-D or empty, and
    for ``mpp`` or ``downsample`` that are not positive.
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"a map must be 2-D [H, W] and not empty, got shape {values.shape}")
    if values.dtype == bool:
        values = values.astype(np.uint8)
    affine = map_affine(mpp, downsample)
    image = nib.Nifti1Image(values.T, affine)  # [W, H]: i = x, j = y
    image.header.set_xyzt_units(xyz="micron")
    image.set_qform(affine, code=_ALIGNED)
    image.set_sform(affine, code=_ALIGNED)
    image.header["descrip"] = description.encode("ascii")
    return write_atomic(path, lambda temp: _write_gzipped(image, temp))


def _write_gzipped(image: nib.Nifti1Image, path: Path) -> None:
    """``image`` gzipped into ``path`` whatever its suffix, with neither a file name nor a time in the gzip
    header, so the same map always gives the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as file:
        image.to_stream(file)
