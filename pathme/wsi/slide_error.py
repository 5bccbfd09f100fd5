"""Errors about one slide, and the one line a cohort run records for a slide that failed before it goes on."""

from __future__ import annotations

import logging
import re


class ExplainedError(Exception):
    """An error whose message is the whole story a user needs: what failed, where, and what to do. A cohort's summary
    row gives it as it is, without a type name or a traceback (:func:`failure_text`)."""


class SlideError(ExplainedError, ValueError):
    """A slide that cannot be used; the message names the slide, the file and the problem."""


#: how torch's DataLoader rebuilds, in the consumer, an exception raised in a worker (torch.utils.data's
#: ExceptionWrapper): the original type, with the worker's formatted traceback as its message
_TRACEBACK = "Traceback (most recent call last):\n"
_WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal " + re.escape(_TRACEBACK))


def error_reason(error: BaseException) -> str:
    """The message of ``error`` as it was raised: pathme's errors are one line naming the file and the fix.

    An exception raised in a DataLoader worker (a region reader, a store reader) reaches the consumer rebuilt by
    torch as "Caught SlideError in DataLoader worker process 0. / Original Traceback (most recent call last): ..."
    with the original message on the last line(s); that message is returned, so summaries and the console keep the
    one line (the whole text stays in the debug log, see :func:`failure_text`)."""
    text = str(error)
    if not _WORKER_ERROR.match(text):
        return text
    last = text.rsplit(_TRACEBACK, 1)[-1].splitlines()  # the traceback of the exception raised, after any chain
    start = next((i for i, line in enumerate(last) if line and not line.startswith(" ")), len(last) - 1)
    exception = "\n".join(last[start:]).strip()  # "<module>.<Type>: <message>"
    return exception.split(": ", 1)[-1]


def failure_text(error: Exception, slide_id: str, logger: logging.Logger) -> str:
    """The one line a cohort's summary row gets for a slide that failed, logged as an error.

    An :class:`ExplainedError` (a :class:`SlideError`: a problem with the input; a full disk's
    :class:`~pathme.store.atomic.WriteError`) says what to do in its message; anything else is unexpected (a bug,
    memory), so its type is named and its traceback logged at DEBUG (``-v``). An error from a DataLoader worker gives
    its original message (:func:`error_reason`).
    """
    told = isinstance(error, ExplainedError)
    reason = error_reason(error)
    text = reason if told else f"{type(error).__name__}: {reason}"
    logger.error("slide %s failed: %s", slide_id, text)
    if not told:
        logger.debug("slide %s: traceback of the failure", slide_id, exc_info=error)
    return text
