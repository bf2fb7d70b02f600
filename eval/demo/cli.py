"""The one-command demo: the shipped teacher and students (or, --from_scratch, the whole recipe trained in a budget) -> a song in every mode -> the report.

This module is its command line (``fastjukebox demo`` and ``python -m eval.demo``): the flags
(:func:`add_demo_args`), the :class:`~eval.demo.recipe.DemoConfig` they make and :func:`main`.
(The line above is ``--help``'s description.)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from eval.demo.recipe import PRESETS, DemoConfig
from eval.demo.runner import DemoResult, run_demo

log = logging.getLogger(__name__)


_HELP = {  # the flags' help texts
    "out": "the demo folder (re-running on it resumes)",
    "minutes": "--from_scratch: the wall-clock budget; the runs' steps are sized from step times "
    "measured on this machine",
    "data": "--from_scratch: your own audio folder (+ metadata.jsonl/.csv) instead of the "
    "built-in synth songs (only what the budget can use is encoded)",
    "preset": "demo: the shipped models / small ones; smoke: tiny models and short songs (tests)",
    "from_scratch": "train the teacher and students here (data, VQ-VAE, priors, students) "
    "instead of using the shipped models",
    "threads": "torch CPU threads (default: the cores other jobs leave idle, from the load average)",
    "no_progress": "no stage headers or bars",
}
#: the flags that are :class:`DemoConfig` fields of the same name
_CONFIG_FLAGS = ("out", "minutes", "data", "seed", "preset", "threads", "from_scratch")


def add_demo_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``fastjukebox demo``."""
    d, h = DemoConfig(), _HELP
    p.add_argument("--out", default=d.out, help=h["out"])
    p.add_argument("--from_scratch", action="store_true", help=h["from_scratch"])
    p.add_argument("--minutes", type=float, default=d.minutes, help=h["minutes"])
    p.add_argument("--data", default=None, help=h["data"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--preset", choices=PRESETS, default=d.preset, help=h["preset"])
    p.add_argument("--threads", type=int, default=None, help=h["threads"])
    p.add_argument("--no_progress", action="store_true", help=h["no_progress"])


def demo_config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The validated :class:`DemoConfig` of parsed :func:`add_demo_args` flags."""
    return DemoConfig(**{k: getattr(args, k) for k in _CONFIG_FLAGS}).validate()


def run_from_args(args: argparse.Namespace) -> DemoResult:
    """Run the demo from parsed :func:`add_demo_args` flags."""
    return run_demo(demo_config_from_args(args), progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.demo``: exit status 0, or 2 with one error line (``--debug``: the
    traceback too)."""
    from teacher.console import run_main

    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__.splitlines()[0])
    add_demo_args(p)

    def run(args: argparse.Namespace) -> int:
        res = run_from_args(args)
        log.info("demo finished in %.1f min: samples in %s", res.seconds / 60, res.out / "samples")
        return 0

    return run_main(p, run, argv)
