"""Errors about one slide: a cohort run records them for that slide and goes on with the others."""

from __future__ import annotations

import logging

from pathme.store.atomic import WriteError


class SlideError(ValueError):
    """A slide that cannot be used; the message names the slide, the file and the problem."""


def failure_text(error: Exception, slide_id: str, logger: logging.Logger) -> str:
    """The one line a cohort's summary row gets for a slide that failed, logged as an error.

    A :class:`SlideError` (a problem with the input) and a :class:`~pathme.store.atomic.WriteError` (a full disk)
    say what to do in their message; anything else is unexpected (a bug, memory), so its type is named and its
    traceback logged at DEBUG (``-v``).
    """
    told = isinstance(error, SlideError | WriteError)
    text = str(error) if told else f"{type(error).__name__}: {error}"
    logger.error("slide %s failed: %s", slide_id, text)
    if not told:
        logger.debug("slide %s: traceback of the failure", slide_id, exc_info=error)
    return text
