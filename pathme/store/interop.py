"""Features in the CLAM/TRIDENT layout, so other MIL tools can read what pathme extracted."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pathme.store.atomic import atomic_h5
from pathme.store.attrs import write_attrs
from pathme.store.errors import StoreError


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
