"""The µm/px policy: where a slide's level-0 resolution comes from, and when to refuse a slide.

Physical scale defines PatHME's magnifications, so it is never guessed: it comes from the manifest's ``mpp``
column, the Aperio ``MPP`` field, the TIFF resolution tags or OpenSlide's ``openslide.mpp-x/y``, in that
order, and a slide with none of them is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from pathme.wsi.errors import SlideError

logger = logging.getLogger(__name__)

#: micrometres per TIFF resolution unit
_MICRONS_PER_UNIT = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}

#: relative disagreement between stated magnification and µm/px (10 / magnification) that is warned about
MAGNIFICATION_TOLERANCE = 0.2


class MissingMppError(SlideError):
    """The slide states no µm/px and the manifest gives none."""


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _from_resolution_tags(properties: Mapping[str, str]) -> float | None:
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    if unit not in _MICRONS_PER_UNIT:
        return None
    per_unit_x = _positive(properties.get("tiff.XResolution"))
    per_unit_y = _positive(properties.get("tiff.YResolution"))
    if per_unit_x is None or per_unit_y is None:
        return None
    return (_MICRONS_PER_UNIT[unit] / per_unit_x + _MICRONS_PER_UNIT[unit] / per_unit_y) / 2


def _from_openslide(properties: Mapping[str, str]) -> float | None:
    x, y = _positive(properties.get("openslide.mpp-x")), _positive(properties.get("openslide.mpp-y"))
    return (x + y) / 2 if x is not None and y is not None else None


def level0_mpp(properties: Mapping[str, str], override: float | None, slide: str) -> tuple[float, str]:
    """Return (level-0 µm/px, where it came from) or raise :class:`MissingMppError` naming the fix."""
    if override is not None:
        value = _positive(override)
        if value is None:
            raise SlideError(f"slide {slide}: manifest column 'mpp' must be a positive number, got {override!r}")
        return value, "manifest"
    candidates = (
        ("aperio MPP", _positive(properties.get("aperio.MPP"))),
        ("tiff resolution tags", _from_resolution_tags(properties)),
        ("openslide mpp-x/y", _from_openslide(properties)),
    )
    for source, value in candidates:
        if value is not None:
            return value, source
    raise MissingMppError(
        f"slide {slide}: no µm/px in its metadata (no Aperio MPP, TIFF resolution tags or openslide mpp-x/y); "
        "give the level-0 µm/px in the manifest's 'mpp' column (for example 0.25 for 40x, 0.5 for 20x)"
    )


def stated_magnification(properties: Mapping[str, str]) -> float | None:
    """The objective magnification the scanner wrote, if any."""
    return _positive(properties.get("aperio.AppMag")) or _positive(properties.get("openslide.objective-power"))


def check_magnification(mpp: float, magnification: float | None, slide: str) -> bool:
    """Warn when the stated magnification and µm/px disagree (20x is about 0.5 µm/px); True when they agree."""
    if magnification is None:
        return True
    expected = 10.0 / magnification
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
