"""Digests of a store's inputs: a rerun redoes a slide when its slide file, weights or config changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from pathme.store.attrs import canonical_json

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB chunks so slides of any size fit in memory."""
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def config_digest(config: Mapping[str, object]) -> str:
    """``sha256:<hex>`` of the config's canonical JSON: key order, tuples vs lists and Path vs str do not count."""
    return "sha256:" + hashlib.sha256(canonical_json(config).encode()).hexdigest()
