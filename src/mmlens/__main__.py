"""Entry point for ``python -m mmlens``."""

import sys

from mmlens.cli import main

sys.exit(main())
