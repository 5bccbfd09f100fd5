"""Is a store usable? It must open, be complete, match the schema and match the digests of its inputs.

Existence is not enough: a truncated, corrupted, partial or outdated store is reported (never an h5py
traceback), so a rerun redoes that slide.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import h5py

from pathme.store.attrs import Plain, read_attrs, to_plain
from pathme.store.checks import attrs_problem, coords_problem, regions_problem, tokens_problem
from pathme.store.schema import (
    COMPRESSION,
    COMPRESSION_NAME,
    COORDS,
    FEATURE_DTYPES,
    FEATURES,
    FEATURES_GROUP,
    SCHEMA_VERSION,
    TOKEN_COORDS,
    TOKENS,
    VALID,
    WRITER_ATTRS,
    DatasetSpec,
    geometry_attrs,
)
from pathme.store.store_error import StoreError
from pathme.store.tokens import check_region_store_link, is_token_store

logger = logging.getLogger(__name__)

BLOCK_BYTES = 64 << 20  # features read per check step: bounds memory whatever the slide size


def _read(path: Path, check: Callable[[h5py.File], Any]) -> Any:
    """Run ``check`` on the open file; any failure to read becomes a StoreError naming the file."""
    if not path.is_file():
        raise StoreError(f"{path}: no store there")
    try:
        with h5py.File(path, "r") as file:
            return check(file)
    except StoreError:
        raise
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError, ... on damaged files
        raise StoreError(f"{path}: unreadable as a region store ({type(error).__name__}: {error})") from error


def validate_store(
    path: str | os.PathLike[str],
    *,
    expected: Mapping[str, object] | None = None,
    experts: Sequence[str] | None = None,
) -> dict[str, Plain]:
    """Check the store at ``path`` completely; return its attributes, or raise StoreError naming the problem.

    A token store is checked for its tokens instead of features, and against the digest of the region store it
    links when that is there (:func:`~pathme.store.tokens.check_region_store_link`). ``experts``: names whose
    features must be present (in the linked region store, for a token store). ``expected``: attribute name ->
    value that must match exactly (e.g. ``slide_digest``, ``config_digest``, the ``expert_digests`` mapping).
    """
    path = Path(path)

    def fail(problem: str) -> NoReturn:
        raise StoreError(f"{path}: {problem}")

    def check(file: h5py.File) -> dict[str, Plain]:
        attrs = _check_attrs(read_attrs(file), expected or {}, experts or (), fail)
        _check_contents(file, attrs, fail)
        if is_token_store(attrs):
            check_region_store_link(path, attrs)
        return attrs

    return _read(path, check)


def _check_attrs(
    attrs: dict[str, Any], expected: Mapping[str, object], experts: Sequence[str], fail: Callable[[str], NoReturn]
) -> dict[str, Any]:
    if attrs.get("complete") is not True:
        fail("not complete: its writer never committed it")
    version = attrs.get("schema_version")
    if isinstance(version, int) and version < SCHEMA_VERSION:
        fail(
            f"schema version {version} was written by an older pathme (this one reads version {SCHEMA_VERSION}): "
            "rerun `pathme extract` to rewrite region stores (it redoes such slides), then `pathme embed` for tokens"
        )
    if version != SCHEMA_VERSION:
        fail(f"schema version {version!r}, but this pathme reads version {SCHEMA_VERSION}")
    problem = attrs_problem(attrs)
    if problem:
        fail(problem)
    missing = [name for name in WRITER_ATTRS if name not in attrs]
    if missing:
        fail(f"missing attribute(s) {', '.join(missing)}")
    if attrs["feature_dtype"] not in FEATURE_DTYPES:
        fail(f"attribute 'feature_dtype' is {attrs['feature_dtype']!r}, expected one of {', '.join(FEATURE_DTYPES)}")
    if attrs["compression"] != COMPRESSION_NAME:
        fail(f"attribute 'compression' is {attrs['compression']!r}, but this pathme writes {COMPRESSION_NAME!r}")
    for name, value in geometry_attrs(attrs["slide_size"], attrs["mpp"]).items():
        if attrs[name] != value:
            fail(f"attribute '{name}' is {attrs[name]!r}, expected {value!r} for this geometry")
    absent = [name for name in experts if name not in attrs["experts"]]
    if absent:
        fail(f"expert(s) {', '.join(absent)} missing (the store has {', '.join(attrs['experts']) or 'none'})")
    for name, value in expected.items():
        want = to_plain(value)
        if name not in attrs:
            fail(f"attribute '{name}' missing, expected {want!r}")
        if attrs[name] != want:
            fail(f"attribute '{name}' is {attrs[name]!r}, expected {want!r}")
    return attrs


def _dataset(
    file: h5py.File,
    spec: DatasetSpec,
    n_regions: int,
    fail: Callable[[str], NoReturn],
    feature_dtype: str,
    expert: str = "",
    dim: int | None = None,
) -> h5py.Dataset:
    """The dataset of ``spec``, after checking it exists with the schema's dtype, shape and (for features and
    tokens) compression."""
    name, dtype = spec.path(expert), spec.dtype_in(feature_dtype)
    dataset = file.get(name)
    if not isinstance(dataset, h5py.Dataset):
        fail(f"dataset '{name}' missing")
    if dataset.dtype != dtype:
        fail(f"dataset '{name}' has dtype {dataset.dtype}, expected {dtype} (attribute 'feature_dtype')")
    if dataset.shape != spec.shape(n_regions, dim):
        fail(f"dataset '{name}' has shape {dataset.shape}, expected {spec.shape(n_regions, dim)}")
    filters = (dataset.compression, dataset.compression_opts, dataset.shuffle)
    if spec.dtype is None and n_regions and filters != tuple(COMPRESSION.values()):
        fail(f"dataset '{name}' has filters {filters}, not the {COMPRESSION_NAME} its attribute 'compression' names")
    return dataset


def _check_contents(file: h5py.File, attrs: dict[str, Any], fail: Callable[[str], NoReturn]) -> None:
    """Dataset presence, shapes and dtypes, then flags, coordinates and finiteness region block by block; a token
    store has tokens instead of features (:mod:`pathme.store.tokens`)."""
    stored = file.get(COORDS.name)
    n_regions = stored.shape[0] if isinstance(stored, h5py.Dataset) and stored.ndim else 0
    dtype = attrs["feature_dtype"]
    coords = _dataset(file, COORDS, n_regions, fail, dtype)[()]
    valid = {level: _dataset(file, spec, n_regions, fail, dtype)[()] for level, spec in VALID.items()}
    dims = attrs["expert_dims"]
    token_store = is_token_store(attrs)
    features = {
        expert: [_dataset(file, spec, n_regions, fail, dtype, expert, dim) for spec in FEATURES.values()]
        for expert, dim in ({} if token_store else dims).items()
    }
    if token_store and FEATURES_GROUP in file:
        fail("a token store links its region store (attribute 'region_store') and holds no features")
    unlisted = sorted(set(file.get(FEATURES_GROUP, {})) - set(dims))
    if unlisted:
        fail(f"features of expert(s) {', '.join(unlisted)} that attribute 'experts' does not list")
    tokens = _tokens(file, n_regions, fail, dtype)
    if token_store and tokens is None:
        fail("a token store without dataset 'tokens'")
    problem = coords_problem(coords, attrs["slide_size"])
    if problem:
        fail(problem)
    checked = [dataset for datasets in features.values() for dataset in datasets]
    if tokens is not None:
        checked.append(tokens)
    region_bytes = sum(dataset.dtype.itemsize * math.prod(dataset.shape[1:]) for dataset in checked)
    step = max(1, BLOCK_BYTES // max(1, region_bytes))
    for start in range(0, n_regions, step):
        block = slice(start, start + step)
        block_features = {expert: [dataset[block] for dataset in datasets] for expert, datasets in features.items()}
        found = [regions_problem(valid["L0"][block], valid["L1"][block], block_features)]
        if tokens is not None:
            found.append(tokens_problem(valid["L1"][block], tokens[block]))
        first = min((item for item in found if item), default=None)
        if first:
            index = start + first[0]
            fail(f"region {index} at level-0 {tuple(coords[index].tolist())}: {first[1]}")


def _tokens(
    file: h5py.File, n_regions: int, fail: Callable[[str], NoReturn], feature_dtype: str
) -> h5py.Dataset | None:
    """The PatHME output, checked when present: ``tokens`` and ``token_coords`` come together."""
    present = [spec.name for spec in (TOKENS, TOKEN_COORDS) if spec.name in file]
    if not present:
        return None
    if len(present) == 1:
        fail(f"dataset '{present[0]}' without its companion (tokens and token_coords come together)")
    tokens = file[TOKENS.name]
    if tokens.ndim != len(TOKENS.trailing) + 1 or not tokens.shape[-1]:
        fail(f"dataset 'tokens' has shape {tokens.shape}, expected ({n_regions}, {TOKENS.trailing[0]}, D)")
    _dataset(file, TOKEN_COORDS, n_regions, fail, feature_dtype)
    return _dataset(file, TOKENS, n_regions, fail, feature_dtype, dim=tokens.shape[-1])


def store_is_done(
    path: str | os.PathLike[str],
    *,
    expected: Mapping[str, object] | None = None,
    experts: Sequence[str] | None = None,
) -> bool:
    """True when the store at ``path`` validates (see :func:`validate_store`); otherwise logs why at INFO."""
    try:
        validate_store(path, expected=expected, experts=experts)
    except StoreError as error:
        logger.info("store to (re)do: %s", error)
        return False
    return True


def read_store_attrs(path: str | os.PathLike[str]) -> dict[str, Plain]:
    """A store's attributes alone (provenance: experts, weights, teacher digests); an unreadable file is a
    StoreError naming it."""
    return _read(Path(path), read_attrs)


def read_store_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A cheap look at a store (no feature is read): slide, region count, experts and valid tile counts."""

    def summarise(file: h5py.File) -> dict[str, Any]:
        attrs = read_attrs(file)
        valid = {level: file[spec.name][()] for level, spec in VALID.items()}
        return {
            "path": str(path),
            "slide_id": attrs.get("slide_id"),
            "complete": attrs.get("complete") is True,
            "n_regions": int(file[COORDS.name].shape[0]),
            "experts": attrs.get("expert_dims", {}),
            "valid_l0_tiles": int(valid["L0"].sum()),
            "valid_l1_tiles": int(valid["L1"].sum()),
            "has_tokens": TOKENS.name in file,
        }

    return _read(Path(path), summarise)
