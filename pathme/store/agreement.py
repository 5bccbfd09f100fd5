"""What the stores of one run must agree on, from what each records: the weights behind their features.

Features of one expert computed with different weights (UNI v1 and a fine-tuned UNI, ``random:0`` and
``random:1``), or tokens of different teachers, have the same shape and mean different things: mixed in one run
nothing crashes and the model learns noise, or a fold model scores features it never saw. Every store records the
digests of the weights behind it (``expert_digests``; a token store also ``teacher_digest`` and, since this
check, ``teacher_expert``), so a run compares them before it reads a feature, and a fold model keeps the ones it
was trained on (:func:`check_same_features`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pathme.store.tokens import TokenProvenance

TEACHER = "teacher"
SHOWN = 4  # stores named per value in a message


def weights_key(expert: str) -> str:
    """The provenance key of an expert's weights digest (:func:`weights_provenance`)."""
    return f"{expert} weights"


def weights_provenance(attrs: Mapping[str, Any], experts: Iterable[str], tokens: bool = False) -> dict[str, str]:
    """The digests that define the feature space of a store's features, as text: ``"<expert> weights"`` (its
    ``expert_digests`` entry) and ``"<expert> dimension"`` for each of ``experts``; with ``tokens`` (a token store)
    also ``"teacher"`` (``teacher_digest``) and the weights of the expert the teacher took, where the store
    records which (``teacher_expert``)."""
    provenance: dict[str, str] = {}
    for expert in experts:
        provenance[weights_key(expert)] = str(attrs["expert_digests"][expert])
        provenance[f"{expert} dimension"] = str(attrs["expert_dims"][expert])
    if tokens:
        teacher = TokenProvenance.from_attrs(attrs)
        provenance[TEACHER] = teacher.teacher_digest
        if teacher.teacher_expert:
            provenance[weights_key(teacher.teacher_expert)] = str(attrs["expert_digests"][teacher.teacher_expert])
    return provenance


def _fix(key: str) -> str:
    if key == TEACHER:
        return (
            "tokens of different teachers are not comparable: rerun `pathme embed` on all the region stores with one "
            "teacher, or put the token stores of each teacher in a folder of their own"
        )
    expert = key.rsplit(" ", 1)[0]
    return (
        "features of different weights are not comparable: re-extract those slides with the same weights "
        f"(pathme extract --weights {expert}=...), or put the stores of each extraction in a folder of their own"
    )


def _named(paths: list[Path]) -> str:
    shown = ", ".join(path.name for path in paths[:SHOWN])
    return f"{len(paths)} store(s) ({shown}{f' and {len(paths) - SHOWN} more' if len(paths) > SHOWN else ''})"


def agreed_provenance(
    provenance: Mapping[str | os.PathLike[str], Mapping[str, str]], where: str | os.PathLike[str]
) -> dict[str, str]:
    """The provenance every store of a run shares (``provenance``: store path -> :func:`weights_provenance`).

    A key some stores do not record (``teacher_expert`` of token stores from an older pathme) is compared among
    those that do and left out of the result unless all record it. Raises ValueError naming ``where``, the first key
    the stores disagree on, each value with the stores that have it, and the fix."""
    stores = {Path(path): dict(values) for path, values in provenance.items()}
    agreed: dict[str, str] = {}
    keys = dict.fromkeys(key for values in stores.values() for key in values)
    for key in keys:
        holders: dict[str, list[Path]] = {}
        for path, values in stores.items():
            if key in values:
                holders.setdefault(values[key], []).append(path)
        if len(holders) > 1:
            found = ", ".join(f"{value!r} in {_named(paths)}" for value, paths in holders.items())
            raise ValueError(f"stores in {where} disagree on the {key} behind their features: {found}; {_fix(key)}")
        if all(key in values for values in stores.values()):
            agreed[key] = next(iter(holders))
    return agreed


def check_same_features(
    trained: Mapping[str, str], found: Mapping[str, str], model: str | os.PathLike[str], where: str | os.PathLike[str]
) -> None:
    """Refuse stores whose features come from other weights than those a model was trained on: ValueError naming
    the model, the stores' folder, both values and the fix. Keys only one side records are not compared."""
    differ = [key for key in trained if key in found and trained[key] != found[key]]
    if differ:
        cases = "; ".join(f"{key} {trained[key]!r} in training, {found[key]!r} in {where}" for key in differ)
        raise ValueError(
            f"{model} was trained on features of other weights than the stores in {where} hold ({cases}); "
            f"{_fix(differ[0]).split(': ', 1)[0]}: use stores extracted (and embedded) with the weights the model "
            "was trained on, or train a model on these"
        )
