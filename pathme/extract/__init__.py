"""Feature extraction: slides -> region stores holding every expert's features at 20x, 5x and 1.25x."""

from pathme.extract.cohort import CohortExtractor, default_device, slide_fingerprint

__all__ = ["CohortExtractor", "default_device", "slide_fingerprint"]
