"""What the demo is asked to do and what it trains: :class:`DemoConfig`, :class:`Recipe`, the
``demo`` and ``smoke`` presets (:data:`DEMO`, :data:`SMOKE`), the stage, run and mode names, and
the budget: :func:`plan_steps` (optimiser steps per run) and :func:`planned_seconds` (seconds
per stage). The measurements behind the numbers are in :mod:`eval.demo`'s docs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from teacher.config import ConfigError

log = logging.getLogger(__name__)

PRESETS = ("demo", "smoke")
#: the stages of ``--from_scratch`` (the whole training recipe)
STAGES = ("data", "vqvae", "top", "middle", "bottom", "students", "samples", "report")
#: the stages of the default run on the shipped models (nothing is trained)
PRETRAINED_STAGES = ("models", "heldout", "samples", "report")
#: the training runs the budget is split over (a students run is ``family/level``)
FAMILIES = ("categorical", "gaussian")
UPSAMPLERS = ("middle", "bottom")
RUNS = (
    "vqvae",
    "top",
    "middle",
    "bottom",
    *(f"{fam}/{lvl}" for fam in FAMILIES for lvl in UPSAMPLERS),
)
#: the sampling modes of the samples stage, and hybrid's per-level plan
SAMPLE_MODES = ("exact", "accelerated", "hybrid", "speculative")
HYBRID = "middle=exact,bottom=student"
#: the samples and the report use the categorical students (the Gaussian IAF is the baseline)
SAMPLE_FAMILY = "categorical"
#: held-out synth songs use the demo seed plus this (song i depends only on (seed, i))
HELDOUT_SEED_OFFSET = 10_000
DEMO_FILE = "demo.json"


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class DemoConfig:
    """What ``fastjukebox demo`` was asked to do.

    Attributes:
        out: the demo folder (created; re-running on it resumes).
        minutes: the wall-clock budget the step counts are sized for (the ``demo`` preset; the
            ``smoke`` preset has fixed tiny step counts).
        data: your own audio folder (+ optional ``metadata.jsonl``/``.csv``) instead of the
            built-in synth songs; ``None`` uses the synth.
        seed: seeds the synth data, every trainer and the samples.
        preset: ``"demo"`` (small models) or ``"smoke"`` (tiny models and short songs, seconds;
            for tests).
        from_scratch: run the whole training recipe (``STAGES``) in the budget instead of
            sampling and evaluating the shipped models (``PRETRAINED_STAGES``).
        threads: torch CPU threads while the demo runs (``None``: the cores other jobs leave
            idle, :func:`teacher.device.idle_cpu_threads`). Oversubscribing hurts: on the 2-core
            reference machine a VQ-VAE step took 0.57 s with 2 threads and 0.95 s with 1 when
            idle, but ~10 s with 2 threads and ~3.5 s with 1 beside two other busy processes.
    """

    out: str = "demo_out"
    minutes: float = 15.0
    data: str | None = None
    seed: int = 0
    preset: str = "demo"
    threads: int | None = None
    from_scratch: bool = False

    def validate(self) -> DemoConfig:
        """Raise :class:`ConfigError` on the first bad value; return ``self``."""
        if self.data is not None and not self.from_scratch:
            raise ConfigError(
                "--data trains the demo on your own audio: add --from_scratch (without it the "
                "demo runs the shipped models, trained on the built-in synth songs)"
            )
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset must be one of {PRESETS}, got {self.preset!r}")
        if not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ConfigError(f"--minutes must be a positive number, got {self.minutes}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if not str(self.out):
            raise ConfigError("--out must name a folder")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        return self


@dataclass(frozen=True)
class Recipe:
    """What a preset trains and how long each run takes (the budget's inputs).

    Attributes:
        sample_rate: of the data and every model.
        n_songs, song_seconds: the synth training set; ``heldout_songs`` more (another seed)
            for the report.
        artists, genres: the synth's artists (timbres) and genres (styles).
        vqvae: a :data:`teacher.config.VQVAE_PRESETS` key.
        prior: a :func:`teacher.train.prior_preset` preset.
        upsampler_n_ctx: the upsamplers' window in codes (``None``: the preset's).
        n_tokens: lyric characters per top-prior window (``None``: the preset's).
        student: a :data:`student.config.STUDENT_PRESETS` preset.
        distill_n_ctx: codes per distillation window (``None``: the teacher's window).
        batch: train batch size of every run.
        learning_rate: run -> learning rate (:data:`RUNS` keys).
        sec_per_step: run -> seconds per optimiser step on the reference CPU (2 vCPU Xeon,
            2 threads); ``--from_scratch`` measures its own machine's before planning
            (:mod:`eval.demo.calibrate`) and uses these only to scale the fixed costs.
        fractions: run -> share of the training budget (sums to 1).
        fixed_seconds: stage -> seconds on the reference CPU that do not scale with steps
            (data, caches, start-up, sampling, the report).
        safety: fraction of the budget planned for (the rest absorbs a busy machine).
        min_steps, max_steps: clamp of every run's steps.
        fixed_steps: when set, every run trains exactly this many steps (``smoke``).
        sample_seconds: length of the samples stage's song.
        report_clips: held-out clips the report evaluates on (0: no report).
        report_seconds: their length (``None``: one top-prior window).
        report_modes: the sampling modes the report compares as whole chains.
        ce_warmup_fraction: distillation warm start: cross-entropy on the real codes, weight 1
            decayed to 0 over this fraction of the run (DESIGN §5 "warm start").
    """

    sample_rate: int
    n_songs: int
    song_seconds: float
    heldout_songs: int
    artists: tuple[str, ...] | None
    genres: tuple[str, ...] | None
    vqvae: str
    prior: str
    upsampler_n_ctx: int | None
    n_tokens: int | None
    student: str
    distill_n_ctx: int | None
    batch: int
    learning_rate: Mapping[str, float]
    sec_per_step: Mapping[str, float]
    fractions: Mapping[str, float]
    fixed_seconds: Mapping[str, float]
    safety: float = 0.85
    min_steps: int = 10
    max_steps: int = 100_000
    fixed_steps: int | None = None
    sample_seconds: float = 6.0
    report_clips: int = 2
    report_seconds: float | None = None
    report_modes: tuple[str, ...] = SAMPLE_MODES
    ce_warmup_fraction: float = 0.2


def _per_run(vqvae: float, prior: float, student: float) -> dict[str, float]:
    return {
        "vqvae": vqvae,
        "top": prior,
        "middle": prior,
        "bottom": prior,
        **{f"{fam}/{lvl}": student for fam in FAMILIES for lvl in UPSAMPLERS},
    }


#: the default recipe, the one the shipped models were trained with (for hours: their model
#: card): small models at 16 kHz on two timbres and two styles, sized for a 2-core CPU
DEMO = Recipe(
    sample_rate=16000,
    n_songs=160,
    song_seconds=12.0,
    heldout_songs=8,
    artists=("Moss Choir", "Aster Vale"),
    genres=("lullaby", "ballad"),
    vqvae="small",
    prior="small",
    upsampler_n_ctx=2048,  # a full window of 2048 codes: what the student's speed is about
    n_tokens=64,
    student="small",
    distill_n_ctx=512,  # convolutional students: short windows train them as well, 4x cheaper
    batch=4,
    learning_rate=_per_run(vqvae=3e-4, prior=6e-4, student=1e-3),
    sec_per_step={
        "vqvae": 0.70,
        "top": 0.27,
        "middle": 0.18,
        "bottom": 0.18,
        "categorical/middle": 0.56,
        "categorical/bottom": 0.44,
        "gaussian/middle": 0.58,
        "gaussian/bottom": 0.46,
    },
    fractions={
        "vqvae": 0.28,
        "top": 0.16,
        "middle": 0.10,
        "bottom": 0.10,
        "categorical/middle": 0.16,  # the hardest student to distil
        "categorical/bottom": 0.12,
        "gaussian/middle": 0.04,
        "gaussian/bottom": 0.04,
    },
    fixed_seconds={
        "data": 10.0,
        "vqvae": 10.0,  # start-up, decoded-audio cache, bandwidth statistics
        "top": 90.0,  # start-up and the code cache (32 min of audio, shared by later stages)
        "middle": 5.0,
        "bottom": 5.0,
        "students": 10.0,
        "samples": 25.0,  # measured 26.8 s at 1.54x the reference machine's step time
        "report": 115.0,  # measured 173 s there (3 clips of 4 s in every mode, pyin, t-SNE)
    },
    safety=0.9,
    sample_seconds=6.0,
    report_clips=3,
    report_seconds=4.0,
)

#: tiny models for a few steps: the test suite's end-to-end run
SMOKE = Recipe(
    sample_rate=8000,
    n_songs=4,
    song_seconds=3.0,
    heldout_songs=2,
    artists=None,
    genres=None,
    vqvae="tiny",
    prior="tiny",
    upsampler_n_ctx=None,
    n_tokens=None,
    student="tiny",
    distill_n_ctx=None,
    batch=2,
    learning_rate=_per_run(vqvae=3e-4, prior=1e-3, student=1e-3),
    sec_per_step=_per_run(vqvae=0.05, prior=0.05, student=0.05),
    fractions={run: 1.0 / len(RUNS) for run in RUNS},
    fixed_seconds=dict.fromkeys(STAGES, 2.0),
    min_steps=1,
    fixed_steps=2,
    sample_seconds=1.0,
    report_clips=2,
    report_seconds=1.0,
)

RECIPES: dict[str, Recipe] = {"demo": DEMO, "smoke": SMOKE}


def fixed_seconds(recipe: Recipe, speed: float = 1.0) -> dict[str, float]:
    """Every stage's fixed seconds on a machine ``speed`` times slower than the reference."""
    return {stage: speed * recipe.fixed_seconds.get(stage, 0.0) for stage in STAGES}


def plan_steps(
    minutes: float,
    recipe: Recipe,
    sec_per_step: Mapping[str, float] | None = None,
    speed: float = 1.0,
    spent: float = 0.0,
) -> dict[str, int]:
    """Optimiser steps of every run (:data:`RUNS`) for a budget of ``minutes``.

    ``steps = fraction · (safety · budget − spent − Σ fixed) / seconds_per_step`` with the
    seconds per step measured on this machine (``sec_per_step``; default the recipe's
    reference ones), the fixed costs scaled by ``speed`` and ``spent`` seconds already used
    (the measurement itself), clamped to ``[min_steps, max_steps]`` (a budget smaller than the
    fixed costs gives ``min_steps`` everywhere, and the demo then takes longer than asked: a
    warning says so).
    """
    if recipe.fixed_steps is not None:
        return dict.fromkeys(RUNS, recipe.fixed_steps)
    sec_per_step = sec_per_step or recipe.sec_per_step
    fixed = sum(fixed_seconds(recipe, speed).values())
    train_s = recipe.safety * minutes * 60.0 - spent - fixed
    if train_s <= 0:
        log.warning(
            "%.1f minutes do not cover the demo's fixed costs (~%.0f s): every run gets the "
            "minimum of %d steps and the demo will take longer than asked",
            minutes,
            fixed + spent,
            recipe.min_steps,
        )
    out = {}
    for run in RUNS:
        steps = int(recipe.fractions[run] * max(train_s, 0.0) / sec_per_step[run])
        out[run] = min(max(steps, recipe.min_steps), recipe.max_steps)
    return out


def planned_seconds(
    steps: Mapping[str, int],
    recipe: Recipe,
    sec_per_step: Mapping[str, float] | None = None,
    speed: float = 1.0,
) -> dict[str, float]:
    """Estimated seconds of every stage (:data:`STAGES`) for a step plan (the seconds per step
    measured here, default the reference ones; fixed costs scaled by ``speed``)."""
    sec_per_step = sec_per_step or recipe.sec_per_step
    est = fixed_seconds(recipe, speed)
    for run, n in steps.items():
        stage = "students" if "/" in run else run
        est[stage] += n * sec_per_step[run]
    return est
