"""`python -m mest_driver` (see `loop.py`)."""

import sys

from .loop import main

sys.exit(main())
