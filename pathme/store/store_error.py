"""The one error of the region store: callers catch it to redo a slide instead of crashing a cohort."""


class StoreError(ValueError):
    """A store that cannot be written or used; the message names the file and the problem."""
