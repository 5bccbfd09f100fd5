"""Errors about one slide: a cohort run records them for that slide and goes on with the others."""

from __future__ import annotations

import logging


class SlideError(ValueError):
    """A slide that cannot be used; the message names the slide, the file and the problem."""


def failure_text(error: Exception, slide_id: str, logger: logging.Logger) -> str:
    """The one line a cohort's summary row gets for a slide that failed, logged as an error.

    A :class:`SlideError` is a problem with the input and its message says what to do; anything else is
    unexpected (a bug, a full disk, memory), so its type is named and its traceback logged at DEBUG (``-v``).
    """
    text = str(error) if isinstance(error, SlideError) else f"{type(error).__name__}: {error}"
    logger.error("slide %s failed: %s", slide_id, text)
    if not isinstance(error, SlideError):
        logger.debug("slide %s: traceback of the failure", slide_id, exc_info=error)
    return text
