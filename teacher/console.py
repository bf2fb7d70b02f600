"""Console output shared by every command and trainer: rich logging and progress bars."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int = logging.INFO) -> None:
    """Rich console logging; quiet on non-main ranks of a distributed run."""
    from rich.logging import RichHandler

    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )
    # accelerate logs every file of every checkpoint at INFO
    logging.getLogger("accelerate").setLevel(logging.WARNING)


__all__ = ["setup_logging"]
