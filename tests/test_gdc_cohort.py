"""`pathme cohort-from-gdc` on a fake GDC download: UUID folders of tiny TCGA slides and a clinical TSV."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathme.cli import main
from pathme.data.gdc import GDCError, cohort_from_gdc
from pathme.data.labels import load_labels
from pathme.data.synthetic import write_pyramid
from pathme.wsi.slide import Slide

CLINICAL_COLUMNS = ["case_id", "case_submitter_id", "project_id", "vital_status", "days_to_death"]
CLINICAL_COLUMNS += ["days_to_last_follow_up", "treatment_type", "subtype"]


def clinical_rows() -> list[list[str]]:
    """GDC's layout: one row per treatment, "'--" for no value."""
    return [
        ["u1", "TCGA-A1-A0SB", "TCGA-BRCA", "Alive", "'--", "259", "Radiation Therapy", "LumA"],
        ["u1", "TCGA-A1-A0SB", "TCGA-BRCA", "Alive", "'--", "259", "Pharmaceutical Therapy", "LumA"],
        ["u2", "TCGA-A2-A04P", "TCGA-BRCA", "Dead", "548", "'--", "Radiation Therapy", "Basal"],
        ["u3", "TCGA-BH-A0BZ", "TCGA-BRCA", "Dead", "'--", "'--", "'--", "LumB"],  # no time: not in survival
        ["u4", "TCGA-E2-A15K", "TCGA-BRCA", "Alive", "'--", "1200", "'--", "'--"],  # no subtype
    ]


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(row) for row in [CLINICAL_COLUMNS, *rows]) + "\n")
    return path


def gdc_slide(root: Path, barcode: str) -> Path:
    """A tiny slide where gdc-client puts it: <file uuid>/<barcode>.<slide uuid>.svs."""
    folder = root / str(uuid.uuid4())
    folder.mkdir(parents=True)
    path = folder / f"{barcode}.{str(uuid.uuid4()).upper()}.svs"
    pixels = np.random.default_rng(0).integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    write_pyramid(path, pixels, 0.5, "svs", (1, 4), None)
    return path


@pytest.fixture
def download(tmp_path: Path) -> Path:
    root = tmp_path / "gdc"
    for barcode in ["TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A2-A04P-01Z-00-DX1", "TCGA-A2-A04P-01Z-00-DX2"]:
        gdc_slide(root, barcode)
    gdc_slide(root, "TCGA-BH-A0BZ-01Z-00-DX1")
    gdc_slide(root, "TCGA-E2-A15K-01Z-00-DX1")
    (root / "logs").mkdir()
    (root / "logs" / "gdc-client.log").write_text("downloaded\n")  # not a slide
    return root


def test_manifest_and_labels_from_barcodes_and_the_clinical_tsv(download: Path, tmp_path: Path) -> None:
    clinical = write_tsv(tmp_path / "clinical.tsv", clinical_rows())
    cohort = cohort_from_gdc(download, clinical, tmp_path / "cohort", label_column="subtype")
    manifest = pd.read_csv(cohort.manifest)
    assert list(manifest.columns) == ["slide_id", "path", "patient_id"]
    assert sorted(manifest["slide_id"]) == [
        "TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A2-A04P-01Z-00-DX1", "TCGA-A2-A04P-01Z-00-DX2",
        "TCGA-BH-A0BZ-01Z-00-DX1", "TCGA-E2-A15K-01Z-00-DX1",
    ]  # fmt: skip
    assert (
        dict(zip(manifest["slide_id"], manifest["patient_id"], strict=True))["TCGA-A2-A04P-01Z-00-DX2"]
        == "TCGA-A2-A04P"
    )
    assert all(Slide.open(Path(path)).mpp == pytest.approx(0.5) for path in manifest["path"])  # paths that open
    assert (cohort.slides, cohort.patients) == (5, 4)
    subtype = pd.read_csv(cohort.labels["subtype"])
    assert dict(zip(subtype["patient_id"], subtype["subtype"], strict=True)) == {
        "TCGA-A1-A0SB": "LumA", "TCGA-A2-A04P": "Basal", "TCGA-BH-A0BZ": "LumB",
    }  # fmt: skip
    survival = pd.read_csv(cohort.labels["survival"]).set_index("patient_id")
    assert survival.to_dict("index") == {
        "TCGA-A1-A0SB": {"time": 259, "event": 0},  # alive: days to last follow-up
        "TCGA-A2-A04P": {"time": 548, "event": 1},  # dead: days to death
        "TCGA-E2-A15K": {"time": 1200, "event": 0},
    }
    # the files are what MIL reads: patients of the manifest's slides, every value filled
    tokens = dict.fromkeys(manifest["patient_id"], 1)
    assert load_labels(cohort.labels["survival"], "survival", tokens).table.shape[0] == 3
    assert load_labels(cohort.labels["subtype"], "subtype", tokens).classes == ["Basal", "LumA", "LumB"]


def test_slides_it_cannot_map_are_refused_each_with_its_reason(download: Path, tmp_path: Path) -> None:
    clinical = write_tsv(tmp_path / "clinical.tsv", clinical_rows()[:3])  # no TCGA-BH-A0BZ, no TCGA-E2-A15K
    gdc_slide(download, "TCGA-A1-A0SB-01A-01-TS1")  # a frozen section
    stray = download / "notes" / "scan_0001.svs"
    stray.parent.mkdir()
    stray.write_bytes(b"not a TCGA file")
    with pytest.raises(GDCError) as refused:
        cohort_from_gdc(download, clinical, tmp_path / "cohort")
    message = str(refused.value)
    assert "4 of 7 slide(s)" in message and "--drop-unmapped" in message
    assert "patient TCGA-BH-A0BZ is not in" in message and "patient TCGA-E2-A15K is not in" in message
    assert "'TS1' is not a diagnostic (DX) slide" in message and "'scan_0001' is not a TCGA slide barcode" in message
    assert not (tmp_path / "cohort").exists()  # nothing written
    cohort = cohort_from_gdc(download, clinical, tmp_path / "cohort", drop_unmapped=True)
    assert cohort.slides == 3 and len(pd.read_csv(tmp_path / "cohort" / "unmapped.csv")) == 4


def test_clinical_files_that_cannot_label_name_the_file_and_the_fix(download: Path, tmp_path: Path) -> None:
    rows = clinical_rows()
    rows[1][-1] = "LumB"  # the second row of TCGA-A1-A0SB disagrees
    with pytest.raises(GDCError, match=r"patient TCGA-A1-A0SB has subtype \['LumA', 'LumB'\]; keep one value"):
        cohort_from_gdc(download, write_tsv(tmp_path / "c.tsv", rows), tmp_path / "out", label_column="subtype")
    with pytest.raises(GDCError, match=r"no column\(s\) \['pam50'\].*--label-column"):
        cohort_from_gdc(
            download, write_tsv(tmp_path / "c.tsv", clinical_rows()), tmp_path / "out", label_column="pam50"
        )
    with pytest.raises(GDCError, match="clinical file .*absent.tsv: file not found"):
        cohort_from_gdc(download, tmp_path / "absent.tsv", tmp_path / "out")


def test_the_pathme_command_writes_the_cohort_and_says_where(download: Path, tmp_path: Path, capsys) -> None:
    clinical = write_tsv(tmp_path / "clinical.tsv", clinical_rows())
    out = tmp_path / "cohort"
    assert main(["cohort-from-gdc", "--slides", str(download), "--clinical", str(clinical), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "5 slides of 4 patients" in printed and f"labels for --task survival: {out / 'labels_survival.csv'}" in printed
    )
    assert (
        main(["cohort-from-gdc", "--slides", str(tmp_path / "none"), "--clinical", str(clinical), "--out", str(out)])
        == 2
    )
