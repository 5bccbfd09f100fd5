"""Shared fixtures: the real CMU H&E slide (fetched once, cached) and synthetic pyramids with known pixels."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pathme.synthetic.slides import write_pyramid

REPO = Path(__file__).resolve().parents[1]

#: session fixtures that take minutes to build (a demo cohort, its stores, a distilled teacher): a test that uses one
#: is ``slow`` by that alone, so ``pytest -m "not slow"`` (the fast tier) never builds them
DEMO_FIXTURES = {"demo_cohort", "demo_features", "demo_teacher", "demo_tokens"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs a :data:`DEMO_FIXTURES` fixture."""
    for item in items:
        if DEMO_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where downloaded test data lives between runs (``PATHME_CACHE`` or ``<repo>/.cache``)."""
    path = Path(os.environ.get("PATHME_CACHE", REPO / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cmu_slide(cache_dir: Path) -> Path:
    """The real H&E slide cmu_small_region.svs (2220 x 2967 px, 0.499 µm/px), checked by sha256."""
    from pathme.demo.sample_data import fetch_sample_slide

    return fetch_sample_slide(cache_dir)


@pytest.fixture(scope="session")
def cmu_pixels(cmu_slide: Path) -> np.ndarray:
    """Level-0 pixels of the CMU slide, as realistic content for synthetic pyramids."""
    from pathme.wsi.slide import Slide

    slide = Slide.open(cmu_slide)
    return slide.read_level(0, 0, 0, *slide.size)


def block_pattern(height: int, width: int, block: int, seed: int = 0) -> np.ndarray:
    """An image of ``block`` x ``block`` squares of random colours: its area averages are known exactly."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(-(-height // block), -(-width // block), 3), dtype=np.uint8)
    return np.repeat(np.repeat(colours, block, axis=0), block, axis=1)[:height, :width]


@pytest.fixture
def make_slide(tmp_path: Path) -> Callable[..., Path]:
    """Write a synthetic pyramid into the test's folder and return its path."""

    def make(
        image: np.ndarray,
        mpp: float | None,
        flavour: str = "tiff",
        downsamples: tuple[float, ...] = (1, 4, 16),
        magnification: float | None = None,
        name: str | None = None,
    ) -> Path:
        suffix = ".svs" if flavour == "svs" else ".tiff"
        path = tmp_path / f"{name or f'{flavour}_{mpp}'}{suffix}"
        write_pyramid(path, image, mpp, flavour, downsamples, magnification)
        return path

    return make


DEMO_SLIDES = 40  # 32 patients: 5-fold MIL with 6-7 test patients per fold, both classes in each
DEMO_EXPERTS = ["tiny-vit", "tiny-cnn"]


@pytest.fixture(scope="session")
def demo_cohort(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo cohort from real H&E pixels (slides, manifest.csv, labels.csv, planted.csv); returns its folder."""
    from pathme.demo.cohort_generator import make_demo_cohort

    return make_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", cmu_slide, n_slides=DEMO_SLIDES).parent


@pytest.fixture(scope="session")
def demo_features(demo_cohort: Path) -> Path:
    """The demo cohort's region stores, extracted with the tiny random-weight experts."""
    from pathme.engines.extraction import CohortExtractor

    output = demo_cohort.parent / "features"
    summary = CohortExtractor(demo_cohort / "manifest.csv", output, DEMO_EXPERTS, batch_size=64).run()
    assert (summary["status"] == "done").all(), summary
    return output


@pytest.fixture(scope="session")
def demo_teacher(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``teacher.pt`` of a tiny teacher distilled on *other* slides than the demo cohort (a second cohort,
    seed 1), so no patient evaluated by MIL was seen in distillation."""
    from bundle_config import tiny_distillation

    from pathme.demo.cohort_generator import make_demo_cohort
    from pathme.engines.distill_workflow import DistillationRun
    from pathme.engines.extraction import CohortExtractor

    root = tmp_path_factory.mktemp("pretraining")
    manifest = make_demo_cohort(root / "cohort", cmu_slide, n_slides=8, seed=1)
    CohortExtractor(manifest, root / "features", DEMO_EXPERTS, batch_size=64).run()
    settings = tiny_distillation(dataset_dir=root / "features", output_dir=root / "distill", max_iterations=60)
    DistillationRun(**settings).run()
    return root / "distill" / "teacher.pt"


@pytest.fixture(scope="session")
def demo_tokens(demo_teacher: Path, demo_features: Path) -> Path:
    """PatHME token stores of the demo cohort from the demo teacher."""
    from pathme.engines.embed import EmbedRun

    output = demo_features.parent / "tokens"
    summary = EmbedRun(demo_features, output, demo_teacher).run()
    assert (summary["status"] == "done").all(), summary
    return output
