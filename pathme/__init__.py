"""PatHME: hierarchical multi-expert knowledge distillation for whole-slide images."""

import warnings
from importlib.metadata import PackageNotFoundError, version

# with the deploy extra installed, `import monai` imports Holoscan, which warns about the stack size its own
# application threads need; only the MONAI Deploy app runs those threads (pathme.deploy.app)
warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning, module="holoscan")

try:
    __version__ = version("pathme")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
