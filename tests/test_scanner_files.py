"""Real scanners' files (issue 23): nominal 20x µm/px either side of 0.5, files holding two scenes or stray images,
16-bit samples, a corrupt JPEG tile, and the one-line reason a slide that fails in a reader process gets."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from real_inputs import tissue_image, write_manifest, write_slide
from torch.utils.data import DataLoader

from pathme.data.distill_dataset import RegionStoreDataset
from pathme.data.view_dataset import ViewDataset
from pathme.data.views import collate_regions
from pathme.engines.extraction import CohortExtractor
from pathme.store import StoreError
from pathme.store.provenance import read_provenance
from pathme.synthetic.slides import write_pyramid
from pathme.synthetic.stores import write_store
from pathme.viz.preview import preview_manifest
from pathme.wsi.reading import read_thumbnail
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError, error_reason

EXPERTS = ["tiny-vit"]


def _on_glass(tissue: np.ndarray, width: int, height: int, x: int = 40, y: int = 40) -> np.ndarray:
    canvas = np.full((height, width, 3), 243, np.uint8)
    h, w = min(tissue.shape[0], height - y), min(tissue.shape[1], width - x)
    canvas[y : y + h, x : x + w] = tissue[:h, :w]
    return canvas


def _extract(manifest: Path, output: Path, **settings) -> pd.DataFrame:
    return CohortExtractor(manifest, output, EXPERTS, device="cpu", **settings).run().set_index("slide_id")


# kind 1: one µm/px policy for every stage (t18)


def test_nominal_20x_scans_either_side_of_0_5_are_read_and_a_coarse_one_refused_alike(tmp_path, cmu_pixels):
    """Aperio 20x scans carry 0.499-0.504 µm/px: preview accepted 0.504 and extraction refused it ("coarser than the
    0.5 µm/px asked for"); a 0.75 µm/px scan passed preview. Now preview and extraction decide alike: 0.504 is read
    at 20x (the stretch said in both summaries and recorded in the store), 0.75 is refused by both, in one line."""
    rows = []
    for slide_id, mpp in (("m504", 0.504), ("m499", 0.499), ("m75", 0.75)):
        image = _on_glass(cmu_pixels[:1500, :1500], 1600, 1600)
        scale = 0.499 / mpp  # the same tissue area on every slide
        image = np.asarray(Image.fromarray(image).resize((round(1600 * scale),) * 2, Image.Resampling.BICUBIC))
        write_pyramid(tmp_path / f"{slide_id}.svs", image, mpp, "svs", (1, 4), compression="jpeg")
        rows.append({"slide_id": slide_id, "path": f"{slide_id}.svs"})
    manifest = write_manifest(tmp_path, rows)
    preview = preview_manifest(manifest, tmp_path / "preview").set_index("slide_id")
    extracted = _extract(manifest, tmp_path / "features")
    for slide_id in ("m504", "m499"):
        assert preview.loc[slide_id, "error"] == "" and extracted.loc[slide_id, "status"] == "done"
    stretch = "read at 0.5 µm/px from level 0 at 0.5040 µm/px, resampled up by 0.8% (within the 5% µm/px tolerance)"
    assert preview.loc["m504", "note"] == stretch == extracted.loc["m504", "note"]
    assert read_provenance(tmp_path / "features" / "m504.h5").resampling == stretch
    assert read_provenance(tmp_path / "features" / "m499.h5").resampling == ""
    reason = preview.loc["m75", "error"]
    assert reason.startswith("slide m75: level 0 is 0.7500 µm/px (about 13.3x), 50% coarser than the 0.5 µm/px")
    assert extracted.loc["m75", "status"] == "failed" and extracted.loc["m75", "error"] == reason
    assert "\n" not in reason and not (tmp_path / "features" / "m75.h5").exists()
    refused = _extract(manifest, tmp_path / "strict", mpp_tolerance=0.0)
    assert refused.loc["m504", "status"] == "failed" and "beyond the 0% µm/px tolerance" in refused.loc["m504", "error"]
    rerun = _extract(manifest, tmp_path / "features", mpp_tolerance=0.0)  # its stores were read under 5 %
    assert rerun.loc["m504", "status"] == "failed" and rerun.loc["m504", "error"] == refused.loc["m504", "error"]
    assert rerun.loc["m499", "status"] == "skipped (valid store)"


# kind 4: readers that hand over pixels that cannot be right (t05, t07)


def _pyramid_pages(image: np.ndarray, mpp: float = 0.5) -> list[tuple[np.ndarray, dict]]:
    """Levels 1, 4 and 16 of ``image`` as tifffile pages (level 0 full resolution, the others flagged reduced)."""
    height, width = image.shape[:2]
    pages = []
    for level, d in enumerate((1, 4, 16)):
        data = image if d == 1 else np.asarray(Image.fromarray(image).resize((round(width / d), round(height / d))))
        options = {"photometric": "rgb", "tile": (256, 256), "compression": "jpeg", "subfiletype": int(level > 0)}
        pages.append((data, options | {"resolution": (1e4 / (mpp * d),) * 2, "resolutionunit": "CENTIMETER"}))
    return pages


def _write_pages(path: Path, pages: list[tuple[np.ndarray, dict]]) -> Path:
    with tifffile.TiffWriter(path) as tif:
        for data, options in pages:
            tif.write(data, metadata=None, **options)
    return path


@pytest.fixture(scope="module")
def scenes(cmu_pixels) -> tuple[np.ndarray, np.ndarray]:
    """Two sections as two scenes would hold them: A upright, B another section on a wider canvas."""
    a = _on_glass(cmu_pixels[:1800, :1400], 1500, 1900)
    b = _on_glass(np.ascontiguousarray(cmu_pixels[:1400, :1800][::-1]), 2300, 1600)
    return a, b


def test_a_tiff_holding_two_scenes_is_refused_by_preview_and_extraction(tmp_path, scenes):
    """t05: OpenSlide listed scene B's reduced images as levels of scene A and dropped B without a word, so A's
    16 µm/px tissue mask came from B's pixels. A second main image is now refused at open, naming both."""
    path = _write_pages(tmp_path / "two.tif", _pyramid_pages(scenes[0]) + _pyramid_pages(scenes[1]))
    two = r"holds 2 main images \(scenes, sections or planes: 1500 x 1900, 2300 x 1600 px"
    for backend in ("cucim", "openslide"):
        with pytest.raises(SlideError, match=two):
            Slide.open(path, backend)
    manifest = write_manifest(tmp_path, [{"slide_id": "two", "path": "two.tif"}])
    preview = preview_manifest(manifest, tmp_path / "preview").set_index("slide_id")
    assert "holds 2 main images" in preview.loc["two", "error"]
    assert not (tmp_path / "preview" / "two_tissue.nii.gz").exists()
    assert "holds 2 main images" in _extract(manifest, tmp_path / "features").loc["two", "error"]


def test_an_image_of_another_aspect_ratio_is_never_used_as_a_level(tmp_path, scenes, caplog):
    """A stray reduced image (another section's overview) that OpenSlide lists among the levels is left out, with
    a warning: the thumbnail is scene A's, as read from level 0 and its own levels."""
    a, b = scenes
    stray = np.asarray(Image.fromarray(b).resize((b.shape[1] // 8, b.shape[0] // 8)))
    pages = [*_pyramid_pages(a)[:2], (stray, _pyramid_pages(b)[1][1]), *_pyramid_pages(a)[2:]]
    path = _write_pages(tmp_path / "stray.tif", pages)
    slide = Slide.open(path, "openslide")
    assert slide.level_sizes == [(1500, 1900), (375, 475), (94, 119)]
    assert "reader level 2 (287 x 200 px) is not a reduction of level 0" in caplog.text
    clean = Slide.open(_write_pages(tmp_path / "clean.tif", _pyramid_pages(a)), "openslide")
    np.testing.assert_array_equal(read_thumbnail(slide, 16.0), read_thumbnail(clean, 16.0))


@pytest.mark.parametrize(
    ("dtype", "photometric", "what"),
    [
        (np.uint16, "rgb", "it stores 16-bit unsigned samples, and pathme's experts take 8-bit"),
        (np.float32, "rgb", "it stores 32-bit floating-point samples, and pathme's experts take 8-bit"),
        (np.uint8, "separated", r"it stores SEPARATED pixels \(pathme reads gray, RGB, YCbCr or palette"),
    ],
)
def test_pixels_pathme_cannot_represent_are_refused(tmp_path, dtype, photometric, what):
    """The readers cast 16-bit or float samples to 8 bits, and read CMYK as RGB: refused at open instead."""
    image = (tissue_image(512).astype(np.float32) * {np.uint16: 257, np.float32: 1 / 255, np.uint8: 1}[dtype]).astype(
        dtype
    )
    if photometric == "separated":
        image = np.concatenate([image, image[..., :1]], axis=2)
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, image, photometric=photometric, tile=(256, 256), resolution=(2e4, 2e4), resolutionunit=3)
    with pytest.raises(SlideError, match=what):
        Slide.open(path)


def test_a_second_plane_of_level_0_s_size_is_a_second_main_image(tmp_path, scenes):
    """Two focal planes (or channels) of one size: the readers read the first; pathme refuses the file."""
    path = _write_pages(tmp_path / "planes.tif", [_pyramid_pages(scenes[0])[0], _pyramid_pages(scenes[0][::-1])[0]])
    with pytest.raises(SlideError, match=r"holds 2 main images \(scenes, sections or planes: 1500 x 1900, 1500 x 1900"):
        Slide.open(path)


def _zero_tile(path: Path, row: int, col: int, last: int | None = None) -> None:
    """Overwrite level 0's tile (row, col) with zeros (only its ``last`` bytes, when given), the file size and every
    offset unchanged."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        index = row * -(-page.imagewidth // page.tilewidth) + col
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with path.open("r+b") as handle:
        handle.seek(offset + count - (last or count))
        handle.write(bytes(last or count))


def test_a_tile_cut_short_is_named_before_it_is_decoded_and_its_neighbours_read(tmp_path):
    """A JPEG tile whose stream ends early (CLAM #181: "premature end of data segment") is named by the read that
    covers it; reads beside it are untouched."""
    path = tmp_path / "cut.svs"
    write_pyramid(path, tissue_image(1024), 0.5, "svs", (1, 4), compression="jpeg")
    _zero_tile(path, 2, 1, last=16)
    slide = Slide.open(path)
    with pytest.raises(SlideError, match=r"tile column 1, row 2 of level 0 .* its stream ends before its end marker"):
        slide.read_level(0, 200, 500, 300, 100)
    assert slide.read_level(0, 0, 0, 256, 256).shape == (256, 256, 3)


@pytest.mark.parametrize("backend", ["auto", "openslide"])
def test_a_corrupt_jpeg_tile_fails_its_slide_in_one_line_naming_the_tile(tmp_path, cmu_pixels, backend):
    """t07: cuCIM decoded a zeroed JPEG tile as black and the slide was 'done' with that tile encoded as tissue;
    OpenSlide failed it, but the summary held the 44-line DataLoader-worker traceback. Both now fail the slide with
    one line naming the tile, before any reader decodes it; the intact slide beside it is done."""
    image = _on_glass(cmu_pixels[:2100, :1700], 1800, 2200)
    for slide_id in ("good", "bad"):
        write_pyramid(tmp_path / f"{slide_id}.svs", image, 0.5, "svs", (1, 4), compression="jpeg")
    _zero_tile(tmp_path / "bad.svs", 5, 4)  # level-0 px x 1024-1280, y 1280-1536: tissue
    manifest = write_manifest(tmp_path, [{"slide_id": s, "path": f"{s}.svs"} for s in ("good", "bad")])
    summary = _extract(manifest, tmp_path / "features", reader_backend=backend, num_workers=1)
    assert summary.loc["good", "status"] == "done"
    error = summary.loc["bad", "error"]
    assert summary.loc["bad", "status"] == "failed" and "\n" not in error
    assert error.startswith(
        f"slide bad: tile column 4, row 5 of level 0 (level px x 1024-1280, y 1280-1536) of {tmp_path / 'bad.svs'} "
        "is not a whole compressed image: its stream starts with 00 00, not the start marker ff d8"
    )
    assert not (tmp_path / "features" / "bad.h5").exists()


# kind 6: the one-line reason of an error raised in a DataLoader worker


def test_a_reader_process_error_reaches_the_summary_as_its_one_line_reason(tmp_path, monkeypatch):
    """An unexpected error in a region-reading worker is named by type and message, not torch's rebuilt
    'Caught ... in DataLoader worker process 0 / Original Traceback' text."""
    import pathme.engines.region_loader as loader

    def broken(slide, region):
        raise MemoryError("no room for this region")

    monkeypatch.setattr(loader, "read_region_tiles", broken)  # inherited by the forked worker
    write_slide(tmp_path / "s.tiff", tissue_image(1200))
    manifest = write_manifest(tmp_path, [{"slide_id": "s", "path": "s.tiff"}])
    summary = _extract(manifest, tmp_path / "features", num_workers=1)
    assert summary.loc["s", "error"] == "MemoryError: no room for this region"


def test_an_unreadable_region_in_a_distillation_worker_is_one_line_naming_store_and_region(tmp_path):
    """The same fault in the distillation's loader: a store whose chunk no longer reads (h5py's OSError names
    neither file nor region) stops the run with one line naming both."""
    write_store(tmp_path, "s0", "p0", ["full", "full"], {"a": 8, "b": 8})
    path = tmp_path / "s0.h5"
    dataset = ViewDataset(RegionStoreDataset(tmp_path, "a", "b"))  # validated here, intact
    with h5py.File(path, "r") as file:
        offset = file["features/a/L0"].id.get_chunk_info(1).byte_offset
    with path.open("r+b") as handle:  # flip bytes of region 1's chunk of features/a/L0: its Fletcher-32 fails
        handle.seek(offset)
        handle.write(b"\xff" * 64)
    with pytest.raises(StoreError) as caught:
        list(DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate_regions))
    reason = error_reason(caught.value)
    assert reason.startswith(f"{path}: region 1 cannot be read (") and reason.endswith("extract the slide again")
    assert "\n" not in reason and str(caught.value).startswith("Caught StoreError in DataLoader worker process 0")
