"""What a store knows about its slide, written and read in this one place.

Every stage after extraction (tokens, bags, heatmaps, evaluation and prediction, the Deploy app) takes the slide's
file, size, level-0 µm/px, reader and region geometry from the store through :class:`SlideProvenance`, never
from its own defaults: a slide whose µm/px came from the manifest, or that only OpenSlide decodes, is read again
exactly as it was at extraction, and only if it still is the file extraction read (same fingerprint and size).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathme.store.digests import slide_fingerprint
from pathme.store.validate import read_store_attrs

if TYPE_CHECKING:
    from pathme.wsi.slide import Slide


@dataclass(frozen=True)
class SlideProvenance:
    """The slide behind a store: ids, file and its fingerprint, level-0 geometry and µm/px, reader, and why it has
    no region."""

    slide_id: str
    patient_id: str
    slide_path: Path  # absolute
    slide_size: tuple[int, int]  # level-0 (width, height) in pixels
    slide_digest: str  # the file's fingerprint at extraction (pathme.store.digests.slide_fingerprint)
    mpp: float  # level-0 µm/px
    mpp_source: str
    reader_backend: str  # the reader that decoded it (pathme.wsi.readers.READERS)
    region_extent: float  # region side in level-0 pixels
    reader_note: str = ""
    no_region_reason: str = ""
    resampling: str = ""  # how the 20x tiles were resampled from a level 0 a little coarser than 0.5 µm/px

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> SlideProvenance:
        """From a store's attributes (as :func:`~pathme.store.validate_store` or :func:`read_store_attrs` give)."""
        width, height = attrs["slide_size"]
        return cls(
            slide_id=str(attrs["slide_id"]),
            patient_id=str(attrs["patient_id"]),
            slide_path=Path(str(attrs["slide_path"])),
            slide_size=(int(width), int(height)),
            slide_digest=str(attrs["slide_digest"]),
            mpp=float(attrs["mpp"]),
            mpp_source=str(attrs["mpp_source"]),
            reader_backend=str(attrs["reader_backend"]),
            region_extent=float(attrs["region_extent"]),
            reader_note=str(attrs.get("reader_note", "")),
            no_region_reason=str(attrs.get("no_region_reason", "")),
            resampling=str(attrs.get("resampling", "")),
        )

    def open_slide(self) -> Slide:
        """The slide image, opened as at extraction: the same file, reader and µm/px. SlideError when it is gone,
        can no longer be read, or is no longer the file extraction read: its fingerprint (``slide_digest``) or its
        level-0 size differs from the store's (another image saved under its name, a re-scan), so the store's
        coordinates would place nothing where it belongs; the message gives what the file holds now."""
        from pathme.wsi.slide import Slide  # here, so reading a store's provenance does not load MONAI
        from pathme.wsi.slide_error import SlideError

        if self.slide_path.exists():
            try:
                changed = slide_fingerprint(self.slide_path) != self.slide_digest
            except OSError as error:
                raise SlideError(f"slide {self.slide_id}: {self.slide_path} cannot be read ({error})") from error
            if changed:
                raise SlideError(self._changed("its fingerprint differs from the store's"))
        source = f"its store ({self.mpp_source})"
        slide = Slide.open(self.slide_path, self.reader_backend, self.mpp, self.slide_id, mpp_source=source)
        if slide.size != self.slide_size:
            raise SlideError(self._changed("same fingerprint, other level-0 size"))
        return slide

    def _changed(self, how: str) -> str:
        """Why the slide is not the one extraction read, with what it holds now (opened as a new slide)."""
        from pathme.wsi.slide import Slide
        from pathme.wsi.slide_error import SlideError

        then = f"{self.slide_size[0]} x {self.slide_size[1]} px at {self.mpp:.3f} µm/px in its store"
        try:
            slide = Slide.open(self.slide_path, self.reader_backend, None, self.slide_id)
            now = f"level-0 {slide.size[0]} x {slide.size[1]} px at {slide.mpp:.3f} µm/px now, {then}"
        except SlideError as error:
            now = f"it does not open as a slide now ({error}); {then}"
        return (
            f"slide {self.slide_id}: {self.slide_path} changed since extraction ({how}; {now}): the store's "
            "coordinates do not fit it; re-extract the slide (pathme extract redoes it) to use the new file"
        )


def read_provenance(path: str | os.PathLike[str]) -> SlideProvenance:
    """The provenance of the store at ``path`` (attributes only; StoreError when it cannot be read)."""
    return SlideProvenance.from_attrs(read_store_attrs(path))


def slide_attrs(slide: Slide, patient_id: str, no_region_reason: str = "", resampling: str = "") -> dict[str, object]:
    """The provenance attributes extraction writes for ``slide`` (see :data:`~pathme.store.schema.REQUIRED_ATTRS`
    and :data:`~pathme.store.schema.OPTIONAL_ATTRS`); the geometry the writer derives from size and µm/px."""
    attrs: dict[str, object] = {
        "slide_id": slide.slide_id,
        "patient_id": patient_id,
        "slide_path": str(slide.path.absolute()),
        "slide_size": list(slide.size),
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "reader_backend": slide.backend,
    }
    optional = {"reader_note": slide.reader_note, "no_region_reason": no_region_reason, "resampling": resampling}
    return attrs | {name: value for name, value in optional.items() if value}
