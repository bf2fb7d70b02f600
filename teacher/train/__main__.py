"""``python -m teacher.train vqvae|prior ...`` (and ``accelerate launch -m teacher.train``)."""

import sys

from teacher.train.cli import main

sys.exit(main())
