"""The slide manifest: ``slide_id, path[, mpp][, patient_id]``, validated before any slide is opened.

Slide ids name output files, so they must be unique and safe as file names. Relative paths are resolved
against the manifest's own folder, so a cohort folder can be moved as a whole, and made absolute, so the stores
that record them lead back to the slide from any working directory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pathme.tables import read_text_csv
from pathme.wsi.readers import slide_path

REQUIRED = ("slide_id", "path")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the row and the fix."""


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a manifest: its id, file (or DICOM WSI folder; a ``.dcm`` instance is read as its folder),
    patient and µm/px override (None: read from the file)."""

    slide_id: str
    path: Path
    patient_id: str
    mpp: float | None = None


def _mpp(value: object, where: str) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ManifestError(f"{where}: column 'mpp' must be a positive number of µm per pixel, got {value!r}")
    return number


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a manifest CSV; every problem is reported with the file and its row number."""
    path = Path(path)
    table = read_text_csv(path, "manifest", ManifestError, "give the path of the slide manifest CSV")
    missing = [column for column in REQUIRED if column not in table.columns]
    if missing:
        raise ManifestError(
            f"manifest {path}: missing column(s) {', '.join(missing)}; "
            f"expected a header with slide_id, path and optionally mpp, patient_id (found: {', '.join(table.columns)})"
        )
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(table.to_dict("records")):
        line = index + 2  # 1-based, after the header
        slide_id = str(record["slide_id"]).strip()
        where = f"manifest {path}, row {line} (slide_id {slide_id!r})"
        if not SAFE_ID.fullmatch(slide_id):
            raise ManifestError(
                f"{where}: slide_id must be 1-128 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, because it names output files"
            )
        if slide_id in seen:
            raise ManifestError(f"{where}: duplicate slide_id, first used in row {seen[slide_id]}")
        seen[slide_id] = line
        if not str(record["path"]).strip():
            raise ManifestError(f"{where}: column 'path' is empty")
        slide = Path(str(record["path"]).strip()).expanduser()
        if not slide.is_absolute():
            slide = path.parent.absolute() / slide
        patient_id = str(record.get("patient_id", "")).strip() or slide_id
        rows.append(ManifestRow(slide_id, slide_path(slide), patient_id, _mpp(record.get("mpp"), where)))
    if not rows:
        raise ManifestError(f"manifest {path}: no slides listed")
    return rows
