"""`pathme cohort-from-gdc` on a fake GDC download: UUID folders of tiny TCGA slides and a clinical TSV."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathme.cli import main
from pathme.cohorts.gdc import GDCError, cohort_from_gdc
from pathme.data.labels import load_labels
from pathme.synthetic.slides import write_pyramid
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


#: the same cases in the GDC's layout since 2025 (Data Release 42, Data Portal 2.4.0): columns named <node>.<name>,
#: a row per diagnosis, follow-up and treatment; the last follow-up is the largest of their days
NODE_COLUMNS = ["cases.case_id", "cases.submitter_id", "project.project_id", "demographic.vital_status"]
NODE_COLUMNS += ["demographic.days_to_death", "diagnoses.days_to_last_follow_up", "follow_ups.days_to_follow_up"]
NODE_COLUMNS += ["treatments.treatment_type", "diagnoses.subtype"]


def node_rows() -> list[list[str]]:
    return [
        ["u1", "TCGA-A1-A0SB", "TCGA-BRCA", "Alive", "'--", "120", "31", "Radiation Therapy", "LumA"],
        ["u1", "TCGA-A1-A0SB", "TCGA-BRCA", "Alive", "'--", "120", "259", "Pharmaceutical Therapy", "LumA"],  # last
        ["u1", "TCGA-A1-A0SB", "TCGA-BRCA", "Alive", "'--", "120", "'--", "'--", "LumA"],
        ["u2", "TCGA-A2-A04P", "TCGA-BRCA", "Dead", "548", "'--", "300", "Radiation Therapy", "Basal"],  # died later
        ["u3", "TCGA-BH-A0BZ", "TCGA-BRCA", "Dead", "'--", "'--", "'--", "'--", "LumB"],
        ["u4", "TCGA-E2-A15K", "TCGA-BRCA", "Alive", "'--", "1200", "'--", "'--", "'--"],  # two diagnoses
        ["u4", "TCGA-E2-A15K", "TCGA-BRCA", "Alive", "'--", "800", "'--", "'--", "'--"],
    ]


def write_tsv(path: Path, rows: list[list[str]], columns: list[str] = CLINICAL_COLUMNS) -> Path:
    path.write_text("\n".join("\t".join(row) for row in [columns, *rows]) + "\n")
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


def test_a_patient_with_zero_days_to_event_is_left_out_of_the_survival_labels_mil_reads(
    download: Path, tmp_path: Path
) -> None:
    """MIL refuses a survival time of 0 (pathme.data.labels); the builder must not write one."""
    rows = clinical_rows()
    rows[3][4] = "0"  # TCGA-BH-A0BZ died on the day of diagnosis
    cohort = cohort_from_gdc(download, write_tsv(tmp_path / "c.tsv", rows), tmp_path / "out")
    survival = pd.read_csv(cohort.labels["survival"])
    assert "TCGA-BH-A0BZ" not in set(survival["patient_id"]) and len(survival) == 3
    tokens = dict.fromkeys(pd.read_csv(cohort.manifest)["patient_id"], 1)
    assert load_labels(cohort.labels["survival"], "survival", tokens).table.shape[0] == 3


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


def test_the_2025_node_prefixed_clinical_tsv_gives_the_cohort_of_the_old_layout(download: Path, tmp_path: Path) -> None:
    old = cohort_from_gdc(download, write_tsv(tmp_path / "old.tsv", clinical_rows()), tmp_path / "old", "subtype")
    clinical = write_tsv(tmp_path / "clinical.tsv", node_rows(), NODE_COLUMNS)
    new = cohort_from_gdc(download, clinical, tmp_path / "new", label_column="subtype")
    assert (new.slides, new.patients, sorted(new.labels)) == (old.slides, old.patients, sorted(old.labels))
    for written, expected in [(new.manifest, old.manifest), *((new.labels[k], old.labels[k]) for k in old.labels)]:
        assert written.read_bytes() == expected.read_bytes(), written.name
    survival = pd.read_csv(new.labels["survival"]).set_index("patient_id")["time"].to_dict()
    assert survival == {"TCGA-A1-A0SB": 259, "TCGA-A2-A04P": 548, "TCGA-E2-A15K": 1200}  # largest days; death wins
    # the columns may also be named with their node prefix, or by a bare name (submitter_id: the cases node's)
    named = cohort_from_gdc(download, clinical, tmp_path / "named", "diagnoses.subtype", "submitter_id")
    by_prefix = pd.read_csv(named.labels["diagnoses.subtype"]).set_axis(["patient_id", "subtype"], axis=1)
    assert by_prefix.equals(pd.read_csv(old.labels["subtype"]))


def test_a_label_of_the_2025_layout_comes_from_the_primary_diagnosis_when_one_is_marked(
    download: Path, tmp_path: Path
) -> None:
    """Since DR42 a TCGA case may have several diagnoses with different values; the marked primary one decides."""
    columns = [*NODE_COLUMNS, "diagnoses.diagnosis_is_primary_disease"]
    rows = [[*row, "true"] for row in node_rows()]
    rows.append(["u4", "TCGA-E2-A15K", "TCGA-BRCA", "Alive", "'--", "1500", "'--", "'--", "Normal", "false"])
    rows[5][-2] = "LumA"  # the primary diagnosis of TCGA-E2-A15K; its second one says Normal
    cohort = cohort_from_gdc(download, write_tsv(tmp_path / "c.tsv", rows, columns), tmp_path / "out", "subtype")
    labels = pd.read_csv(cohort.labels["subtype"]).set_index("patient_id")["subtype"].to_dict()
    assert labels["TCGA-E2-A15K"] == "LumA"
    survival = pd.read_csv(cohort.labels["survival"]).set_index("patient_id")["time"].to_dict()
    assert survival["TCGA-E2-A15K"] == 1500  # follow-up days: the largest over every diagnosis
    unmarked = [row[:-1] for row in rows]
    with pytest.raises(GDCError, match=r"TCGA-E2-A15K has diagnoses.subtype \['LumA', 'Normal'\]; keep one"):
        cohort_from_gdc(download, write_tsv(tmp_path / "u.tsv", unmarked, NODE_COLUMNS), tmp_path / "u", "subtype")


def test_2025_clinical_files_that_cannot_label_name_the_file_and_the_fix(download: Path, tmp_path: Path) -> None:
    rows = node_rows()
    rows[1][3] = "Dead"  # one patient's rows disagree on a value that is not days
    with pytest.raises(GDCError, match=r"TCGA-A1-A0SB has demographic.vital_status \['Alive', 'Dead'\]; keep one"):
        cohort_from_gdc(download, write_tsv(tmp_path / "c.tsv", rows, NODE_COLUMNS), tmp_path / "out")
    rows = clinical_rows()
    rows[1][5] = "260"  # the old layout repeats a case per treatment: its days must agree, as before 2025
    with pytest.raises(GDCError, match=r"TCGA-A1-A0SB has days_to_last_follow_up \['259', '260'\]; keep one"):
        cohort_from_gdc(download, write_tsv(tmp_path / "c.tsv", rows), tmp_path / "out")
    columns = [*NODE_COLUMNS[:5], "diagnoses.days_to_recurrence", *NODE_COLUMNS[6:]]  # no days to last follow-up
    with pytest.raises(GDCError, match=r"no column\(s\) \['days_to_last_follow_up'\].*<node>.<name>.*--patient-col"):
        cohort_from_gdc(download, write_tsv(tmp_path / "c.tsv", node_rows(), columns), tmp_path / "out")
    columns = [*NODE_COLUMNS[:-2], "exposures.subtype", "family_histories.subtype"]  # two nodes, neither preferred
    with pytest.raises(GDCError, match=r"'subtype' is in several columns .*--label-column"):
        cohort_from_gdc(download, write_tsv(tmp_path / "c.tsv", node_rows(), columns), tmp_path / "out", "subtype")
    assert not (tmp_path / "out").exists()


def test_the_pathme_command_writes_the_cohort_and_says_where(download: Path, tmp_path: Path, capsys) -> None:
    clinical = write_tsv(tmp_path / "clinical.tsv", clinical_rows())
    out = tmp_path / "cohort"
    assert (
        main(["cohort-from-gdc", "--slides", str(download), "--clinical", str(clinical), "--output-dir", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert (
        "5 slides of 4 patients" in printed and f"labels for --task survival: {out / 'labels_survival.csv'}" in printed
    )
    assert (
        main(
            [
                "cohort-from-gdc",
                "--slides",
                str(tmp_path / "none"),
                "--clinical",
                str(clinical),
                "--output-dir",
                str(out),
            ]
        )
        == 2
    )
