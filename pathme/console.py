"""What the ``pathme`` command shows on the console, and the full log it keeps beside a run's outputs.

The console (standard error) shows one line per stage (:func:`announce`), progress bars (tqdm and Ignite's, only
on a terminal), warnings and errors; a command's results are printed to standard output. The INFO lines of pathme,
Ignite and MONAI (an engine run or epoch finished, a slide opened, a bundle's input summary, a training step's
losses) and pathme's DEBUG lines (tracebacks of slide failures) go to ``<output folder>/pathme.log`` only, unless
``-v`` brings them back to the console too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from pathme.store.atomic import WriteError

LOG_FILE = "pathme.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SHOWN = "pathme_console"  # attribute of a record the console shows at any verbosity (see announce)
_active: list[bool] = []  # one entry per console_logging block running


def announce(logger: logging.Logger, message: str, *args: object) -> None:
    """Log ``message % args`` at INFO and show it on the console without ``-v`` too: a stage's one line."""
    logger.info(message, *args, extra={_SHOWN: True})


@contextmanager
def unannounced(*names: str) -> Iterator[None]:
    """While the block runs, what the loggers ``names`` announce (:func:`announce`) goes to the log only, as any
    INFO line: a walkthrough that runs a stage many times (the demo's eight MIL runs) keeps the console to its own
    one line per stage. Warnings and errors still reach the console."""
    demote = _Unannounced()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(demote)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(demote)


class _Unannounced(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, _SHOWN, False)
        return True


def active() -> bool:
    """Whether the pathme command's logging (:func:`console_logging`) is in place, so a bundle run leaves it as is
    instead of applying the bundle's own ``logging.conf``."""
    return bool(_active)


class ConsoleFilter(logging.Filter):
    """What the console shows: warnings, errors and announced lines; everything with ``verbose``. A filter rather
    than a handler level, so tqdm's logging redirect (which copies filters, not levels) keeps it."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        """True for a record the console shows."""
        return self.verbose or record.levelno >= logging.WARNING or getattr(record, _SHOWN, False)


class ConsoleFormatter(logging.Formatter):
    """Announced lines as they are; warnings and errors after their level and logger name."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's console line(s)."""
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname} {record.name}: {text}"


class OutputFolderLog(logging.FileHandler):
    """Appends to ``<folder>/pathme.log``, holding records in memory until the run has created ``folder``: a run
    refused before it writes anything leaves no folder behind (its error is on the console). A log file that cannot
    be written (a full disk) is said once on the console, named with the cause, and then left alone: the run goes
    on, where logging's default would print a traceback for every line."""

    def __init__(self, folder: Path) -> None:
        super().__init__(Path(folder) / LOG_FILE, mode="a", encoding="utf-8", delay=True)
        self.held: list[logging.LogRecord] = []
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` (after those held), or hold it while the folder does not exist."""
        if self.failed:
            return
        self.held.append(record)
        if self.stream is not None or Path(self.baseFilename).parent.is_dir():
            self._write_held()

    def _write_held(self) -> None:
        """Write the held records in order until one fails (then the rest are dropped with the file)."""
        while self.held and not self.failed:
            record = self.held.pop(0)
            try:
                super().emit(record)
            except OSError as error:  # FileHandler.emit opens the file outside the try that calls handleError
                self._give_up(error)
        self.held.clear()

    def handleError(self, record: logging.LogRecord) -> None:
        """A failed write of the file (an OSError) closes it for the rest of the run, with one console warning."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self._give_up(error)
        else:
            super().handleError(record)

    def _give_up(self, error: OSError) -> None:
        self.failed = True
        stream, self.stream = self.stream, None
        with suppress(OSError):  # what is still buffered cannot be written either
            if stream is not None:
                stream.close()
        logging.getLogger(__name__).warning(
            "%s; this run goes on without its log file", WriteError(self.baseFilename, error)
        )

    def close(self) -> None:
        """Write what is held if the folder exists by now, then close the file."""
        if not self.failed and Path(self.baseFilename).parent.is_dir():
            self._write_held()
        self.held.clear()
        super().close()


@contextmanager
def console_logging(folder: Path | None, verbose: bool = False) -> Iterator[None]:
    """The pathme command's logging while the block runs: the console handler (standard error; see
    :class:`ConsoleFilter`), ``<folder>/pathme.log`` (INFO of every library, DEBUG of pathme; no file for a command
    without an output folder), Python warnings logged, and log lines written above any running progress bar.
    Everything is put back as it was afterwards."""
    root, package = logging.getLogger(), logging.getLogger("pathme")
    levels = root.level, package.level
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(ConsoleFilter(verbose))
    console.setFormatter(logging.Formatter(LOG_FORMAT) if verbose else ConsoleFormatter())
    handlers: list[logging.Handler] = [console]
    if folder is not None:
        handlers.append(OutputFolderLog(folder))
        handlers[-1].setFormatter(logging.Formatter(LOG_FORMAT))
    root.setLevel(logging.INFO)
    package.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    logging.captureWarnings(True)
    _active.append(True)
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        _active.pop()
        logging.captureWarnings(False)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(levels[0])
        package.setLevel(levels[1])


def _prints_to_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


class _SkippedOnPurpose(logging.Filter):
    """MONAI warns when a bundle run is given ``logging_file=False``; pathme does that on purpose (its logging is
    in place), so the line is logged at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Logging file is set to False"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def route_monai_loggers() -> None:
    """Send MONAI's own-handler loggers through pathme's handlers. MONAI's ``get_logger`` gives some loggers (the
    bundle runner's, whose input summary is a dozen lines a run) a standard-output handler of their own and no
    propagation, so they print at INFO whatever the set-up; routed like Ignite's, their lines reach the log file
    and, with ``-v``, the console."""
    for name, candidate in list(logging.root.manager.loggerDict.items()):
        if name.split(".")[0] == "monai" and isinstance(candidate, logging.Logger) and not candidate.propagate:
            candidate.handlers = [handler for handler in candidate.handlers if not _prints_to_console(handler)]
            candidate.propagate = True
    workflows = logging.getLogger("monai.bundle.workflows")
    if not any(isinstance(existing, _SkippedOnPurpose) for existing in workflows.filters):
        workflows.addFilter(_SkippedOnPurpose())
