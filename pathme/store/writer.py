"""Writing one slide's region store: all or nothing.

The store is built under a temporary name beside its final path and renamed into place only by
:meth:`RegionStoreWriter.commit`, after every region is written and ``complete`` is set; an exception or a kill
before that leaves nothing at the final path, so a rerun can never mistake a partial store for a finished one.
Features are stored in the store's ``feature_dtype`` with invalid tiles zeroed (:func:`stored_values`) and
compressed chunks of one region each (:data:`~pathme.store.schema.COMPRESSION`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import cast

import h5py
import numpy as np

from pathme.store.atomic import AtomicTarget, open_h5
from pathme.store.attrs import JSON_ATTRS, to_plain, write_attrs
from pathme.store.checks import attrs_problem, coords_problem, regions_problem
from pathme.store.schema import (
    COMPRESSION,
    COMPRESSION_NAME,
    COORDS,
    FEATURE_DTYPES,
    FEATURES,
    SCHEMA_VERSION,
    VALID,
    WRITER_ATTRS,
    DatasetSpec,
    geometry_attrs,
)
from pathme.store.store_error import StoreError

FeatureTriple = Sequence[np.ndarray]  # (L0 [256, D], L1 [16, D], L2 [D])


def stored_values(values: np.ndarray, keep: np.ndarray, feature_dtype: str) -> np.ndarray:
    """``values`` [..., D] as stored: rows where ``keep`` [...] is False zeroed (so they compress to nothing; their
    values mean nothing), the rest cast to ``feature_dtype``. ValueError when a kept value is finite before the
    cast and not after (beyond float16's ±65504), which would otherwise turn into inf in the store."""
    with np.errstate(over="ignore"):  # overflow is reported below, naming the value
        array = np.where(keep[..., None], values, 0).astype(feature_dtype)
    overflow = keep[..., None] & np.isfinite(values) & ~np.isfinite(array)
    if overflow.any():
        largest, limit = float(np.abs(np.where(overflow, values, 0)).max()), float(np.finfo(feature_dtype).max)
        raise ValueError(
            f"a value of {largest:.6g} exceeds the range of {feature_dtype} (max {limit:g}); "
            "store this expert's features as float32 (feature_dtype float32, or --feature-dtype float32)"
        )
    return array


def create_region_dataset(
    file: h5py.File, spec: DatasetSpec, n_regions: int, feature_dtype: str, expert: str = "", dim: int | None = None
) -> h5py.Dataset:
    """An empty dataset of ``spec`` with one region per chunk (one read per region), each chunk with a Fletcher-32
    checksum so flipped bytes fail the read; features and tokens (dtype ``feature_dtype``) are also compressed."""
    shape = spec.shape(n_regions, dim)
    layout: dict[str, object] = {}
    if n_regions:  # no chunks of 0 rows
        layout = {"chunks": (1, *shape[1:]), "fletcher32": True} | (COMPRESSION if spec.dtype is None else {})
    dtype = spec.dtype_in(feature_dtype)
    return file.create_dataset(spec.path(expert), shape=shape, dtype=dtype, track_times=False, **layout)


class RegionStoreWriter:
    """Writes one slide's region store (HDF5) to a temporary name in the same folder and renames it into place
    only in :meth:`commit`; a failure or kill before commit leaves no file at ``path`` (the next writer of the
    same path removes the stale temporary file).

    ``attrs`` are the :data:`~pathme.store.schema.REQUIRED_ATTRS` (``experts`` and ``expert_dims`` may be left
    out: they follow from ``experts``, the expert name -> feature dimension mapping). ``feature_dtype``: float16
    (default) or float32. Use it as a context manager and call :meth:`commit` inside: leaving the block without a
    commit discards the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        attrs: Mapping[str, object],
        n_regions: int,
        experts: Mapping[str, int],
        feature_dtype: str = "float16",
    ):
        self.path = Path(path)
        self.n_regions = int(n_regions)
        if self.n_regions < 0:
            raise StoreError(f"{self.path}: n_regions must be >= 0, got {self.n_regions}")
        if feature_dtype not in FEATURE_DTYPES:
            raise StoreError(f"{self.path}: feature_dtype {feature_dtype!r} is not one of {', '.join(FEATURE_DTYPES)}")
        self.feature_dtype = feature_dtype
        self.dims = {name: int(dim) for name, dim in experts.items()}
        self.attrs = self._checked_attrs(attrs)
        self._coords = np.zeros(COORDS.shape(self.n_regions), dtype=COORDS.dtype)
        self._written = np.zeros(self.n_regions, dtype=bool)
        self._target = AtomicTarget(self.path)
        self._file: h5py.File | None = None
        try:
            self._file = open_h5(self._target)
            write_attrs(self._file, self.attrs)
            for spec in (COORDS, *VALID.values()):
                self._create(self._file, spec)
            for expert, dim in self.dims.items():
                for spec in FEATURES.values():
                    self._create(self._file, spec, expert, dim)
        except BaseException:
            self.abort()
            raise

    def _checked_attrs(self, attrs: Mapping[str, object]) -> dict[str, object]:
        """The caller's attributes plus the writer's, or a StoreError naming what is wrong."""
        plain = cast(dict[str, object], to_plain(attrs))
        reserved = sorted(set(plain) & {*WRITER_ATTRS, JSON_ATTRS})
        if reserved:
            raise StoreError(f"{self.path}: attribute(s) {', '.join(reserved)} are set by the writer, not the caller")
        derived = {"experts": list(self.dims), "expert_dims": self.dims}
        for name, value in derived.items():
            if plain.setdefault(name, value) != value:
                raise StoreError(f"{self.path}: attribute '{name}' is {plain[name]!r} but experts gives {value!r}")
        problem = attrs_problem(plain)
        if problem:
            raise StoreError(f"{self.path}: {problem}")
        self.slide_size = cast(list[int], plain["slide_size"])
        versions = {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "numpy": np.__version__}
        geometry = geometry_attrs(self.slide_size, cast(float, plain["mpp"]))
        written = {
            "schema_version": SCHEMA_VERSION,
            "feature_dtype": self.feature_dtype,
            "compression": COMPRESSION_NAME,
        }
        return {**plain, **geometry, **written, "created_with": versions}

    def _create(self, file: h5py.File, spec: DatasetSpec, expert: str = "", dim: int | None = None) -> None:
        create_region_dataset(file, spec, self.n_regions, self.feature_dtype, expert, dim)

    def __enter__(self) -> RegionStoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._file is None:
            return
        self.abort()
        if exc_type is None:
            raise StoreError(f"{self.path}: writer closed without commit(); nothing was written")

    def _fail(self, index: int, problem: str) -> StoreError:
        return StoreError(f"{self.path}: region {index}: {problem}")

    def _array(self, index: int, name: str, value: object, spec: DatasetSpec, dim: int | None = None) -> np.ndarray:
        """``value`` after checking its shape (and that flags are already bool); flags and coordinates in the
        dataset's dtype, features as float32 until :func:`stored_values`."""
        array = np.asarray(value)
        if spec.dtype == bool and array.dtype != bool:
            raise self._fail(index, f"{name} must be bool, got {array.dtype}")
        if array.shape != spec.region_shape(dim):
            raise self._fail(index, f"{name} has shape {array.shape}, expected {spec.region_shape(dim)}")
        return array.astype(spec.dtype_in("float32"), copy=False)

    def write_region(
        self,
        index: int,
        *,
        coords: tuple[int, int],
        valid_l0: np.ndarray,
        valid_l1: np.ndarray,
        features: Mapping[str, FeatureTriple],
    ) -> None:
        """Write region ``index`` (canonical order); ``features[expert]`` = (L0 [256, D], L1 [16, D], L2 [D]).

        StoreError for a value that does not fit the store; :class:`~pathme.store.atomic.WriteError` naming the store
        and the cause once a write to disk has failed (a full disk: leave the ``with`` block, which discards it)."""
        if self._file is None:
            raise StoreError(f"{self.path}: writer already committed or aborted")
        if not 0 <= index < self.n_regions:
            raise self._fail(index, f"index outside 0..{self.n_regions - 1}")
        if self._written[index]:
            raise self._fail(index, "written twice")
        position = np.asarray(coords)
        if position.shape != (2,) or position.dtype.kind not in "iu":
            raise self._fail(index, f"coords must be two integers (level-0 x, y), got {coords!r}")
        if set(features) != set(self.dims):
            raise self._fail(index, f"features given for {sorted(features)}, expected {sorted(self.dims)}")
        flags = [
            self._array(index, spec.name, value, spec)
            for spec, value in zip(VALID.values(), (valid_l0, valid_l1), strict=True)
        ]
        arrays = {
            expert: [
                self._array(index, spec.path(expert), value, spec, self.dims[expert])
                for spec, value in zip(FEATURES.values(), features[expert], strict=True)
            ]
            for expert in self.dims
        }
        batch = {expert: [value[None] for value in values] for expert, values in arrays.items()}
        found = regions_problem(flags[0][None], flags[1][None], batch)
        if found:
            raise self._fail(index, found[1])
        keeps = (*flags, np.array(True))  # the L2 tile is always kept
        stored = {}
        for expert, values in arrays.items():
            for spec, value, keep in zip(FEATURES.values(), values, keeps, strict=True):
                try:
                    stored[spec.path(expert)] = stored_values(value, keep, self.feature_dtype)
                except ValueError as error:
                    raise self._fail(index, f"{spec.path(expert)}: {error}") from error
        self._file[COORDS.name][index] = position
        for spec, flag in zip(VALID.values(), flags, strict=True):
            self._file[spec.name][index] = flag
        for name, value in stored.items():
            self._file[name][index] = value
        self._coords[index] = position
        self._written[index] = True
        self._target.raise_if_failed()  # a full disk stops the slide here, not after encoding all of it

    def commit(self) -> Path:
        """Check every region is written, mark the store complete and rename it into place; returns the path.
        WriteError naming the store and the cause when a write failed (nothing appears at the path then)."""
        if self._file is None:
            raise StoreError(f"{self.path}: writer already committed or aborted")
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise StoreError(
                f"{self.path}: {missing.size} of {self.n_regions} regions never written, e.g. {missing[0]}"
            )
        problem = coords_problem(self._coords, self.slide_size)
        if problem:
            raise StoreError(f"{self.path}: {problem}")
        write_attrs(self._file, {"complete": True})
        self._file.close()
        self._file = None
        return self._target.publish()

    def abort(self) -> None:
        """Close and remove the temporary file; nothing appears at ``path``."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._target.discard()
