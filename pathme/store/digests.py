"""Digests of a store's inputs: a rerun redoes a slide when its slide file, weights or config changed, and a later
stage knows the file it reopens is the one the store was made from."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from pathme.store.attrs import canonical_json
from pathme.wsi.readers import slide_files

FINGERPRINT_BYTES = 4 << 20  # bytes hashed at each end of a slide file


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


def _ends_digest(path: Path, digest: hashlib._Hash) -> int:
    """Feed a file's size and its first and last :data:`FINGERPRINT_BYTES` into ``digest``; return the size."""
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        handle.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(handle.read(FINGERPRINT_BYTES))
    return size


def slide_fingerprint(path: str | os.PathLike[str]) -> str:
    """``size-ends-sha256:<bytes>:<hex>``: the file size plus sha256 of its first and last 4 MiB, as stores record
    their slide's (``slide_digest``): catches a replaced, re-scanned or truncated slide without hashing GBs. A slide
    that is a folder (a DICOM WSI series) is fingerprinted over its instances in name order
    (:func:`~pathme.wsi.readers.slide_files`), each by name, size and ends; ``<bytes>`` is then their total. OSError
    when a file cannot be read."""
    path = Path(path)
    digest = hashlib.sha256()
    if not path.is_dir():
        return f"size-ends-sha256:{_ends_digest(path, digest)}:{digest.hexdigest()}"
    total = 0
    for member in slide_files(path):
        digest.update(member.name.encode())
        total += _ends_digest(member, digest)
    return f"size-ends-sha256:{total}:{digest.hexdigest()}"
