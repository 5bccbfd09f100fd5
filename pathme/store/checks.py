"""Checks shared by the writer (refuse bad input early) and the validator (refuse a bad file later)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pathme.store.schema import N_PROMPTS, REQUIRED_ATTRS
from pathme.wsi.grid import CHILDREN_SIDE, L1_SIDE


def l1_from_l0(valid_l0: np.ndarray) -> np.ndarray:
    """valid/L1 implied by valid/L0 ([..., 256] -> [..., 16]): an L1 tile is valid when any L0 child is."""
    lead = valid_l0.shape[:-1]
    blocks = valid_l0.reshape(*lead, L1_SIDE, CHILDREN_SIDE, L1_SIDE, CHILDREN_SIDE)
    return blocks.any(axis=(-3, -1)).reshape(*lead, L1_SIDE * L1_SIDE)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _kind_problem(kind: str, value: Any, experts: list[str]) -> str | None:
    """What is wrong with an attribute value of the given schema kind, or None."""
    if kind == "text":
        ok, want = isinstance(value, str) and value != "", "a non-empty string"
    elif kind == "positive number":
        ok, want = _is_positive(value), "a positive number"
    elif kind == "size":
        ok = isinstance(value, list) and len(value) == 2 and all(_is_count(item) for item in value)
        want = "(width, height) as two positive integers"
    elif kind == "names":
        ok = isinstance(value, list) and all(isinstance(item, str) and item and "/" not in item for item in value)
        ok = ok and len(set(value)) == len(value)
        want = "a list of unique names without '/'"
    else:  # a mapping with one entry per expert
        ok = isinstance(value, dict) and sorted(value) == sorted(experts)
        if kind == "expert dims":
            ok = ok and all(_is_count(dim) for dim in value.values())
        want = f"a mapping with one entry per expert of {experts}"
    return None if ok else f"{value!r} is not {want}"


def attrs_problem(attrs: Mapping[str, Any]) -> str | None:
    """The first missing or malformed required attribute (values as :func:`~pathme.store.attrs.to_plain` gives)."""
    missing = [name for name in REQUIRED_ATTRS if name not in attrs]
    if missing:
        return f"missing attribute(s) {', '.join(missing)}"
    experts = attrs["experts"] if isinstance(attrs["experts"], list) else []
    for name, (kind, meaning) in REQUIRED_ATTRS.items():
        problem = _kind_problem(kind, attrs[name], experts)
        if problem:
            return f"attribute '{name}' ({meaning}): {problem}"
    return None


def regions_problem(
    valid_l0: np.ndarray, valid_l1: np.ndarray, features: Mapping[str, Sequence[np.ndarray]]
) -> tuple[int, str] | None:
    """(region offset, problem) of the first bad region in a block, or None.

    ``valid_l0`` [n, 256], ``valid_l1`` [n, 16], ``features[expert]`` = (L0 [n, 256, D], L1 [n, 16, D], L2 [n, D]).
    Checks that valid/L1 follows from valid/L0 and that features of valid tiles (and every L2 tile) are finite.
    """
    problems: list[tuple[int, str]] = []
    wrong_l1 = np.flatnonzero((valid_l1 != l1_from_l0(valid_l0)).any(axis=-1))
    if wrong_l1.size:
        problems.append((int(wrong_l1[0]), "valid/L1 differs from 'any of its 16 L0 children' in valid/L0"))
    all_valid = np.ones(valid_l0.shape[:1], dtype=bool)
    for expert, arrays in features.items():
        for level, values, valid in zip(("L0", "L1", "L2"), arrays, (valid_l0, valid_l1, all_valid), strict=True):
            finite = np.isfinite(values).all(axis=-1)
            bad = np.flatnonzero((valid & ~finite).reshape(len(valid), -1).any(axis=-1))
            if bad.size:
                problems.append((int(bad[0]), f"features/{expert}/{level} has non-finite values in valid tiles"))
    return min(problems, default=None)


def tokens_problem(valid_l1: np.ndarray, tokens: np.ndarray) -> tuple[int, str] | None:
    """(region offset, problem) of the first block region whose prompts or valid L1 tokens are not finite."""
    prompts = np.ones((len(valid_l1), N_PROMPTS), dtype=bool)
    valid = np.concatenate([prompts, valid_l1], axis=1)
    bad = np.flatnonzero((valid & ~np.isfinite(tokens).all(axis=-1)).any(axis=-1))
    return (int(bad[0]), "tokens has non-finite values in prompts or valid L1 tokens") if bad.size else None


def coords_problem(coords: np.ndarray, slide_size: Sequence[int]) -> str | None:
    """What is wrong with region coordinates [R, 2]: a corner outside the slide, or two regions at one place."""
    width, height = slide_size
    outside = np.flatnonzero((coords < 0).any(axis=1) | (coords[:, 0] >= width) | (coords[:, 1] >= height))
    if outside.size:
        index = int(outside[0])
        return f"region {index} at level-0 {tuple(coords[index].tolist())} lies outside the {width} x {height} slide"
    places, counts = np.unique(coords, axis=0, return_counts=True)
    if (counts > 1).any():
        place = places[counts > 1][0]
        twins = np.flatnonzero((coords == place).all(axis=1)).tolist()
        return f"regions {twins} share the level-0 position {tuple(place.tolist())}"
    return None
