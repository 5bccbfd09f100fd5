"""Digests of a store's inputs: a rerun redoes a slide when its slide file, weights or config changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from pathme.store.attrs import canonical_json


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's bytes (``hashlib.file_digest``, read in chunks: slides and weights of any size)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes, as stores record their slide's."""
    return f"sha256:{file_sha256(path)}"


def config_digest(config: Mapping[str, object]) -> str:
    """``sha256:<hex>`` of the config's canonical JSON: key order, tuples vs lists and Path vs str do not count."""
    return "sha256:" + hashlib.sha256(canonical_json(config).encode()).hexdigest()
