"""``python -m fastjukebox`` is the console script."""

import sys

from fastjukebox.cli import main

sys.exit(main())
