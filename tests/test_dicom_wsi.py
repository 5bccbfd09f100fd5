"""DICOM WSI slides (a folder of VL Whole Slide Microscopy instances) through every stage: the reader, µm/px from
the pixel spacing, preview, extraction (the same regions, tiles and features as the SVS the series was made from)
and refusals of series that are no slide. The Deploy app on a series: tests/test_deploy.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from dicom_series import drop_pixel_spacing, make_ct, rewrite, to_dicom
from test_extraction import EXPERTS, store_contents

from pathme.deploy.pipeline import slide_id as deploy_slide_id
from pathme.engines.extraction import CohortExtractor
from pathme.shards.run import _size as shard_size
from pathme.store.digests import slide_fingerprint
from pathme.store.provenance import read_provenance
from pathme.wsi.mpp import MissingMppError
from pathme.wsi.readers import READERS, is_slide, readers_for
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError


@pytest.fixture(scope="module")
def series(cmu_slide, tmp_path_factory):
    """The sample slide as a DICOM WSI series with a pyramid (levels 1-4 encoded by wsidicomizer)."""
    return to_dicom(cmu_slide, tmp_path_factory.mktemp("dicom") / "cmu")


def test_a_series_opens_with_wsidicom_and_its_pixel_spacing(series, cmu_slide):
    slide = Slide.open(series)
    svs = Slide.open(cmu_slide)
    assert slide.backend == "wsidicom" and slide.slide_id == "cmu" and slide.channels == 3
    assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.499), "dicom pixel spacing")
    assert slide.size == svs.size == (2220, 2967)
    # level 0's JPEG tiles are the SVS's, copied: the same pixels to the bit
    np.testing.assert_array_equal(slide.read_level(0, 300, 700, 900, 800), svs.read_level(0, 300, 700, 900, 800))
    # an instance stands for its series
    assert Slide.open(next(series.glob("*.dcm"))).path == series
    assert is_slide(series) and readers_for("auto", series) == (READERS["wsidicom"],)
    # a backend named for TIFF-based files (the Deploy app's openslide) leaves a series to the reader of its form
    named = Slide.open(series, backend="openslide")
    assert (named.backend, named.reader_note) == (
        "wsidicom",
        "openslide does not open a slide of this form; read with wsidicom",
    )
    assert Slide.open(series).slide_id == "cmu" and Slide.open(series).reader_note == ""


def test_reduced_levels_are_the_area_average_of_level_0_within_the_jpeg_error(cmu_slide, tmp_path):
    slide = Slide.open(to_dicom(cmu_slide, tmp_path / "pyramid", levels=True))
    assert slide.level_sizes[:3] == [(2220, 2967), (1110, 1484), (555, 742)]
    level0 = slide.read_level(0, 0, 0, 2220, 2964).astype(float)
    reduced = slide.read_level(2, 0, 0, 555, 741).astype(float)
    average = level0.reshape(741, 4, 555, 4, 3).mean(axis=(1, 3))
    error = np.abs(reduced - average)
    # JPEG of a resampled image (measured: median 1, mean 3.8, 99th percentile 24 grey levels); a decoder that gets
    # the colour space wrong is off by about 77 on average (OpenSlide 4.0.1 on these levels)
    assert np.median(error) <= 2 and error.mean() < 6 and np.percentile(error, 99) < 32


def test_extraction_of_a_series_equals_that_of_its_svs(series, cmu_slide, tmp_path):
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"slide_id": ["svs", "dicom"], "path": [str(cmu_slide), str(series)]}).to_csv(manifest, index=False)
    summary = CohortExtractor(manifest, tmp_path / "out", EXPERTS, batch_size=32, num_workers=1).run()
    summary = summary.set_index("slide_id")
    assert summary["status"].tolist() == ["done", "done"], summary
    assert summary.loc["dicom", "reader_backend"] == "wsidicom"
    svs, dicom = store_contents(tmp_path / "out" / "svs.h5"), store_contents(tmp_path / "out" / "dicom.h5")
    assert svs.keys() == dicom.keys()
    for name in svs:  # level 0 is the same pixels, and the hierarchy is built from one level-0 read
        np.testing.assert_array_equal(svs[name], dicom[name], err_msg=name)


def test_preview_draws_a_series_and_the_readers_libraries_say_nothing(series, tmp_path):
    """``pathme preview`` in a process of its own (pydicom says its deprecation notice once per process, on the first
    series opened): the table and where the outputs are, no line from pydicom or wsidicom."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path\ncmu,{series}\n")
    command = [sys.executable, "-m", "pathme.cli", "preview", "--manifest", str(manifest), "--output-dir"]
    done = subprocess.run([*command, str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pydicom" not in done.stdout + done.stderr and "wsidicom" in done.stdout  # the backend column
    summary = pd.read_csv(tmp_path / "out" / "preview_summary.csv", keep_default_na=False)
    assert summary["error"].tolist() == [""] and summary["regions"].tolist() == [1]
    assert (tmp_path / "out" / "cmu_preview.png").is_file()


def test_the_fingerprint_of_a_series_changes_with_any_instance(series, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in series.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert slide_fingerprint(copy) == slide_fingerprint(series)
    instance = next(copy.glob("*.dcm"))
    instance.write_bytes(instance.read_bytes()[:-10] + b"0123456789")
    assert slide_fingerprint(copy) != slide_fingerprint(series)


def test_a_series_without_pixel_spacing_is_refused_naming_the_fix(series, tmp_path):
    bare = to_dicom_copy(series, tmp_path / "bare")
    rewrite(bare, drop_pixel_spacing)
    for mpp in (None, 0.5):  # a manifest mpp cannot stand in: no reader places the levels of such a series
        with pytest.raises(MissingMppError, match=r"^slide bare: .*bare: the series states no pixel spacing") as error:
            Slide.open(bare, mpp=mpp)
        assert "\n" not in str(error.value)


def test_a_series_that_is_no_whole_slide_image_is_refused_in_one_line(series, tmp_path):
    other = to_dicom_copy(series, tmp_path / "ct")
    rewrite(other, make_ct)
    with pytest.raises(SlideError) as error:
        Slide.open(other)
    message = str(error.value)
    assert "\n" not in message and "slide ct" in message and "no VL Whole Slide Microscopy image" in message


def to_dicom_copy(series, folder):
    folder.mkdir()
    for path in series.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_a_series_named_by_its_uid_keeps_its_whole_name_as_slide_id(series, tmp_path):
    named = to_dicom_copy(series, tmp_path / "1.2.826.0.1.3680043.8.498.12345")
    assert Slide.open(named).slide_id == "1.2.826.0.1.3680043.8.498.12345"
    assert deploy_slide_id(named) == named.name  # the Deploy app's report folder


def test_a_series_fingerprint_and_size_cover_its_instances_only(series, tmp_path):
    copy = to_dicom_copy(series, tmp_path / "copy")
    before = slide_fingerprint(copy)
    (copy / "DICOMDIR.txt").write_text("an index an archive left beside the instances")
    assert slide_fingerprint(copy) == before
    assert shard_size(copy) == sum(p.stat().st_size for p in copy.glob("*.dcm")) > 4096


def test_a_later_stage_refuses_a_series_changed_since_extraction(series, tmp_path):
    copy = to_dicom_copy(series, tmp_path / "cmu")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path\ncmu,{copy}\n")
    CohortExtractor(manifest, tmp_path / "out", EXPERTS, batch_size=32, num_workers=0).run()
    provenance = read_provenance(tmp_path / "out" / "cmu.h5")
    assert provenance.open_slide().backend == "wsidicom"
    instance = next(copy.glob("*.dcm"))
    instance.write_bytes(instance.read_bytes()[:-10] + b"0123456789")  # same size, other pixels at its end
    with pytest.raises(SlideError, match="its fingerprint differs from the store's"):
        provenance.open_slide()
