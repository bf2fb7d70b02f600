"""``python -m eval.demo``: the same as ``fastjukebox demo`` (:func:`eval.demo.cli.main`)."""

import sys

from eval.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
