"""One value written two ways: a class (``'LUAD'`` and ``'luad'``, ``'1'`` and ``'1.0'``) or an id (``'P1'`` in the
labels, ``'p1'`` in the stores). Such values are found here so that a labels message can name them, instead of
one class training as two or a patient going missing."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from pathme.data.label_format import SHOWN


def spelling_key(text: str) -> str:
    """What two spellings of one value share: case, Unicode compatibility forms and runs of whitespace do not count,
    nor how a number is written (``'1'``, ``'1.0'``, ``'01'``, ``'1e0'`` are one)."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        return repr(number)
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _spellings(values: Iterable[str], known: Iterable[str]) -> dict[str, list[str]]:
    """Each of ``values`` absent from ``known`` -> the entries of ``known`` it equals but for spelling."""
    by_key: dict[str, list[str]] = {}
    for other in dict.fromkeys(known):
        by_key.setdefault(spelling_key(other), []).append(other)
    return {
        value: by_key[spelling_key(value)]
        for value in dict.fromkeys(values)
        if spelling_key(value) in by_key and value not in by_key[spelling_key(value)]
    }


def written_otherwise(ids: Iterable[str], known: Iterable[str], where: str = "the stores") -> str:
    """`` (the stores write 'P1' as 'p1': one id written two ways?)`` for ids ``known`` spells otherwise, else ''."""
    return _otherwise_text(_spellings(ids, known), where)


def each_written_otherwise(ids: Sequence[str], known: Iterable[str], where: str = "the stores") -> list[str]:
    """:func:`written_otherwise` of each id alone, with ``known``'s spellings indexed once."""
    near = _spellings(ids, known)
    return [_otherwise_text({value: near[value]} if value in near else {}, where) for value in ids]


def _otherwise_text(near: Mapping[str, list[str]], where: str) -> str:
    if not near:
        return ""
    cases = ", ".join(f"{value!r} as {' or '.join(map(repr, others))}" for value, others in list(near.items())[:SHOWN])
    return f" ({where} write {cases}: one id written two ways?)"
