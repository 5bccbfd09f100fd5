"""Errors about one slide: a cohort run records them for that slide and goes on with the others."""


class SlideError(ValueError):
    """A slide that cannot be used; the message names the slide, the file and the problem."""
