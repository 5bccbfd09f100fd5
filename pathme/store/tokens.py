"""The PatHME stage of a store: a copy of the region store with the teacher's region tokens added.

Written as its own file (one file per slide and stage), published atomically, so the extraction store it came
from is never modified and a half-written token store never appears.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from pathme.store.atomic import AtomicTarget
from pathme.store.errors import StoreError
from pathme.store.schema import COORDS, TOKEN_COORDS, TOKENS


def write_token_store(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    tokens: np.ndarray,
    token_coords: np.ndarray,
    attrs: Mapping[str, str | int | float],
) -> Path:
    """Copy ``source`` to ``target`` with ``tokens`` [R, T, D] float32, ``token_coords`` [R, T, 2] int64 and
    ``attrs`` (e.g. the teacher checkpoint's digest) added; returns ``target``."""
    tokens = np.asarray(tokens, dtype=TOKENS.dtype)
    token_coords = np.asarray(token_coords, dtype=TOKEN_COORDS.dtype)
    atomic = AtomicTarget(target)
    try:
        shutil.copyfile(source, atomic.temp)
        with h5py.File(atomic.temp, "r+", locking=False) as file:
            regions = file[COORDS.name].shape[0]
            expected = (regions, *TOKEN_COORDS.trailing)
            if tokens.shape[:2] != expected[:2] or token_coords.shape != expected:
                raise StoreError(
                    f"{target}: tokens {tokens.shape} / token_coords {token_coords.shape} do not fit {regions} regions "
                    f"of {TOKENS.trailing[0]} tokens"
                )
            for spec, data in ((TOKENS, tokens), (TOKEN_COORDS, token_coords)):
                chunks = (1, *data.shape[1:]) if len(data) else None
                file.create_dataset(spec.name, data=data, chunks=chunks, track_times=False)
            for key, value in attrs.items():
                file.attrs[key] = value
    except BaseException:
        atomic.discard()
        raise
    return atomic.publish()
