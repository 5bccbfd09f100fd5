"""``python -m pathme.cli``: the ``pathme`` command."""

import sys

from pathme.cli import main

sys.exit(main())
