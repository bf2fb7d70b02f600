"""The one-command demo: data -> VQ-VAE -> three priors -> four students -> samples -> report.

:func:`run_demo` runs the whole recipe into one folder, stage after stage, each through the
same code paths as the command line (``teacher.train``, ``distill.train``,
``distill.pipeline``), so a finished demo folder is a real teacher with real students::

    OUT/
      demo.json                     the recipe, the step plan and every stage's status and time
      data/                         built-in synth songs (audio/, metadata.jsonl) unless --data
      heldout/                      a few more synth songs (another seed), never trained on
      cache/                        decoded audio and the code cache (shared by every stage)
      runs/<stage>/                 trainer output folders: checkpoints/, metrics.jsonl
                                    (the last checkpoint of each run: ~0.5 GB in all)
      teacher/{vqvae,top,middle,bottom}
      students/{categorical,gaussian}/{middle,bottom}
      samples/{exact,accelerated,hybrid,speculative}/
      report/                       report.html, report.md, metrics.json (eval.report)

Stages, in order: ``data``, ``vqvae``, ``top``, ``middle``, ``bottom``, ``students`` (a
categorical AND a Gaussian student for both the middle and the bottom level: four distillation
runs), ``samples`` (one song in every mode: exact, accelerated, hybrid ``middle=exact,
bottom=student``, speculative) and ``report``. A stage whose product is already complete is
SKIPPED, so running the demo again resumes it: a training stage interrupted mid-way restarts
from its latest checkpoint (the trainers' ``--resume_from_checkpoint latest``), and a product
is published into ``teacher/`` or ``students/`` (atomically) only when its run has finished. A
product made from an older upstream model (a prior whose ``vqvae.json``, or a student whose
``teacher.json``, names other weights) is stale and is trained again.

The time budget (``--minutes``, default 15) becomes per-stage step counts (:func:`plan_steps`):
fixed costs (data, caches, model start-up, sampling, report) are estimated apart; what is left
of ``safety`` (0.9) times the budget is split by the fractions below, and each share is divided
by the seconds per optimiser step measured for that run on the reference machine (2 vCPU
Xeon, torch 2.13 CPU, 2 threads, batch 4)::

    run                  fraction   s/step   steps @ 15 min   what
    vqvae                  0.25      0.70         216         small_vqvae, 0.74 s crops
    top                    0.12      0.27         268         small top, 512 codes + 64 lyric chars
    middle                 0.09      0.18         302         small upsampler, 2048-code windows
    bottom                 0.09      0.18         302         small upsampler, 2048-code windows
    categorical/middle     0.23      0.56         248         small_student K=4, 512-code windows
    categorical/bottom     0.14      0.44         192         small_student K=4, 512-code windows
    gaussian/middle        0.04      0.58          41         baseline (DESIGN §5: don't tune it)
    gaussian/bottom        0.04      0.46          52         baseline

    fixed s: data 5, vqvae 10, top 40 (the code cache), middle 5, bottom 5, students 10,
    samples 60 (a 3 s song; speculative sampling is most of it), report 70 (2 clips of 1.5 s)
    -> planned 808 s (13.5 min) of 900

Measured on that machine (wall seconds; the s/step above come from these runs; run A had an
earlier, smaller plan)::

    stage      steps   planned s   run A (steps)           run B (this plan)
    data                     5            3.0                  3.5
    vqvae        216       161          110.4 (179 steps)      143.2
    top          268       112           98.4 (255)            113.4
    middle       302        59           49.8 (287)            59.9
    bottom       302        59           50.7 (287)            56.9
    students     533       281          253.8 (507)            288.5
    samples                 60           50.9                  35.4
    report                  70           60.3                  50.3
    total                  808          677.3                  751.1 (12.5 min)

A busy machine slows every stage (two processes with 2 threads each on 2 cores can make a
step 10x slower: see :attr:`DemoConfig.threads`). The ``smoke`` preset trains tiny models for
two steps each and finishes in ~12 s: it is what the test suite runs.

Clear errors come before any training: a ``--data`` folder that does not exist, holds no
usable audio long enough for a top-prior window, or holds files outside the top prior's timing
range is one :class:`~teacher.data.DataError` / :class:`~teacher.config.ConfigError`; an ``OUT``
folder made by another recipe (preset, seed or data) is refused rather than mixed.

The package: :mod:`eval.demo.recipe` (the configuration, the presets and the budget),
:mod:`eval.demo.stages` (each stage over the folder), :mod:`eval.demo.runner` (:func:`run_demo`)
and :mod:`eval.demo.cli` (the command line; ``python -m eval.demo``). Their public names are
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
