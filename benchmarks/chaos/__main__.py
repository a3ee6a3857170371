"""``python -m benchmarks.chaos``: see :mod:`benchmarks.chaos`."""

import sys

from .report import main

sys.exit(main())
