"""Tissue masks and attention maps as NIfTI: spacing, units, orientation and place read back with nibabel and
MONAI, one world frame for both maps of a slide, and the files written by preview, MIL heatmaps and the Deploy
report step."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from monai.transforms import EnsureChannelFirst, LoadImage, Orientation
from nibabel.affines import apply_affine
from real_inputs import tissue_image, write_slide

from pathme.data.bags import BagIndex
from pathme.deploy.pipeline import Case, _slide_predictions
from pathme.engines.mil import MILTask
from pathme.engines.mil_outputs import slide_rows
from pathme.store.attrs import write_attrs
from pathme.store.digests import slide_fingerprint
from pathme.synthetic.stores import write_store
from pathme.viz.heatmap import AttentionMap, ColourScale, write_slide_heatmap
from pathme.viz.nifti import map_affine, write_map_nifti
from pathme.viz.preview import preview_manifest
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.tissue import TissueConfig

MPP, TILE = 0.5, 1024  # the slide's level-0 µm/px; attention tiles of 1024 level-0 px (512 µm)


def test_a_map_reads_back_with_its_spacing_place_units_and_values(tmp_path: Path) -> None:
    values = np.arange(15, dtype=np.float32).reshape(3, 5)  # H = 3 rows, W = 5 columns
    path = write_map_nifti(tmp_path / "map.nii.gz", values, mpp=0.25, downsample=64, description="a map")
    image = nib.load(path)
    assert image.shape == (5, 3) and image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(image.dataobj).T, values)
    assert image.header.get_zooms() == (16.0, 16.0)  # 0.25 µm/px x 64 level-0 px per map pixel
    assert image.header.get_xyzt_units() == ("micron", "unknown")
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.header["descrip"].item() == b"a map"
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 2
    np.testing.assert_allclose(image.get_qform(), image.get_sform())
    # the centre of pixel (row 2, column 4) lies at level-0 (4.5, 2.5) x 64 px = (72, 40) µm: RAS (-72, -40, 0)
    np.testing.assert_allclose(apply_affine(image.affine, [4, 2, 0]), [-72.0, -40.0, 0.0])
    np.testing.assert_allclose(apply_affine(image.affine, [0, 0, 0]), [-8.0, -8.0, 0.0])
    again = write_map_nifti(tmp_path / "again.nii.gz", values, mpp=0.25, downsample=64, description="a map")
    assert again.read_bytes() == path.read_bytes()  # the same map, the same bytes


def test_monai_loads_a_map_with_its_spacing_and_orientation(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    path = write_map_nifti(tmp_path / "mask.nii.gz", mask, mpp=MPP, downsample=16)
    loaded = LoadImage(image_only=True)(path)
    assert tuple(loaded.shape) == (6, 4)
    np.testing.assert_array_equal(loaded.numpy().T, mask.astype(np.uint8))
    np.testing.assert_allclose(loaded.pixdim.numpy(), [8.0, 8.0])
    assert nib.aff2axcodes(loaded.affine.numpy()) == ("L", "P", "S")
    np.testing.assert_allclose(loaded.affine.numpy(), map_affine(MPP, 16))
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    same = Orientation(axcodes="LP", labels=labels)(EnsureChannelFirst(channel_dim="no_channel")(loaded))
    np.testing.assert_array_equal(same[0].numpy(), loaded.numpy())  # already LP: nothing moves
    flipped = Orientation(axcodes="RA", labels=labels)(EnsureChannelFirst(channel_dim="no_channel")(loaded))
    np.testing.assert_array_equal(flipped[0].numpy(), loaded.numpy()[::-1, ::-1])


@pytest.mark.parametrize(
    ("values", "mpp", "downsample", "problem"),
    [
        (np.zeros((2, 2, 2)), 0.5, 16, "2-D"),
        (np.zeros((0, 3)), 0.5, 16, "empty"),
        (np.zeros((2, 2)), 0.0, 16, "positive"),
        (np.zeros((2, 2)), 0.5, float("nan"), "positive"),
    ],
)
def test_a_map_that_is_not_2d_or_has_no_positive_spacing_is_refused(tmp_path, values, mpp, downsample, problem):
    with pytest.raises(ValueError, match=problem):
        write_map_nifti(tmp_path / "bad.nii.gz", values, mpp, downsample)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4096 x 4096 px at 0.5 µm/px, an elliptical tissue blob in its middle on glass (the size of one region)."""
    return write_slide(tmp_path_factory.mktemp("slide") / "s1.tiff", tissue_image(4096, seed=3), mpp=MPP)


def _tiles() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attention weights of 15 1024-px tiles on a 4 x 4 grid, all but the bottom-right one, scored by position,
    the tile of row 1, column 2 highest."""
    ys, xs = np.mgrid[0:4, 0:4] * TILE
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)[:15]
    scores = np.linspace(0.01, 0.05, 15)
    scores[1 * 4 + 2] = 0.4
    return coords, np.full(15, float(TILE)), scores / scores.sum()


def _mil_heatmap(slide: Path, folder: Path) -> Path:
    """The NIfTI heatmap MIL's slide rows draw for s1: a real store whose provenance names ``slide`` (its file and
    fingerprint)."""
    stores = folder / "stores"
    stores.mkdir(parents=True)
    write_store(stores, "s1", "p1", ["full"], {"tiny-vit": 4})
    with h5py.File(stores / "s1.h5", "a") as file:
        write_attrs(file, {"slide_path": str(slide), "slide_digest": slide_fingerprint(slide)})
    coords, sizes, scores = _tiles()
    record = {"patient_id": "p1", "slide_ids": ["s1"], "slide_index": np.zeros(15, int), "coords": coords}
    record |= {"sizes": sizes, "attention": scores, "probs": np.array([0.3, 0.7])}
    task = MILTask("label", ("0", "1"))
    (row,) = slide_rows([record], BagIndex(stores, "tiny-vit"), task, folder / "heatmaps", heatmap_mpp=16.0)
    assert row["status"] == "done", row
    assert Path(row["png"]).is_file() and Path(row["geojson"]).is_file()
    assert row["nifti"] == str(folder / "heatmaps" / "s1_attention.nii.gz")
    return Path(row["nifti"])


def test_preview_and_mil_write_masks_and_heatmaps_in_one_world_frame(tissue_slide: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path\ns1,{tissue_slide}\n")
    summary = preview_manifest(manifest, tmp_path / "previews").set_index("slide_id")
    mask_path = tmp_path / "previews" / "s1_tissue.nii.gz"
    assert summary.loc["s1", "tissue_mask"] == str(mask_path) and (tmp_path / "previews" / "s1_preview.png").is_file()
    assert pd.read_csv(tmp_path / "previews" / "preview_summary.csv").loc[0, "tissue_mask"] == str(mask_path)
    heatmap_path = _mil_heatmap(tissue_slide, tmp_path / "mil")

    slide = Slide.open(tissue_slide)
    mask, heatmap = nib.load(mask_path), nib.load(heatmap_path)
    plan = plan_regions(slide)  # what the preview's green tint shows
    np.testing.assert_array_equal(np.asarray(mask.dataobj).T, plan.mask.astype(np.uint8))
    coords, sizes, scores = _tiles()
    grid = AttentionMap.paint(coords, sizes, scores, slide.size, slide.mpp).grid  # what the PNG's colours show
    assert np.isnan(grid[3, 3]) and np.isfinite(grid[:3]).all()  # no token on the bottom-right cell
    np.testing.assert_array_equal(np.asarray(heatmap.dataobj).T, np.nan_to_num(grid))  # where it holds 0
    assert heatmap.get_data_dtype() == np.float32 and mask.get_data_dtype() == np.uint8
    assert mask.header.get_zooms() == (TissueConfig().mpp,) * 2 == (8.0, 8.0)
    assert heatmap.header.get_zooms() == (TILE * MPP,) * 2 == (512.0, 512.0)

    # level-0 points in px: each map's voxel coordinate of the point goes to the same world position, -point µm
    points = np.array([[0.0, 0.0], [2560.0, 1536.0], [4000.0, 123.0], [777.0, 3210.0]])
    for affine, per_pixel in ((mask.affine, TissueConfig().mpp / MPP), (heatmap.affine, TILE)):
        voxels = np.column_stack([points / per_pixel - 0.5, np.zeros(len(points))])
        np.testing.assert_allclose(apply_affine(affine, voxels)[:, :2], -points * MPP, atol=1e-9)
    # and back: the world position of the centre tile's centre is tissue in the mask, the top score in the heatmap
    world = apply_affine(heatmap.affine, [2, 1, 0])
    i, j, _ = np.rint(apply_affine(np.linalg.inv(mask.affine), world)).astype(int)
    assert np.asarray(mask.dataobj)[i, j] == 1
    assert np.asarray(heatmap.dataobj)[2, 1] == pytest.approx(scores.max())
    corner = np.rint(apply_affine(np.linalg.inv(mask.affine), apply_affine(heatmap.affine, [0, 0, 0]))).astype(int)
    assert np.asarray(mask.dataobj)[corner[0], corner[1]] == 0  # the corner tile is glass


def test_the_deploy_report_carries_the_nifti_heatmap_beside_the_png(tissue_slide: Path, tmp_path: Path) -> None:
    heatmaps = tmp_path / "work" / "mil" / "label" / "heatmaps"
    slide = Slide.open(tissue_slide)
    attention = AttentionMap.paint(*_tiles(), slide.size, slide.mpp)
    paths = write_slide_heatmap(slide, heatmaps, "s1", attention, ColourScale.of_run([attention]), heatmap_mpp=16.0)
    assert set(paths) == {"png", "geojson", "nifti"}
    predictions = pd.DataFrame([{"patient_id": "s1", "prob_0": 0.3, "prob_1": 0.7, "predicted": "1"}])
    case = Case(slides=(tissue_slide,), work=tmp_path / "work", predictions={"label": predictions})
    folder = tmp_path / "out" / "s1"
    folder.mkdir(parents=True)
    entry = _slide_predictions(case, "s1", folder)["label"]
    assert entry["heatmap_nifti"] == "label_attention.nii.gz" and entry["heatmap_png"] == "label_attention.png"
    assert (folder / "label_attention.nii.gz").read_bytes() == paths["nifti"].read_bytes()
    assert LoadImage(image_only=True)(folder / "label_attention.nii.gz").pixdim.tolist() == [512.0, 512.0]


@pytest.mark.parametrize("per_slide", [False, True], ids=["run scale", "per-slide contrast"])
def test_a_runs_slides_give_one_attention_value_one_colour_unless_per_slide(tmp_path: Path, per_slide: bool) -> None:
    """slide_rows colours every slide of a run on one scale: a value two slides share has one colour in both
    GeoJSONs (their images are gone here: the GeoJSON is drawn from the stores alone); per-slide contrast does not."""
    stores = tmp_path / "stores"
    stores.mkdir()
    coords = np.array([[x, y] for y in range(0, 4096, TILE) for x in range(0, 4096, TILE)])
    records = []
    for slide_id, top in (("s1", 0.3), ("s2", 0.9)):  # 0.3 is on both; s2 reaches 0.9, s1 only 0.3
        write_store(stores, slide_id, f"p{slide_id}", ["full"], {"tiny-vit": 4})
        attention = np.linspace(0.01, top, 16)
        attention[5] = 0.3
        record = {"patient_id": f"p{slide_id}", "slide_ids": [slide_id], "slide_index": np.zeros(16, int)}
        records.append(record | {"coords": coords, "sizes": np.full(16, float(TILE)), "attention": attention})
        records[-1]["probs"] = np.array([0.5, 0.5])
    rows = slide_rows(records, BagIndex(stores, "tiny-vit"), MILTask("label", ("0", "1")), tmp_path / "heat",
                      per_slide_contrast=per_slide)  # fmt: skip
    assert [row["status"] for row in rows] == ["geojson only", "geojson only"]
    colours = []
    for slide_id in ("s1", "s2"):
        features = json.loads((tmp_path / "heat" / f"{slide_id}_attention.geojson").read_text())["features"]
        (shared,) = [f for f in features if f["properties"]["measurements"]["attention"] == pytest.approx(0.3)][:1]
        colours.append(shared["properties"]["color"])
    assert (colours[0] == colours[1]) is not per_slide
