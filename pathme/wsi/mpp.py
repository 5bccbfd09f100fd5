"""The µm/px policy: where a slide's level-0 resolution comes from, and when to refuse a slide.

Physical scale defines PatHME's magnifications, so it is never guessed: it comes from the manifest's ``mpp``
column, the Aperio ``MPP`` field, the TIFF resolution tags, a DICOM WSI's pixel spacing (``dicom.PixelSpacing``,
mm per pixel) or OpenSlide's ``openslide.mpp-x/y``, in that order, and a slide with none of them is refused.

A value is only used when it is plausible for a microscope scan (:data:`PLAUSIBLE_MPP`): image software writes
72 or 96 dots per inch into files that were never calibrated (352.8 or 264.6 µm/px), and such a value, taken
at its word, would size a thumbnail in terabytes. A metadata value outside the range is treated as absent, so
the next source is tried and a slide with no plausible value is refused with the same fix as one with none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from pathme.wsi.slide_error import SlideError

logger = logging.getLogger(__name__)

#: micrometres per TIFF resolution unit
_MICRONS_PER_UNIT = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}

#: level-0 µm/px a microscope scan can have. Slide scanners digitise at 0.1-0.25 µm/px (40x-80x) to about
#: 1-2 µm/px (10x-5x); 0.05 is four times finer than the optical resolution of a 0.95 NA objective (about
#: 0.2 µm), 5 µm/px is a 2x overview, not a scan PatHME's 20x tiles could come from.
PLAUSIBLE_MPP = (0.05, 5.0)

#: µm/px times objective magnification by the field's convention: 20x is 0.5 µm/px, 40x 0.25 µm/px
MPP_AT_1X = 10.0

#: relative disagreement between stated magnification and µm/px (10 / magnification) that is warned about
MAGNIFICATION_TOLERANCE = 0.2

#: how much coarser than a target µm/px a slide's level 0 may be and still be read at that target (resampled up by
#: at most this fraction; --mpp-tolerance). Why 5 %: scanners calibrate a nominal magnification only so closely:
#: Aperio 20x scans carry 0.4990-0.5040 µm/px (TCGA), 40x scans 0.2465-0.2631, so a 20x scan may be a little
#: coarser than the 0.5 µm/px of PatHME's 20x tiles. Stretching it by under 5 % changes a 10 µm nucleus by under
#: 0.5 µm, far less than the random-resized-crop scale jitter the DINOv2-style experts (UNI, Virchow2,
#: Prov-GigaPath) were trained with; a 10x scan, or one at 0.75 µm/px, lacks the detail of 20x tiles and is refused.
MPP_TOLERANCE = 0.05

FIX = "give the level-0 µm/px in the manifest's 'mpp' column (for example 0.25 for 40x, 0.5 for 20x)"


class MissingMppError(SlideError):
    """The slide states no plausible µm/px and the manifest gives none."""


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def is_plausible(mpp: float) -> bool:
    """True when ``mpp`` lies in :data:`PLAUSIBLE_MPP`."""
    return PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def _from_resolution_tags(properties: Mapping[str, str]) -> float | None:
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    if unit not in _MICRONS_PER_UNIT:
        return None
    per_unit_x = _positive(properties.get("tiff.XResolution"))
    per_unit_y = _positive(properties.get("tiff.YResolution"))
    if per_unit_x is None or per_unit_y is None:
        return None
    return (_MICRONS_PER_UNIT[unit] / per_unit_x + _MICRONS_PER_UNIT[unit] / per_unit_y) / 2


def _from_dicom_pixel_spacing(properties: Mapping[str, str]) -> float | None:
    """µm/px from a DICOM Pixel Spacing ``row\\column`` in mm (PS3.3 C.7.6.16.2.1)."""
    spacing = [_positive(value) for value in str(properties.get("dicom.PixelSpacing", "")).split("\\")]
    if len(spacing) != 2 or None in spacing:
        return None
    return 1000 * (spacing[0] + spacing[1]) / 2


def _from_openslide(properties: Mapping[str, str]) -> float | None:
    x, y = _positive(properties.get("openslide.mpp-x")), _positive(properties.get("openslide.mpp-y"))
    return (x + y) / 2 if x is not None and y is not None else None


def _range() -> str:
    return f"{PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} µm/px"


def level0_mpp(
    properties: Mapping[str, str], override: float | None, slide: str, override_source: str = "manifest"
) -> tuple[float, str]:
    """Return (level-0 µm/px, where it came from) or raise :class:`MissingMppError` naming the fix.

    ``slide`` names the slide and its file in messages; ``override_source`` says where ``override`` came from. A
    manifest value outside :data:`PLAUSIBLE_MPP` is a :class:`SlideError`; a metadata value outside it is skipped
    (and named if no other source has one).
    """
    if override is not None:
        value = _positive(override)
        if value is None:
            raise SlideError(f"slide {slide}: manifest column 'mpp' must be a positive number, got {override!r}")
        if not is_plausible(value):
            raise SlideError(
                f"slide {slide}: manifest column 'mpp' is {value:g} µm/px, outside the {_range()} of a microscope "
                "scan; correct it (for example 0.25 for 40x, 0.5 for 20x)"
            )
        return value, override_source
    candidates = (
        ("aperio MPP", _positive(properties.get("aperio.MPP"))),
        ("tiff resolution tags", _from_resolution_tags(properties)),
        ("dicom pixel spacing", _from_dicom_pixel_spacing(properties)),
        ("openslide mpp-x/y", _from_openslide(properties)),
    )
    implausible = []
    for source, value in candidates:
        if value is None:
            continue
        if is_plausible(value):
            return value, source
        implausible.append(f"{source} give {value:.4g} µm/px")
    if implausible:
        raise MissingMppError(
            f"slide {slide}: no plausible µm/px in its metadata ({'; '.join(implausible)}: outside the {_range()} "
            f"of a microscope scan, a software default such as 72 dpi rather than the scanner's); {FIX}"
        )
    raise MissingMppError(
        f"slide {slide}: no µm/px in its metadata (no Aperio MPP, TIFF resolution tags, DICOM pixel spacing or "
        f"openslide mpp-x/y); {FIX}"
    )


def stated_magnification(properties: Mapping[str, str]) -> float | None:
    """The objective magnification the scanner wrote, if any."""
    return _positive(properties.get("aperio.AppMag")) or _positive(properties.get("openslide.objective-power"))


def check_magnification(mpp: float, magnification: float | None, slide: str) -> bool:
    """Warn when the stated magnification and µm/px disagree (20x is about 0.5 µm/px); True when they agree."""
    if magnification is None:
        return True
    expected = MPP_AT_1X / magnification
    if abs(mpp / expected - 1) <= MAGNIFICATION_TOLERANCE:
        return True
    logger.warning(
        "slide %s: stated magnification %gx implies about %.3f µm/px but its µm/px is %.4f; µm/px is used",
        slide,
        magnification,
        expected,
        mpp,
    )
    return False
