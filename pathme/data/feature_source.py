"""A MIL feature source, parsed once where it enters (a flag, a bundle id, a fold model, the Deploy app's models).

Sources: ``"pathme"`` (the PatHME region tokens), ``"pathme-mean"`` (one token per region: their mean), an expert's
name (its 20x features, store level L0), ``"<expert>@5x"`` (L1) and ``"<expert>@1.25x"`` (L2). What each puts into
a bag: :mod:`pathme.data.bags`.
"""

from __future__ import annotations

from dataclasses import dataclass

PATHME, PATHME_MEAN = "pathme", "pathme-mean"
#: the suffix of an expert source naming a scale other than 20x, and the store level it reads
SCALES = {"5x": "L1", "1.25x": "L2"}


@dataclass(frozen=True)
class FeatureSource:
    """A parsed feature source: ``name`` as written (what configs, fold models and tables record; ``str()`` gives
    it), ``expert`` (None for the PatHME sources) and ``level``, the store level of an expert source (L0, L1, L2)."""

    name: str
    expert: str | None
    level: str | None

    @classmethod
    def parse(cls, source: str | FeatureSource) -> FeatureSource:
        """``"uni"`` -> (uni, L0), ``"uni@5x"`` -> (uni, L1), ``"pathme"`` -> (None, None); a FeatureSource is
        returned as it is. ValueError for an empty name, an unknown or empty scale suffix, or a scale on the PatHME
        sources."""
        if isinstance(source, FeatureSource):
            return source
        if source in (PATHME, PATHME_MEAN):
            return cls(source, None, None)
        expert, at, scale = str(source).partition("@")
        if not expert:
            raise ValueError(f"feature source {source!r}: give {PATHME}, {PATHME_MEAN} or an expert name")
        if expert in (PATHME, PATHME_MEAN):
            raise ValueError(f"feature source {source!r}: PatHME tokens have no scale suffix; give {expert}")
        if at and scale not in SCALES:
            raise ValueError(
                f"feature source '{source}': unknown scale '@{scale}'; use @{', @'.join(SCALES)} or none (20x)"
            )
        return cls(str(source), expert, SCALES[scale] if scale else "L0")

    @property
    def tokens(self) -> bool:
        """Whether it reads PatHME tokens (a token store) rather than an expert's features (a region store)."""
        return self.expert is None

    @property
    def mean(self) -> bool:
        """Whether it is ``pathme-mean``: one token per region."""
        return self.name == PATHME_MEAN

    def __str__(self) -> str:
        return self.name
