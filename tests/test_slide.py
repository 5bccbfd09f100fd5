"""Opening slides: both backends agree, µm/px comes from the right place, bad slides are refused clearly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import block_pattern

from pathme.wsi.mpp import MissingMppError
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError

RNG = np.random.default_rng(7)
NOISE = RNG.integers(0, 256, size=(2880, 2304, 3), dtype=np.uint8)  # sides divisible by 3, 9 and 16


def _assert_backends_agree(path: Path, boxes: list[tuple[int, int, int, int]]) -> None:
    cucim, openslide = Slide.open(path, "cucim"), Slide.open(path, "openslide")
    assert cucim.level_sizes == openslide.level_sizes
    assert (cucim.mpp, cucim.mpp_source) == (openslide.mpp, openslide.mpp_source)
    for level, (width, height) in enumerate(cucim.level_sizes):
        for x, y, w, h in boxes:
            w, h = min(w, width - x), min(h, height - y)
            np.testing.assert_array_equal(cucim.read_level(level, x, y, w, h), openslide.read_level(level, x, y, w, h))


@pytest.mark.parametrize(
    ("flavour", "mpp", "downsamples"),
    [("tiff", 0.5, (1, 4, 16)), ("svs", 0.25, (1, 3, 9)), ("tiff", 0.25, (1, 2, 6))],
)
def test_backends_return_the_same_pixels_on_synthetic_pyramids(make_slide, flavour, mpp, downsamples):
    path = make_slide(NOISE, mpp, flavour, downsamples)
    _assert_backends_agree(path, [(0, 0, 64, 48), (1, 1, 50, 60), (7, 3, 33, 17), (100, 120, 200, 100)])


def test_backends_return_the_same_pixels_on_the_cmu_slide(cmu_slide):
    _assert_backends_agree(cmu_slide, [(0, 0, 300, 200), (1000, 1500, 512, 512), (2000, 2900, 220, 67)])


def test_level_geometry_of_a_non_power_of_two_pyramid(make_slide):
    slide = Slide.open(make_slide(NOISE, 0.25, "svs", (1, 3, 9)))
    assert slide.level_sizes == [(2304, 2880), (768, 960), (256, 320)]
    assert slide.level_scale(1) == (3.0, 3.0)
    assert slide.level_mpp(2) == pytest.approx(2.25)


@pytest.mark.parametrize("backend", ["cucim", "openslide"])
@pytest.mark.parametrize(
    ("flavour", "mpp", "source"),
    [
        ("tiff", 0.25, "tiff resolution tags"),
        ("tiff", 0.5, "tiff resolution tags"),
        ("svs", 0.25, "aperio MPP"),
        ("svs", 0.5, "aperio MPP"),
    ],
)
def test_mpp_is_read_from_every_synthetic_variant(make_slide, backend, flavour, mpp, source):
    slide = Slide.open(make_slide(NOISE[:512, :512], mpp, flavour), backend)
    assert slide.mpp == pytest.approx(mpp, rel=1e-6)
    assert slide.mpp_source == source
    assert slide.backend == backend


def test_mpp_of_the_cmu_slide(cmu_slide):
    slide = Slide.open(cmu_slide)
    assert slide.mpp == pytest.approx(0.499)
    assert slide.mpp_source == "aperio MPP"
    assert slide.magnification == 20


@pytest.mark.parametrize("backend", ["cucim", "openslide"])
@pytest.mark.parametrize("flavour", ["tiff", "svs"])
def test_a_slide_without_mpp_is_refused_with_the_fix(make_slide, backend, flavour):
    path = make_slide(NOISE[:512, :512], None, flavour, name="no_mpp")
    with pytest.raises(MissingMppError) as error:
        Slide.open(path, backend)
    message = str(error.value)
    assert "no_mpp" in message and str(path) in message
    assert "manifest's 'mpp' column" in message


def test_the_manifest_override_makes_a_slide_without_mpp_readable(make_slide):
    slide = Slide.open(make_slide(NOISE[:512, :512], None, "svs"), mpp=0.5)
    assert (slide.mpp, slide.mpp_source) == (0.5, "manifest")
    assert slide.read_level(0, 0, 0, 8, 8).shape == (8, 8, 3)


def test_the_override_wins_over_metadata(make_slide):
    slide = Slide.open(make_slide(NOISE[:512, :512], 0.25, "tiff"), mpp=0.2627)
    assert (slide.mpp, slide.mpp_source) == (0.2627, "manifest")


def test_disagreeing_magnification_and_mpp_are_warned_about(make_slide, caplog):
    with caplog.at_level(logging.WARNING):
        Slide.open(make_slide(NOISE[:512, :512], 0.25, "svs", magnification=20))
    assert "stated magnification 20x" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Slide.open(make_slide(NOISE[:512, :512], 0.25, "svs", magnification=40, name="agrees"))
    assert "magnification" not in caplog.text


@pytest.mark.parametrize("backend", ["cucim", "openslide"])
def test_a_missing_file_is_named(tmp_path, backend):
    with pytest.raises(SlideError, match="file not found: .*absent.svs"):
        Slide.open(tmp_path / "absent.svs", backend)


@pytest.mark.parametrize("backend", ["cucim", "openslide"])
def test_a_non_image_file_is_named(tmp_path, backend):
    path = tmp_path / "notes.svs"
    path.write_text("these are not pixels\n")
    with pytest.raises(SlideError, match=f"{path}.* cannot be opened as a slide by {backend}"):
        Slide.open(path, backend)


@pytest.mark.parametrize("backend", ["cucim", "openslide"])
def test_a_truncated_tiff_is_named(make_slide, backend):
    path = make_slide(block_pattern(2048, 2048, 32), 0.5, "svs")
    data = path.read_bytes()
    truncated = path.with_name("truncated.svs")
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=f"{truncated} is truncated"):
        Slide.open(truncated, backend)


def test_an_unknown_backend_is_refused(make_slide):
    with pytest.raises(ValueError, match="unknown reader backend 'pillow'"):
        Slide.open(make_slide(NOISE[:256, :256], 0.5), "pillow")


def test_reads_outside_a_level_are_refused(make_slide):
    slide = Slide.open(make_slide(NOISE[:512, :512], 0.5))
    with pytest.raises(ValueError, match="outside level 1"):
        slide.read_level(1, 100, 100, 64, 64)
