"""Console output shared by every command and trainer: rich logging and progress bars."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


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


def progress_bar(enabled: bool = True, unit: str = "", info: bool = False) -> Any:
    """The toolkit's rich progress bar: description, bar, done/total (+ ``unit``), elapsed and
    remaining time, and with ``info`` a free-text field (``task.fields["info"]``, e.g. the
    current losses). Disabled, it keeps its counters but prints nothing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, disable=not enabled)


def run_main(parser: Any, run: Callable[[Any], Any], argv: Sequence[str] | None, what: str) -> int:
    """A ``python -m ...`` entry point: parse ``argv`` with ``parser``, call ``run(args)`` and
    log ``"{what} written to {result}"``. A bad configuration, unusable data or a missing file
    is one error line and exit status 2 (no traceback)."""
    from teacher.config import ConfigError
    from teacher.data.dataset import DataError

    setup_logging()
    args = parser.parse_args(argv)
    try:
        out = run(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    log.info("%s written to %s", what, out)
    return 0


__all__ = ["progress_bar", "run_main", "setup_logging"]
