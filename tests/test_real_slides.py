"""Slides people actually have (issue 11, K2-K5): implausible µm/px, no region and why, readers that cannot decode
a file, pen ink. Each input is the smallest file that showed the fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from real_inputs import (
    GLASS,
    INK,
    grayscale,
    half_tissue,
    rgba,
    tissue_image,
    write_manifest,
    write_slide,
)

from pathme.cli import main
from pathme.demo.cohort_generator import harvest_tiles, tumour_stains, tumour_tiles
from pathme.viz.figure import PAD_PX, TITLE_PX
from pathme.viz.preview import INK_COLOUR, INVALID_ALPHA, INVALID_COLOUR
from pathme.wsi.mpp import MissingMppError, level0_mpp
from pathme.wsi.reading import read_thumbnail
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError
from pathme.wsi.tissue import TissueConfig


def valid_tiles(plan) -> int:
    return int(sum(region.valid_l0.sum() for region in plan.regions))


# K2: physical scale must be plausible before it is used (the 72-dpi input: test_real_runs.py's mixed cohort)


def test_an_implausible_metadata_value_gives_way_to_the_next_source():
    properties = {"aperio.MPP": "0.0001", "openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}
    assert level0_mpp(properties, None, "s") == (0.25, "openslide mpp-x/y")
    with pytest.raises(MissingMppError, match="aperio MPP give 0.0001 µm/px"):
        level0_mpp({"aperio.MPP": "0.0001"}, None, "s")


def test_an_implausible_manifest_mpp_is_refused_not_used():
    with pytest.raises(SlideError, match="manifest column 'mpp' is 352.8 µm/px, outside"):
        level0_mpp({}, 352.8, "s")


def test_a_thumbnail_too_large_to_allocate_is_refused_before_allocating(tmp_path):
    slide = Slide.open(write_slide(tmp_path / "s.tiff", tissue_image(512)))
    with pytest.raises(SlideError, match=r"thumbnail at 0.0001 µm/px would be 2560000 x 2560000 px"):
        read_thumbnail(slide, 0.0001)


def test_an_unexpected_error_on_one_slide_is_its_row_and_the_others_go_on(tmp_path, monkeypatch):
    import pathme.viz.preview as preview

    paths = [write_slide(tmp_path / f"s{i}.tiff", tissue_image(1200, seed=i)) for i in range(3)]
    real = preview.plan_regions

    def plan(slide, tissue):
        if slide.slide_id == "s1":
            raise MemoryError("no room for it")
        return real(slide, tissue)

    monkeypatch.setattr(preview, "plan_regions", plan)
    manifest = write_manifest(tmp_path, [{"slide_id": p.stem, "path": p.name} for p in paths])
    summary = preview.preview_manifest(manifest, tmp_path / "out").set_index("slide_id")
    assert summary.loc["s1", "error"] == "MemoryError: no room for it"
    assert summary.loc[["s0", "s2"], "error"].tolist() == ["", ""]
    assert (tmp_path / "out" / "preview_summary.csv").is_file()


# K3: a slide that yields nothing says why


def test_a_grayscale_slide_has_no_region_and_says_it_has_one_channel(tmp_path):
    slide = Slide.open(write_slide(tmp_path / "gray.tiff", grayscale(tissue_image(2000, seed=3))))
    assert slide.channels == 1
    plan = plan_regions(slide)
    assert plan.regions == [] and "single-channel (grayscale)" in plan.reason


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (tissue_image(200), "smaller than one 20x tile (256 x 256 px at level 0)"),
        (np.full((3000, 2000, 3), GLASS, dtype=np.uint8), "no tissue found"),
        (half_tissue(INK["blue"])[:, 2000:], "only pen ink found"),
    ],
    ids=["smaller-than-a-tile", "blank", "only-ink"],
)
def test_a_slide_without_region_says_why(tmp_path, image, reason):
    plan = plan_regions(Slide.open(write_slide(tmp_path / "s.tiff", image)))
    assert plan.regions == [] and reason in plan.reason


def test_tissue_with_no_tile_of_enough_tissue_says_so(tmp_path):
    image = tissue_image(2048, blob=(1024, 1024, 290, 290))  # centred on a tile corner: no tile wholly tissue
    plan = plan_regions(Slide.open(write_slide(tmp_path / "s.tiff", image)), TissueConfig(min_tile_fraction=1.0))
    assert plan.regions == [] and "no 20x tile is at least 100% tissue" in plan.reason


@pytest.mark.parametrize("side", [400, 600])
def test_a_slide_smaller_than_the_minimum_tissue_area_keeps_its_tissue(tmp_path, side):
    # 400 px at 0.5 µm/px is 200 x 200 µm = 0.04 mm², below the 0.05 mm² minimum piece of tissue
    image = tissue_image(side, blob=(side / 2, side / 2, side, side))  # tissue everywhere
    plan = plan_regions(Slide.open(write_slide(tmp_path / "s.tiff", image)))
    assert plan.reason == "" and valid_tiles(plan) == (side // 256) ** 2
    assert plan.tissue_fraction > 0.9  # tissue up to the slide's edge, not a band short of it (0.44 before)


# K4: reader errors name the cause and the way out


def test_auto_reads_what_cucim_cannot_decode_with_openslide_and_says_so(tmp_path):
    path = write_slide(tmp_path / "rgba.tiff", rgba(tissue_image(1200)))
    slide = Slide.open(path)
    assert slide.backend == "openslide"
    assert "cucim cannot decode it" in slide.reader_note and "read with openslide" in slide.reader_note
    assert valid_tiles(plan_regions(slide)) > 0
    with pytest.raises(SlideError, match="by cucim .*not supported.*try reader backend 'auto'") as error:
        Slide.open(path, backend="cucim")
    assert "damaged" not in str(error.value)


def test_a_file_no_reader_can_open_names_every_reader_and_why(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("these are not pixels\n")
    with pytest.raises(SlideError, match="cannot be opened as a slide by cucim or openslide") as error:
        Slide.open(path)
    message = str(error.value)
    assert "cucim: " in message and "openslide: " in message and "damaged" not in message


# K5: pen ink is not tissue


@pytest.mark.parametrize("colour", sorted(INK))
def test_marker_ink_on_glass_yields_no_valid_tile(tmp_path, colour):
    clean = plan_regions(Slide.open(write_slide(tmp_path / "clean.tiff", half_tissue())))
    inked = plan_regions(Slide.open(write_slide(tmp_path / "inked.tiff", half_tissue(INK[colour]))))
    boxes = [
        box
        for region in inked.regions
        for box, valid in zip(inked.grid.tile_boxes((region.x, region.y), 16), region.valid_l0, strict=True)
        if valid
    ]
    assert boxes and max(x + w for x, _, w, _ in boxes) <= 2000  # every valid tile on the tissue half
    assert valid_tiles(inked) == valid_tiles(clean)
    assert inked.ink_fraction > 0.05 and not clean.ink.any()


@pytest.mark.parametrize("colour", sorted(INK))
def test_tissue_touching_ink_keeps_its_tiles(tmp_path, colour):
    image = half_tissue()
    clean = valid_tiles(plan_regions(Slide.open(write_slide(tmp_path / "clean.tiff", image))))
    image[200:1800, 1800:2200] = INK[colour]  # the stroke runs along the tissue's right edge
    inked = valid_tiles(plan_regions(Slide.open(write_slide(tmp_path / "inked.tiff", image))))
    assert inked >= 0.95 * clean


def test_dark_hematoxylin_dense_tissue_is_never_taken_for_ink(tmp_path, cmu_slide):
    tiles = tumour_tiles(tumour_stains(harvest_tiles(cmu_slide)), grade=1.0)  # the demo's darkest tumour texture
    side = tiles.shape[1]
    image = np.full((2048, 2048, 3), GLASS, dtype=np.uint8)
    for index in range(144):  # a 12 x 12 mosaic in the middle of the glass
        row, col = divmod(index, 12)
        y, x = 256 + row * side, 256 + col * side
        image[y : y + side, x : x + side] = tiles[index % len(tiles)]
    slide = Slide.open(write_slide(tmp_path / "dark.tiff", image))
    plan = plan_regions(slide)
    assert not plan.ink.any()
    assert valid_tiles(plan) == valid_tiles(plan_regions(slide, TissueConfig(ink=False))) > 0


ORANGE = np.array([int(INK_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
INVALID_GREY = [int(INVALID_COLOUR[i : i + 2], 16) for i in (1, 3, 5)]


def test_the_preview_shows_the_slide_in_its_colours_and_outlines_what_was_rejected_as_ink(tmp_path):
    write_slide(tmp_path / "inked.tiff", half_tissue(INK["blue"]))
    out = tmp_path / "previews"
    assert main(["preview", "--manifest", str(write_manifest(tmp_path, [{"slide_id": "inked", "path": "inked.tiff"}])),
                 "--output-dir", str(out)]) == 0  # fmt: skip
    summary = pd.read_csv(out / "preview_summary.csv")
    assert summary.loc[0, "ink_fraction"] > 0.05
    with Image.open(out / "inked_preview.png") as preview:
        pixels = np.asarray(preview.convert("RGB")).astype(float)
    # the image sits at (PAD_PX, TITLE_PX): the 250 x 125 px thumbnail at 8 µm/px, enlarged 4 times to 1000 x 500
    image = pixels[TITLE_PX : TITLE_PX + 500, PAD_PX : PAD_PX + 1000]
    thumbnail = read_thumbnail(Slide.open(tmp_path / "inked.tiff"), 8.0).repeat(4, axis=0).repeat(4, axis=1)
    tissue = (slice(200, 300), slice(200, 300))  # inside the blob (level-0 x, y 800-1200), away from tile lines
    assert np.median(np.abs(image[tissue] - thumbnail[tissue])) == 0  # H&E as it is, no tint
    stroke = image[100:400, 720:780].reshape(-1, 3)  # level-0 x 2880-3120: greyed (not encoded), not tinted
    expected = (1 - INVALID_ALPHA) * np.array(INK["blue"]) + INVALID_ALPHA * np.array(INVALID_GREY)
    np.testing.assert_allclose(np.median(stroke, axis=0), expected, atol=2)
    edge = image[100:400, 690:712].reshape(-1, 3)  # the stroke's left edge (x 700): its orange outline
    assert (np.abs(edge - ORANGE).sum(axis=1) < 60).sum() >= 100
    assert not (np.abs(image[100:400, 100:400].reshape(-1, 3) - ORANGE).sum(axis=1) < 60).any()  # none on tissue
