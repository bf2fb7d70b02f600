"""The one-command demo: the shipped teacher and students -> a song in every mode -> the report.

By default (:func:`run_demo` with ``from_scratch=False``) nothing is trained: the teacher and
students shipped in :data:`eval.demo.pretrained.PRETRAINED_DIR` (trained by the ``demo`` recipe
for hours on a 2-core CPU; ``pretrained/MODEL_CARD.md`` says how and what they measure) are
checked to load, held-out synth songs are made, one song is generated in every mode and the
held-out clips are upsampled in every mode for the report. Stages ``models``, ``heldout``,
``samples``, ``report`` (:data:`PRETRAINED_STAGES`); a few minutes on 2 cores. A missing or
damaged shipped model is one error naming it and suggesting ``--from_scratch``.

``--from_scratch`` runs the whole recipe into the folder, stage after stage, each through the
same code paths as the command line (``teacher.train``, ``distill.train``,
``distill.pipeline``), so a finished demo folder is a real teacher with real students::

    OUT/
      demo.json                     the recipe, the step plan and every stage's status and time
      data/                         built-in synth songs (audio/, metadata.jsonl), or links to
                                    the part of --data the budget can use
      heldout/                      a few more synth songs (another seed), never trained on
      cache/                        decoded audio and the code cache (shared by every stage)
      runs/<stage>/                 trainer output folders: checkpoints/, metrics.jsonl
      teacher/{vqvae,top,middle,bottom}
      students/{categorical,gaussian}/{middle,bottom}
      samples/{exact,accelerated,hybrid,speculative}/
      report/                       report.html, report.md, metrics.json (eval.report)

(the default run writes ``teacher/`` and ``students/categorical/`` as copies of the shipped
models, so both kinds of folder load the same way; the Gaussian baselines are not shipped). Stages of ``--from_scratch``, in order: ``data``,
``vqvae``, ``top``, ``middle``, ``bottom``, ``students`` (a categorical AND a Gaussian student
for both upsampling levels: four distillation runs), ``samples`` (one song in every mode:
exact, accelerated, hybrid ``middle=exact,bottom=student``, speculative) and ``report``. A
stage whose product is already complete is SKIPPED, so running the demo again resumes it: a
training stage interrupted mid-way restarts from its latest checkpoint, and a product is
published into ``teacher/`` or ``students/`` (atomically) only when its run has finished. A
product made from an older upstream model is stale and is trained again.

The budget (``--minutes``) becomes per-run step counts from step times MEASURED on the machine
the demo runs on (:mod:`eval.demo.calibrate`: every run's model with random weights, a few
optimiser steps on batches of the real shapes, ~20 s): what is left of ``safety`` times the
budget after the fixed costs (data, caches, start-up, sampling, report; scaled by how fast
this machine is against the reference one) is split by the recipe's fractions
(:data:`DEMO`) and divided by each run's measured seconds per step
(:func:`~eval.demo.recipe.plan_steps`). The plan is kept in ``demo.json`` so a resumed demo
keeps it, and the final table shows planned against measured seconds per stage. With
``--data`` only the files the budget can read are encoded (a seeded choice of them, linked
into ``OUT/data``). The ``smoke`` preset trains tiny models for two steps each and finishes
in seconds: it is what the test suite runs.

Clear errors come before any training: a ``--data`` folder that does not exist, holds no
usable audio long enough for a top-prior window, or holds files outside the top prior's timing
range is one :class:`~teacher.data.DataError` / :class:`~teacher.config.ConfigError`; an ``OUT``
folder made by another recipe (preset, seed, data or mode) is refused rather than mixed.

The package: :mod:`eval.demo.recipe` (the configuration, the presets and the budget),
:mod:`eval.demo.calibrate` (step times on this machine), :mod:`eval.demo.stages` (each stage
over the folder), :mod:`eval.demo.runner` (:func:`run_demo`), :mod:`eval.demo.pretrained` (the
shipped models), :mod:`eval.demo.card` (the model card's measurements and targets) and
:mod:`eval.demo.cli` (the command line; ``python -m eval.demo``). Their public names are
importable from ``eval.demo``.
"""

from eval.demo.cli import add_demo_args, demo_config_from_args, main, run_from_args
from eval.demo.recipe import (
    DEMO,
    DEMO_FILE,
    PRESETS,
    PRETRAINED_STAGES,
    RECIPES,
    RUNS,
    SAMPLE_FAMILY,
    SAMPLE_MODES,
    SMOKE,
    STAGES,
    DemoConfig,
    Recipe,
    plan_steps,
    planned_seconds,
)
from eval.demo.runner import DemoError, DemoResult, run_demo, summary_table
from eval.demo.stages import StageResult

__all__ = [
    "DEMO",
    "DEMO_FILE",
    "PRESETS",
    "RECIPES",
    "RUNS",
    "SAMPLE_FAMILY",
    "SAMPLE_MODES",
    "PRETRAINED_STAGES",
    "SMOKE",
    "STAGES",
    "DemoConfig",
    "DemoError",
    "DemoResult",
    "Recipe",
    "StageResult",
    "add_demo_args",
    "demo_config_from_args",
    "main",
    "plan_steps",
    "planned_seconds",
    "run_demo",
    "run_from_args",
    "summary_table",
]
