"""The manifest is validated before any slide is opened, and every refusal names the file, row and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathme.cohorts.manifest import ManifestError, read_manifest


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_rows_resolve_relative_paths_and_default_the_patient(tmp_path):
    manifest = _write(tmp_path, "slide_id,path,mpp,patient_id\na-1,slides/a.svs,0.25,P1\nb_2,/data/b.tiff,,\n")
    rows = read_manifest(manifest)
    assert [row.slide_id for row in rows] == ["a-1", "b_2"]
    assert rows[0].path == tmp_path / "slides" / "a.svs"
    assert rows[1].path == Path("/data/b.tiff")
    assert (rows[0].mpp, rows[1].mpp) == (0.25, None)
    assert (rows[0].patient_id, rows[1].patient_id) == ("P1", "b_2")


def test_duplicate_slide_ids_are_refused_with_both_rows(tmp_path):
    manifest = _write(tmp_path, "slide_id,path\nA,a.svs\nB,b.svs\nA,c.svs\n")
    with pytest.raises(ManifestError, match=r"manifest .*manifest.csv, row 4 \(slide_id 'A'\): duplicate .* row 2"):
        read_manifest(manifest)


@pytest.mark.parametrize("slide_id", ["../escape", "a/b", "with space", ".hidden", "x" * 129, "semi;colon"])
def test_unsafe_slide_ids_are_refused(tmp_path, slide_id):
    manifest = _write(tmp_path, f"slide_id,path\n{slide_id},a.svs\n")
    with pytest.raises(ManifestError, match="row 2 .*slide_id must be 1-128 characters"):
        read_manifest(manifest)


def test_an_empty_slide_id_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="row 2"):
        read_manifest(_write(tmp_path, "slide_id,path\n,a.svs\n"))


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(ManifestError, match="missing column.*path"):
        read_manifest(_write(tmp_path, "slide_id,file\nA,a.svs\n"))


@pytest.mark.parametrize("mpp", ["-0.5", "0", "abc", "inf"])
def test_a_bad_mpp_is_named(tmp_path, mpp):
    with pytest.raises(ManifestError, match=f"row 2 .*column 'mpp' must be a positive number.*{mpp}"):
        read_manifest(_write(tmp_path, f"slide_id,path,mpp\nA,a.svs,{mpp}\n"))


def test_an_empty_path_is_named(tmp_path):
    with pytest.raises(ManifestError, match="row 2 .*column 'path' is empty"):
        read_manifest(_write(tmp_path, "slide_id,path\nA,\n"))


def test_a_missing_or_empty_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match="manifest .*: file not found"):
        read_manifest(tmp_path / "none.csv")
    with pytest.raises(ManifestError, match="no slides listed"):
        read_manifest(_write(tmp_path, "slide_id,path\n"))
