"""Small region stores of random features, written by the real writer, for tests and benchmarks of the stages
after extraction (distillation, tokens, MIL) without slides or encoders."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pathme.store import RegionStoreWriter
from pathme.wsi.grid import REGION_PX, RegionGrid, l1_validity

SLIDE_SIZE = (9000, 5000)


def region_arrays(rule: str, rng: np.random.Generator, dims: dict[str, int]) -> dict:
    """One region's validity and features; invalid tiles hold NaN, which the writer zeroes. Values are float16
    numbers (as float32), so a float16 store holds them exactly."""
    valid_l0 = {"full": np.ones(256, bool), "empty": np.zeros(256, bool), "sparse": rng.random(256) < 0.5}[rule]
    valid_l1 = l1_validity(valid_l0)
    features = {}
    for expert, dim in dims.items():
        l0, l1, l2 = (
            rng.standard_normal(shape).astype(np.float16).astype(np.float32) for shape in ((256, dim), (16, dim), dim)
        )
        l0[~valid_l0], l1[~valid_l1] = np.nan, np.nan
        features[expert] = [l0, l1, l2]
    return {"valid_l0": valid_l0, "valid_l1": valid_l1, "features": features}


def store_attrs(
    slide_id: str, patient_id: str, dims: dict[str, int], slide_size: tuple[int, int] = SLIDE_SIZE
) -> dict[str, object]:
    """Plausible attributes of a random-feature store (a 0.5 µm/px slide, random-weight experts)."""
    return {
        "slide_id": slide_id,
        "patient_id": patient_id,
        "slide_path": f"/data/{slide_id}.svs",
        "slide_size": slide_size,
        "mpp": 0.5,
        "mpp_source": "manifest",
        "reader_backend": "cucim",
        "slide_digest": "sha256:" + hashlib.sha256(slide_id.encode()).hexdigest(),  # one slide file per slide id
        "config_digest": "sha256:" + "c" * 64,
        "expert_weights": dict.fromkeys(dims, "random"),
        "expert_digests": dict.fromkeys(dims, "random"),
        "package_version": "0.1.0",
    }


def write_store(
    folder: Path,
    slide_id: str,
    patient_id: str,
    rules: list[str],
    dims: dict[str, int],
    attrs: Mapping[str, object] | None = None,
) -> list[dict]:
    """Write ``folder/<slide_id>.h5`` with one region per rule ("full", "sparse" or "empty" validity), the regions
    side by side on a slide one region high; ``attrs`` overrides attributes of :func:`store_attrs` (e.g. the
    experts' ``expert_digests``)."""
    rng = np.random.default_rng(sum(map(ord, slide_id)))
    regions = [region_arrays(rule, rng, dims) for rule in rules]
    slide_size = (REGION_PX * max(1, len(rules)), REGION_PX)
    origins = RegionGrid(*slide_size, 0.5).origins()
    path = folder / f"{slide_id}.h5"
    attrs = store_attrs(slide_id, patient_id, dims, slide_size) | dict(attrs or {})
    with RegionStoreWriter(path, attrs=attrs, n_regions=len(regions), experts=dims) as writer:
        for index, region in enumerate(regions):
            writer.write_region(index, coords=tuple(int(v) for v in origins[index]), **region)
        writer.commit()
    return regions
