"""A cohort from GDC downloads: ``manifest.csv`` and label files from TCGA slides and the GDC clinical TSV.

The GDC Data Portal and ``gdc-client`` put each slide in a folder named by its file UUID, under a file name
that starts with the TCGA barcode (``TCGA-A1-A0SB-01Z-00-DX1.<uuid>.svs``); the clinical TSV of a cart
(``clinical.tsv``) has one or more rows per case, with ``'--`` for no value. It comes in two layouts, both read:
before 2025 its columns were bare property names (``case_submitter_id``, ``vital_status``, ``days_to_death``,
``days_to_last_follow_up``); since the GDC's Data Release 42 and Data Portal 2.4.0 (January-March 2025) they carry
the node they belong to (``cases.submitter_id``, ``demographic.vital_status``, ``demographic.days_to_death``,
``diagnoses.days_to_last_follow_up``, ``follow_ups.days_to_follow_up``), with a row per diagnosis and follow-up.
A column is found by its name, else as ``<node>.<name>``; the patient's follow-up time is the largest of those
diagnosis and follow-up days, as the GDC advises for DR42
(https://docs.gdc.cancer.gov/Data/Release_Notes/Data_Release_Notes/).
The patient is the barcode's first 12 characters (project, tissue source site, participant), per the TCGA
barcode reference (https://docs.gdc.cancer.gov/Encyclopedia/pages/TCGA_Barcode/). Diagnostic slides are the
formalin-fixed ones, ``DX`` in the barcode's slide field; frozen sections (``TS``, ``BS``) are not used.

Every slide file is mapped or named with why it cannot be: not a TCGA barcode, not a diagnostic slide, a second
copy of a slide, a patient the clinical file does not have. Such slides stop the build (a cohort silently
smaller than the download misleads), unless ``drop_unmapped`` writes them to ``unmapped.csv`` instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pathme.store.atomic import write_csv_atomic
from pathme.tables import read_text_csv
from pathme.wsi.readers import SLIDE_SUFFIXES

logger = logging.getLogger(__name__)

#: project-TSS-participant, then sample type + vial, portion + analyte, and the slide field (DX1, TS1, BS1, ...)
BARCODE = re.compile(r"^(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-\d{2}[A-Z]-\d{2}-(?P<slide>[A-Z]{2}[A-Z0-9]*)$")
GDC_MISSING = frozenset({"", "'--", "--", "na", "nan", "not reported", "unknown", "[not available]"})
VITAL_STATUS, DAYS_TO_DEATH = "vital_status", "days_to_death"
#: follow-up days: per diagnosis (both layouts), and per follow-up (2025 layout, optional); the largest is the last
DAYS_TO_LAST_FOLLOW_UP, DAYS_TO_FOLLOW_UP = "days_to_last_follow_up", "days_to_follow_up"
#: the nodes of ``<node>.<name>`` columns (2025 layout), in the order a name under several of them is taken from
NODES = ("cases", "demographic", "diagnoses", "follow_ups")
RENAMED = {"case_submitter_id": "cases.submitter_id"}  # old name -> 2025 name, where more than a prefix changed
#: since DR42 a TCGA case may have several diagnoses; the GDC marks the primary one (its help desk, quoted in
#: https://github.com/BioinformaticsFMRP/TCGAbiolinks/issues/644): diagnosis values come from it when it is marked
PRIMARY_DIAGNOSIS_FLAG = "diagnoses.diagnosis_is_primary_disease"
LAYOUTS = "by its name (GDC before 2025) or as <node>.<name> (since 2025, e.g. demographic.vital_status)"
SHOWN = 10  # unmapped slides named in an error


class GDCError(ValueError):
    """Downloads or a clinical file that cannot make a cohort; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class GDCCohort:
    """What was written: the manifest, one labels CSV per task, and the slides left out (with why)."""

    manifest: Path
    labels: dict[str, Path]
    slides: int
    patients: int
    unmapped: pd.DataFrame = field(repr=False)


def _slide_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise GDCError(f"GDC download folder {folder}: not a folder; give the folder gdc-client downloaded into")
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in SLIDE_SUFFIXES and path.is_file())


def _missing(value: str) -> bool:
    return value.strip().lower() in GDC_MISSING


def _find_column(columns: list[str], name: str, path: Path) -> str | None:
    """The column that is ``name``: itself, else ``<node>.<name>`` (``case_submitter_id``: ``cases.submitter_id``),
    from the first of NODES when several nodes have it; None when there is none."""
    if name in columns:
        return name

    def rank(column: str) -> int:
        node = column.split(".")[0]
        return NODES.index(node) if node in NODES else len(NODES)

    prefixed = [column for column in columns if column == RENAMED.get(name) or column.endswith(f".{name}")]
    ranked = sorted((rank(column), column) for column in prefixed)
    if len(ranked) > 1 and ranked[0][0] == ranked[1][0]:
        raise GDCError(
            f"clinical file {path}: {name!r} is in several columns {[column for _, column in ranked]}; "
            "name the one to use with --patient-column / --label-column"
        )
    return ranked[0][1] if ranked else None


def _days(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("-inf")


def _primary_diagnosis_rows(group: pd.DataFrame) -> pd.DataFrame:
    """A patient's rows of its primary diagnosis when the file marks one (2025 layout), else all its rows."""
    if PRIMARY_DIAGNOSIS_FLAG not in group.columns:
        return group
    primary = group[group[PRIMARY_DIAGNOSIS_FLAG].str.strip().str.lower() == "true"]
    return primary if len(primary) else group


def read_clinical(
    path: Path,
    columns: list[str],
    patient_column: str,
    largest: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> pd.DataFrame:
    """One row per patient of the clinical TSV with ``columns`` ('' for no value), each found in either layout;
    GDCError when a column not ``optional`` is absent or one patient's rows disagree on a value (clinical.tsv
    repeats a case once per treatment or diagnosis). ``largest`` columns found as ``<node>.<name>`` take the
    patient's largest value instead: the 2025 layout's rows per diagnosis and follow-up differ by design. Other
    ``diagnoses.*`` values come from the primary diagnosis's rows when ``diagnosis_is_primary_disease`` marks one
    (days to last follow-up stay the largest over every diagnosis: the patient was seen alive then)."""
    raw = read_text_csv(path, "clinical file", GDCError, "download the cart's clinical TSV from the GDC portal", "\t")
    found = {name: _find_column(list(raw.columns), name, path) for name in [patient_column, *columns]}
    absent = [name for name, column in found.items() if column is None and name not in optional]
    if absent:
        raise GDCError(
            f"clinical file {path}: no column(s) {absent}, looked for {LAYOUTS}; it has {list(raw.columns)[:12]}... "
            "name the right ones with --patient-column / --label-column"
        )
    rows = []
    for patient, group in raw.groupby(found[patient_column], sort=True):
        row = {"patient_id": patient}
        primary = _primary_diagnosis_rows(group)
        for name in columns:
            column = found[name]
            source = primary if column and column.startswith("diagnoses.") and name not in largest else group
            values = sorted({value.strip() for value in source[column] if not _missing(value)}) if column else []
            if name in largest and column != name and values:
                values = [max(values, key=_days)]
            if len(values) > 1:
                raise GDCError(f"clinical file {path}: patient {patient} has {column} {values}; keep one value")
            row[name] = values[0] if values else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=["patient_id", *columns])


def _map_slides(files: list[Path], patients: set[str], clinical: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mapped slides: slide_id, path, patient_id; unmapped: path, reason)."""
    mapped: dict[str, dict[str, str]] = {}
    unmapped = []
    for path in files:
        slide_id = path.name.split(".")[0]
        match = BARCODE.match(slide_id)
        if match is None:
            reason = f"{slide_id!r} is not a TCGA slide barcode (TCGA-XX-XXXX-01Z-00-DX1)"
        elif not match["slide"].startswith("DX"):
            reason = f"slide field {match['slide']!r} is not a diagnostic (DX) slide; frozen sections are not used"
        elif slide_id in mapped:
            reason = f"a second copy of slide {slide_id} ({mapped[slide_id]['path']} is used)"
        elif match["patient"] not in patients:
            reason = f"patient {match['patient']} is not in {clinical}"
        else:
            mapped[slide_id] = {"slide_id": slide_id, "path": str(path.resolve()), "patient_id": match["patient"]}
            continue
        unmapped.append({"path": str(path), "reason": reason})
    return pd.DataFrame(list(mapped.values()), columns=["slide_id", "path", "patient_id"]), pd.DataFrame(
        unmapped, columns=["path", "reason"]
    )


def _survival(table: pd.DataFrame, clinical: Path) -> pd.DataFrame:
    """patient_id, time (days), event (1 = died) of the patients with a vital status and a usable time."""
    dead = table[VITAL_STATUS].str.lower() == "dead"
    alive = table[VITAL_STATUS].str.lower() == "alive"
    follow_up = table[[DAYS_TO_LAST_FOLLOW_UP, DAYS_TO_FOLLOW_UP]].apply(pd.to_numeric, errors="coerce").max(axis=1)
    time = pd.to_numeric(table[DAYS_TO_DEATH], errors="coerce").where(dead, follow_up)
    usable = (dead | alive) & time.notna() & (time > 0)  # MIL's survival labels need a time > 0
    if not usable.all():
        logger.info(
            "%s: %d patient(s) without a vital status or a positive number of days to event, not in the survival "
            "labels",
            clinical,
            int((~usable).sum()),
        )
    return pd.DataFrame({"patient_id": table["patient_id"], "time": time, "event": dead.astype(int)})[usable.to_numpy()]


def cohort_from_gdc(
    slides_dir: str | Path,
    clinical: str | Path,
    out_dir: str | Path,
    label_column: str | None = None,
    patient_column: str = "case_submitter_id",
    survival: bool = True,
    drop_unmapped: bool = False,
) -> GDCCohort:
    """Write ``manifest.csv`` (slide_id, path, patient_id) of the diagnostic slides under ``slides_dir``, and per
    task a labels CSV of the patients with that task's values: ``labels_<label_column>.csv`` (patient_id, the
    label) and ``labels_survival.csv`` (patient_id, time in days, event), from the clinical TSV in either layout;
    ``label_column`` and ``patient_column`` may be given with or without their node prefix. Time is the days to
    death of the dead, else the largest days to last follow-up (or, 2025 layout, to follow-up) of the patient's rows.

    Raises GDCError naming every slide that cannot be mapped (and why) unless ``drop_unmapped``; then they go to
    ``unmapped.csv``. Also raises it when nothing would be labelled or no slide is found.
    """
    slides_dir, clinical, out_dir = Path(slides_dir), Path(clinical), Path(out_dir)
    if label_column is None and not survival:
        raise GDCError("nothing to label: give --label-column, keep survival, or both")
    columns = [label_column] if label_column else []
    if survival:
        columns += [VITAL_STATUS, DAYS_TO_DEATH, DAYS_TO_LAST_FOLLOW_UP, DAYS_TO_FOLLOW_UP]
    follow_ups = (DAYS_TO_LAST_FOLLOW_UP, DAYS_TO_FOLLOW_UP)
    table = read_clinical(clinical, columns, patient_column, largest=follow_ups, optional=(DAYS_TO_FOLLOW_UP,))
    files = _slide_files(slides_dir)
    if not files:
        raise GDCError(f"GDC download folder {slides_dir}: no slide ({', '.join(SLIDE_SUFFIXES)}) found under it")
    manifest, unmapped = _map_slides(files, set(table["patient_id"]), clinical)
    if len(unmapped) and not drop_unmapped:
        listed = "; ".join(f"{row.path}: {row.reason}" for row in unmapped.head(SHOWN).itertuples())
        more = f" and {len(unmapped) - SHOWN} more" if len(unmapped) > SHOWN else ""
        raise GDCError(
            f"{len(unmapped)} of {len(files)} slide(s) under {slides_dir} cannot be mapped: {listed}{more}. "
            "Fix them, or pass --drop-unmapped to leave them out (they are then listed in unmapped.csv)"
        )
    if manifest.empty:
        raise GDCError(f"no slide under {slides_dir} maps to a patient of {clinical}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    table = table[table["patient_id"].isin(manifest["patient_id"])]
    if label_column:
        labelled = table.loc[table[label_column] != "", ["patient_id", label_column]]
        written[label_column] = out_dir / f"labels_{label_column}.csv"
        write_csv_atomic(written[label_column], labelled)
    if survival:
        times = _survival(table, clinical)
        written["survival"] = out_dir / "labels_survival.csv"
        write_csv_atomic(written["survival"], times)
    path = write_csv_atomic(out_dir / "manifest.csv", manifest)
    if len(unmapped):
        write_csv_atomic(out_dir / "unmapped.csv", unmapped)
    return GDCCohort(path, written, len(manifest), manifest["patient_id"].nunique(), unmapped)
