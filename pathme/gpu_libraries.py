"""Optional GPU libraries on a machine without a CUDA driver: kept from printing that they cannot find one.

Two libraries pathme depends on load GPU parts that report, on a healthy CPU-only machine, that CUDA is missing:

- nvImageCodec (``nvidia.nvimgcodec``, a dependency of cuCIM; MONAI Deploy imports it whenever ``import monai``
  runs) loads its GPU codec plug-ins (nvJPEG, nvJPEG2000, nvTIFF) when it is imported. Each one that cannot load
  writes "Failed to load ... library! Please install ..." and a "Note: ..." line straight to file descriptor 2,
  and nvImageCodec's logger adds a red "[ERROR] ... Decoders and encoders will not be registered." line.
- cuFile, which cuCIM uses for GPUDirect Storage once torch has loaded ``libcufile``, writes "dlopen error
  libcuda.so.1 ...", "missing cuda symbols while dynamic loading" and "cuFile initialization failed" to
  file descriptor 1 (standard output) the first time cuCIM opens a file in a process. It has no switch for this (its
  ``CUFILE_LOGGING_LEVEL`` applies after these lines are written).

nvImageCodec's logger has a switch, ``PYNVIMGCODEC_VERBOSITY`` (docs.nvidia.com/cuda/nvimagecodec,
"Environment variables"; 0 is silent); the other lines come from C code with none, so only those exact lines
(:data:`NO_DRIVER_LINES`) are dropped, from file descriptors 1 and 2 and only while nvImageCodec is imported or cuCIM
opens its first file. Where a CUDA driver is present nothing is changed: a missing codec library is then worth
reading about.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

CUDA_DRIVER = "libcuda.so.1"
VERBOSITY_VARIABLE = "PYNVIMGCODEC_VERBOSITY"
#: whole lines the GPU plug-ins of nvImageCodec and cuFile write to file descriptor 2 when there is no CUDA driver
NO_DRIVER_LINES = re.compile(
    r"Failed to load (nvjpeg|nvjpeg2k|nvtiff) library! Please install .*"
    r"|Note: If using nvImageCodec's Python distribution, it is enough to install the .* wheel.*"
    r"|dlopen error libcuda\.so\.1: .*"
    r"| ?missing cuda symbols while dynamic loading"
    r"| ?cuFile initialization failed"
)

_capture_lock = threading.Lock()  # file descriptors are the process's: one capture at a time
_cucim_quiet_in: set[int] = set()  # processes (pids) whose first cuCIM open has been made


@functools.cache
def cuda_driver_present() -> bool:
    """Whether the CUDA driver library (``libcuda.so.1``) loads: what a GPU needs and the plug-ins look for."""
    try:
        ctypes.CDLL(CUDA_DRIVER)
    except OSError:
        return False
    return True


@contextmanager
def dropping_no_driver_lines() -> Iterator[None]:
    """Hold what is written to file descriptors 1 and 2 while the block runs (C libraries write there directly, not
    through ``sys.stdout``/``sys.stderr``; cuFile writes to 1, nvImageCodec to 2), then write back every line but
    the :data:`NO_DRIVER_LINES`, in order, each to the descriptor it was written to. Python's own writes in the
    block are held and written back too."""
    with _capture_lock, ExitStack() as stack:
        held = {fd: stack.enter_context(tempfile.TemporaryFile()) for fd in (1, 2)}
        sys.stdout.flush()
        sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in held}
        for fd, file in held.items():
            os.dup2(file.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, file in held.items():
                os.dup2(saved[fd], fd)
                os.close(saved[fd])
                file.seek(0)
                lines = file.read().decode(errors="replace").splitlines(keepends=True)
                kept = "".join(line for line in lines if not NO_DRIVER_LINES.fullmatch(line.rstrip("\r\n")))
                if kept:
                    os.write(fd, kept.encode())


def import_image_codecs_quietly() -> None:
    """Import nvImageCodec once, before anything imports MONAI, without its no-driver lines: with no CUDA driver,
    ``PYNVIMGCODEC_VERBOSITY=0`` (a value already set is kept) and the plug-ins' own lines dropped. Does nothing
    where a CUDA driver is present or nvImageCodec is not installed."""
    if cuda_driver_present() or "nvidia.nvimgcodec" in sys.modules:
        return
    try:
        installed = importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ModuleNotFoundError:  # no ``nvidia`` namespace at all
        installed = False
    if not installed:
        return
    os.environ.setdefault(VERBOSITY_VARIABLE, "0")
    with dropping_no_driver_lines():
        import nvidia.nvimgcodec  # noqa: F401  (registers its plug-ins now, so a later import prints nothing)


def quiet_first_cucim_open() -> AbstractContextManager[None]:
    """A context for cuCIM's first open in this process: drops cuFile's no-driver lines where there is no CUDA
    driver; a plain context otherwise and for every later open (cuFile reports once per process)."""
    if cuda_driver_present() or os.getpid() in _cucim_quiet_in:
        return nullcontext()
    _cucim_quiet_in.add(os.getpid())
    return dropping_no_driver_lines()
