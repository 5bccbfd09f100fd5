"""Features in the CLAM/TRIDENT layout, so other MIL tools can read what pathme extracted."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pathme.store.atomic import atomic_h5
from pathme.store.attrs import write_attrs
from pathme.store.provenance import SlideProvenance
from pathme.store.store_error import StoreError
from pathme.wsi.grid import L0_MPP, L0_SIDE, TILE_PX
from pathme.wsi.mpp import MPP_AT_1X


def write_features_h5(
    path: str | os.PathLike[str], coords: np.ndarray, features: np.ndarray, attrs: Mapping[str, object] | None = None
) -> Path:
    """Write ``coords`` [N, 2] int64 and ``features`` [N, D] float32 atomically; returns the path.

    ``attrs`` go on the ``coords`` dataset, where CLAM and TRIDENT readers look for patch geometry
    (e.g. ``patch_size``, ``patch_level``).
    """
    path = Path(path)
    coords, features = np.asarray(coords), np.asarray(features)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype.kind not in "iu":
        raise StoreError(f"{path}: coords must be integers of shape [N, 2], got {coords.dtype} {coords.shape}")
    if features.ndim != 2 or len(features) != len(coords) or features.dtype.kind != "f":
        raise StoreError(
            f"{path}: features must be floats of shape [{len(coords)}, D], got {features.dtype} {features.shape}"
        )
    with atomic_h5(path) as file:
        file.create_dataset("coords", data=coords.astype(np.int64, copy=False), track_times=False)
        file.create_dataset("features", data=features.astype(np.float32, copy=False), track_times=False)
        write_attrs(file["coords"], attrs or {})
    return path


def interop_attrs(provenance: SlideProvenance) -> dict[str, object]:
    """The geometry of the 20x tiles as TRIDENT (and CLAM-style readers, slide encoders such as TITAN) read it from
    the `coords` dataset: tile side at 20x and at level 0 (``patch_size``, ``patch_size_level0``, rounded like the
    coordinates), the magnification and µm/px the tiles were read at and those of level 0 (magnification as
    10 / µm/px, the convention 0.5 µm/px = 20x); coordinates are level-0 (x, y) of each tile's top-left."""
    return {
        "patch_size": TILE_PX,
        "patch_size_level0": round(provenance.region_extent / L0_SIDE),
        "patch_level": 0,
        "overlap": 0,
        "target_mpp": L0_MPP,
        "target_magnification": MPP_AT_1X / L0_MPP,
        "level0_mpp": provenance.mpp,
        "level0_magnification": round(MPP_AT_1X / provenance.mpp, 3),
        "name": provenance.slide_id,
        "slide_id": provenance.slide_id,
    }
