"""Tissue detection finds the CMU slide's tissue and nothing on blank slides; the preview shows it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathme.viz.preview import save_preview
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.tissue import TissueConfig, box_fractions, tissue_mask


def test_the_tissue_of_the_cmu_slide_is_found(cmu_slide, tmp_path):
    slide = Slide.open(cmu_slide)
    plan = plan_regions(slide)
    # 0.37 measured; the preview shows the whole tissue strip tinted and the white background not
    assert 0.30 <= plan.tissue_fraction <= 0.45
    height, width = plan.mask.shape
    assert not plan.mask[:, : width // 5].any()  # the left fifth is background
    assert plan.mask[height // 2 :, int(width * 0.35) : int(width * 0.6)].mean() > 0.9  # the strip's trunk
    preview = save_preview(plan, slide, TissueConfig().mpp, tmp_path / "cmu_preview.png")
    with Image.open(preview) as image:
        assert image.mode == "RGB" and max(image.size) >= 800


@pytest.mark.parametrize("value", [255, 238])
def test_a_blank_slide_has_no_tissue_and_no_regions(make_slide, value):
    rng = np.random.default_rng(1)
    blank = np.clip(value + rng.normal(0, 3, size=(3000, 2600, 3)), 0, 255).astype(np.uint8)
    plan = plan_regions(Slide.open(make_slide(blank, 0.5)))
    assert not plan.mask.any()
    assert plan.regions == []


def test_specks_smaller_than_the_minimum_area_are_dropped():
    thumbnail = np.full((200, 200, 3), 240, dtype=np.uint8)
    thumbnail[20:24, 20:24] = (150, 60, 130)  # 32 x 32 µm at 8 µm/px: far below 0.05 mm²
    thumbnail[100:150, 100:150] = (190, 110, 170)  # 400 x 400 µm
    mask = tissue_mask(thumbnail)
    assert not mask[10:40, 10:40].any()
    assert mask[105:145, 105:145].all()


def test_box_fractions_count_tissue_inside_each_box():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :4] = True
    boxes = np.array([[0, 0, 8, 8], [0, 0, 16, 16], [8, 8, 8, 8], [4, 0, 8, 8]], dtype=float)
    np.testing.assert_allclose(box_fractions(mask, boxes, scale=0.5), [1.0, 0.25, 0.0, 0.5])


def test_tissue_parameters_are_checked():
    with pytest.raises(ValueError, match="min_tile_fraction"):
        TissueConfig(min_tile_fraction=1.5)
    with pytest.raises(ValueError, match=r"tissue\.mpp"):
        TissueConfig(mpp=0)
