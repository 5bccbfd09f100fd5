"""PatHME: hierarchical multi-expert knowledge distillation for whole-slide images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathme")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
