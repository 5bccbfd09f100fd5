"""Feature extraction: slides -> region stores holding every expert's features at 20x, 5x and 1.25x."""

from pathme.extract.cohort import CohortExtractor, slide_fingerprint

__all__ = ["CohortExtractor", "slide_fingerprint"]
