"""Plain values: one canonical form for attributes, digests and comparisons.

HDF5 attributes hold scalars well but not nested values, so lists and mappings are stored as canonical JSON
text and their names listed in the ``json_attrs`` attribute; reading gives back the same plain values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

JSON_ATTRS = "json_attrs"
Plain = None | bool | int | float | str | list[Any] | dict[str, Any]


def to_plain(value: object) -> Plain:
    """``value`` as JSON-able Python: tuples and arrays as lists, paths as str, numpy scalars as Python ones."""
    if isinstance(value, np.generic):  # before the Python types: np.float64 is a float, np.str_ a str
        return to_plain(value.item())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be strings, got {key!r}")
            plain[key] = to_plain(item)
        return plain
    if isinstance(value, list | tuple | np.ndarray):
        return [to_plain(item) for item in value]
    raise TypeError(f"cannot store a value of type {type(value).__name__}: {value!r}")


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace: equal values give equal text whatever their key order."""
    return json.dumps(to_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_attrs(obj: h5py.HLObject, attrs: Mapping[str, object]) -> None:
    """Write ``attrs`` in sorted order (so equal attributes give equal bytes), nested values as JSON text."""
    before = set(json.loads(obj.attrs.get(JSON_ATTRS, "[]")))
    json_names = set(before)
    for name in sorted(attrs):
        value = to_plain(attrs[name])
        if isinstance(value, bool | int | float | str):
            obj.attrs[name] = value
            json_names.discard(name)
        else:
            obj.attrs[name] = canonical_json(value)
            json_names.add(name)
    if json_names != before:
        obj.attrs[JSON_ATTRS] = canonical_json(sorted(json_names))


def read_attrs(obj: h5py.HLObject) -> dict[str, Plain]:
    """All attributes of ``obj`` as plain values (JSON-encoded ones decoded)."""
    json_names = set(json.loads(obj.attrs.get(JSON_ATTRS, "[]")))
    plain: dict[str, Plain] = {}
    for name, value in obj.attrs.items():
        if name == JSON_ATTRS:
            continue
        if name in json_names:
            plain[name] = json.loads(value)
        elif isinstance(value, bytes):
            plain[name] = value.decode()
        else:
            plain[name] = to_plain(value)
    return plain
