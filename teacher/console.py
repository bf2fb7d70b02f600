"""Console output shared by every command and trainer: rich logging and progress bars."""

from __future__ import annotations

import argparse
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


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors meant for the user (bad configuration or model folder, unusable data or
    audio, a refused checkpoint, a missing file): one line, no traceback."""
    from teacher.config import ConfigError
    from teacher.data.audio import AudioError
    from teacher.data.dataset import DataError
    from teacher.released.checkpoints import ConvertError

    return (ConfigError, DataError, AudioError, ConvertError, FileNotFoundError)


def add_debug_flag(parser: argparse.ArgumentParser, _subcommand: bool = False) -> None:
    """``--debug`` (show the traceback of an error) on ``parser`` and every subcommand, so it
    may come before or after the subcommand's name."""
    if not any("--debug" in a.option_strings for a in parser._actions):
        parser.add_argument(
            "--debug",
            action="store_true",
            # a subcommand leaves the flag alone unless it is given there
            default=argparse.SUPPRESS if _subcommand else False,
            help="show the traceback of an error",
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_debug_flag(sub, _subcommand=True)


def run_main(
    parser: argparse.ArgumentParser,
    run: Callable[[Any], Any],
    argv: Sequence[str] | None,
    what: str | None = None,
) -> int:
    """A console entry point: parse ``argv`` with ``parser`` (given ``--debug``), call
    ``run(args)``. With ``what``, log ``"{what} written to {result}"`` and exit 0; without,
    ``run`` returns the exit status. Every :func:`user_errors` error is one line and exit
    status 2; with ``--debug`` the line carries the traceback."""
    setup_logging()
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        out = run(args)
    except user_errors() as err:
        log.error("%s", err, exc_info=err if getattr(args, "debug", False) else None)
        return 2
    if what is None:
        return int(out)
    log.info("%s written to %s", what, out)
    return 0


__all__ = ["add_debug_flag", "progress_bar", "run_main", "setup_logging", "user_errors"]
