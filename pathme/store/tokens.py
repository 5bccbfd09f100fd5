"""The PatHME stage of a store: a token store holds a slide's region tokens and links its region store.

A token store has its region store's attributes, ``coords`` and ``valid`` flags, the teacher's ``tokens`` and
``token_coords``, and :data:`~pathme.store.schema.TOKEN_ATTRS`: the region store's path (relative to the token
store's folder, so the two folders move together) and digest. It never copies the region store's features: a
reader that wants an expert's features follows the link (:func:`linked_region_store`), and validation refuses a
token store whose region store changed after its tokens were computed (:func:`check_region_store_link`). Written
as its own file, published atomically, so the region store is never modified and a half-written token store never
appears.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathme.store.atomic import AtomicTarget, open_h5
from pathme.store.attrs import read_attrs, write_attrs
from pathme.store.digests import file_digest
from pathme.store.schema import COORDS, N_PROMPTS, TOKEN_ATTRS, TOKEN_COORDS, TOKENS, VALID
from pathme.store.store_error import StoreError
from pathme.store.writer import create_region_dataset, stored_values


@dataclass(frozen=True)
class TokenProvenance:
    """What a token store adds to its region store's attributes (:data:`~pathme.store.schema.TOKEN_ATTRS`): the
    teacher that computed its tokens, and the link to the region store they came from. The one way they are read
    (:meth:`from_attrs`) and written (:func:`write_token_store` fills in the link)."""

    teacher_checkpoint: str
    teacher_digest: str
    teacher_expert: str = ""  # "" in token stores of an older pathme, which did not record it
    region_store: str = ""  # relative to the token store's folder
    region_store_digest: str = ""

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TokenProvenance:
        """From a token store's attributes; KeyError when they are a region store's (see :func:`is_token_store`)."""
        return cls(**{name: str(attrs[name]) for name in TOKEN_ATTRS if name in attrs or name != "teacher_expert"})

    def attrs(self) -> dict[str, str]:
        """As stored: every field that is known (not "")."""
        return {name: value for name, value in asdict(self).items() if value}


def is_token_store(attrs: Mapping[str, Any]) -> bool:
    """Whether a store's attributes are a token store's (it links a region store)."""
    return "region_store" in attrs


def _link_target(path: Path, link: TokenProvenance) -> Path:
    return (path.parent / link.region_store).resolve()


def check_region_store_link(path: str | os.PathLike[str], attrs: Mapping[str, Any]) -> None:
    """StoreError when the region store a token store links is there but is not the file its tokens came from
    (re-extracted or modified since): the tokens no longer describe it. A region store that is gone is not an
    error here: the tokens stand alone, and only reading expert features through the link needs it."""
    link = TokenProvenance.from_attrs(attrs)
    target, recorded = _link_target(Path(path), link), link.region_store_digest
    if target.is_file() and file_digest(target) != recorded:
        raise StoreError(
            f"{path}: its region store {target} changed after the tokens were computed "
            f"(region_store_digest {recorded} vs {file_digest(target)} now): rerun `pathme embed`"
        )


def linked_region_store(path: str | os.PathLike[str], attrs: Mapping[str, Any]) -> Path:
    """The region store holding the expert features of a token store (itself for a region store); StoreError
    naming both files when it is gone. Its digest is checked by validation (:func:`check_region_store_link`)."""
    path = Path(path)
    if not is_token_store(attrs):
        return path
    target = _link_target(path, TokenProvenance.from_attrs(attrs))
    if not target.is_file():
        raise StoreError(
            f"{path}: expert features are read from its region store {target}, which is gone; keep the token and "
            "region store folders side by side (the link is relative), or read the region stores' folder"
        )
    return target


def write_token_store(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    tokens: np.ndarray,
    token_coords: np.ndarray,
    made_by: TokenProvenance,
) -> Path:
    """Write the token store ``target`` of the region store ``source``: ``tokens`` [R, T, D] (float32, stored in
    the region store's ``feature_dtype``; L1 tokens of invalid tiles zeroed), ``token_coords`` [R, T, 2] int64,
    and ``made_by`` (the teacher) with the link to ``source`` filled in; returns ``target``.

    StoreError when the shapes do not fit the region store or a token overflows the feature dtype."""
    source, target = Path(source), Path(target)
    atomic = AtomicTarget(target)
    try:
        with h5py.File(source, "r") as region_store, open_h5(atomic) as file:
            region_attrs = read_attrs(region_store)
            regions, dtype = region_store[COORDS.name].shape[0], str(region_attrs["feature_dtype"])
            expected = TOKEN_COORDS.shape(regions)
            if np.shape(tokens)[:2] != expected[:2] or np.shape(token_coords) != expected:
                raise StoreError(
                    f"{target}: tokens {np.shape(tokens)} / token_coords {np.shape(token_coords)} do not fit "
                    f"{regions} regions of {TOKENS.trailing[0]} tokens"
                )
            link = os.path.relpath(source.resolve(), target.resolve().parent)
            made_by = replace(made_by, region_store=link, region_store_digest=file_digest(source))
            write_attrs(file, region_attrs | made_by.attrs())
            for spec in (COORDS, *VALID.values()):
                create_region_dataset(file, spec, regions, dtype)[...] = region_store[spec.name][()]
            valid_l1 = region_store[VALID["L1"].name][()]
            keep = np.concatenate([np.ones((regions, N_PROMPTS), bool), valid_l1], axis=1)
            try:
                values = stored_values(np.asarray(tokens, np.float32), keep, dtype)
            except ValueError as error:
                raise StoreError(f"{target}: tokens: {error}") from error
            dim = values.shape[-1]
            create_region_dataset(file, TOKENS, regions, dtype, dim=dim)[...] = values
            create_region_dataset(file, TOKEN_COORDS, regions, dtype)[...] = np.asarray(token_coords, np.int64)
    except BaseException:
        atomic.discard()
        raise
    return atomic.publish()
