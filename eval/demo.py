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
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teacher.config import VQVAE_PRESETS, ConfigError, config_to_dict
from teacher.io import atomic_dir, atomic_write_json, latest_checkpoint, read_json

log = logging.getLogger(__name__)

PRESETS = ("demo", "smoke")
STAGES = ("data", "vqvae", "top", "middle", "bottom", "students", "samples", "report")
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
#: a stage's status in :class:`StageResult`
RAN, RESUMED, SKIPPED = "ran", "resumed", "skipped"


class DemoError(ConfigError):
    """The demo cannot run as asked (e.g. ``OUT`` holds another recipe's demo)."""


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
        preset: ``"demo"`` (small models, ~15 min on a 2-core CPU) or ``"smoke"`` (tiny models,
            seconds; for tests).
        threads: torch CPU threads while the demo runs (``None``: torch's default, all cores).
            On a machine other jobs share, 1 avoids OpenMP oversubscription: on the 2-core
            reference machine a VQ-VAE step took 0.57 s with 2 threads and 0.95 s with 1 when
            idle, but ~10 s with 2 threads and ~3.5 s with 1 beside two other busy processes.
    """

    out: str = "demo_out"
    minutes: float = 15.0
    data: str | None = None
    seed: int = 0
    preset: str = "demo"
    threads: int | None = None

    def validate(self) -> DemoConfig:
        """Raise :class:`ConfigError` on the first bad value; return ``self``."""
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
        vqvae: a :data:`teacher.config.VQVAE_PRESETS` key.
        prior: a :func:`teacher.train.prior_preset` preset.
        upsampler_n_ctx: the upsamplers' window in codes (``None``: the preset's).
        n_tokens: lyric characters per top-prior window (``None``: the preset's).
        student: a :data:`student.config.STUDENT_PRESETS` preset.
        distill_n_ctx: codes per distillation window (``None``: the teacher's window).
        batch: train batch size of every run.
        learning_rate: run -> learning rate (:data:`RUNS` keys).
        sec_per_step: run -> measured seconds per optimiser step on the reference CPU.
        fractions: run -> share of the training budget (sums to 1).
        fixed_seconds: stage -> estimated seconds that do not scale with steps (data, caches,
            start-up, sampling, the report).
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


#: the default recipe: small models at 22.05 kHz, sized for a 2-core CPU (module docs)
DEMO = Recipe(
    sample_rate=22050,
    n_songs=40,
    song_seconds=12.0,
    heldout_songs=4,
    vqvae="small",
    prior="small",
    upsampler_n_ctx=2048,  # a full window of 2048 codes: what the student's speed is about
    n_tokens=64,
    student="small",
    distill_n_ctx=512,  # convolutional students: short windows train them as well, 4x cheaper
    batch=4,
    learning_rate=_per_run(vqvae=3e-4, prior=6e-4, student=1e-3),
    sec_per_step={
        "vqvae": 0.70,  # 0.62 idle, 0.83 beside another job
        "top": 0.27,
        "middle": 0.18,
        "bottom": 0.18,
        "categorical/middle": 0.56,
        "categorical/bottom": 0.44,
        "gaussian/middle": 0.58,
        "gaussian/bottom": 0.46,
    },
    fractions={
        "vqvae": 0.25,
        "top": 0.12,
        "middle": 0.09,
        "bottom": 0.09,
        "categorical/middle": 0.23,  # the hardest student to distil (KL ~0.8 nats at 100 steps)
        "categorical/bottom": 0.14,
        "gaussian/middle": 0.04,
        "gaussian/bottom": 0.04,
    },
    fixed_seconds={
        "data": 5.0,
        "vqvae": 10.0,  # start-up, decoded-audio cache, bandwidth statistics
        "top": 40.0,  # start-up and the code cache (encoded once, shared by later stages)
        "middle": 5.0,
        "bottom": 5.0,
        "students": 10.0,
        # speculative sampling dominates both: ~150-320 codes/s on this CPU (exact ~2900)
        "samples": 60.0,
        "report": 70.0,
    },
    safety=0.9,
    sample_seconds=3.0,
    report_clips=2,
    report_seconds=1.5,
    # speculative is in the report's per-level table and in samples/; as a whole-chain mode it
    # would triple the report's time
    report_modes=("exact", "accelerated", "hybrid"),
)

#: tiny models for a few steps: the test suite's end-to-end run
SMOKE = Recipe(
    sample_rate=8000,
    n_songs=4,
    song_seconds=3.0,
    heldout_songs=2,
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
)

RECIPES: dict[str, Recipe] = {"demo": DEMO, "smoke": SMOKE}


def plan_steps(minutes: float, recipe: Recipe) -> dict[str, int]:
    """Optimiser steps of every run (:data:`RUNS`) for a budget of ``minutes``.

    ``steps = fraction · (safety · budget − Σ fixed) / seconds_per_step``, clamped to
    ``[min_steps, max_steps]`` (a budget smaller than the fixed costs gives ``min_steps``
    everywhere, and the demo then takes longer than asked: a warning says so).
    """
    if recipe.fixed_steps is not None:
        return dict.fromkeys(RUNS, recipe.fixed_steps)
    train_s = recipe.safety * minutes * 60.0 - sum(recipe.fixed_seconds.values())
    if train_s <= 0:
        log.warning(
            "%.1f minutes do not cover the demo's fixed costs (~%.0f s): every run gets the "
            "minimum of %d steps and the demo will take longer than asked",
            minutes,
            sum(recipe.fixed_seconds.values()),
            recipe.min_steps,
        )
    out = {}
    for run in RUNS:
        steps = int(recipe.fractions[run] * max(train_s, 0.0) / recipe.sec_per_step[run])
        out[run] = min(max(steps, recipe.min_steps), recipe.max_steps)
    return out


def planned_seconds(steps: Mapping[str, int], recipe: Recipe) -> dict[str, float]:
    """Estimated seconds of every stage (:data:`STAGES`) for a step plan."""
    est = {stage: float(recipe.fixed_seconds.get(stage, 0.0)) for stage in STAGES}
    for run, n in steps.items():
        stage = "students" if "/" in run else run
        est[stage] += n * recipe.sec_per_step[run]
    return est


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class StageResult:
    """How one stage went.

    Attributes:
        name: a :data:`STAGES` name.
        status: ``"ran"`` (from scratch), ``"resumed"`` (continued from a checkpoint or from
            part of its outputs) or ``"skipped"`` (its outputs were already complete, or there
            was nothing to do: see ``note``).
        seconds: wall time of the stage in this call.
        steps: optimiser steps of its run(s) (``None`` for stages that do not train).
        outputs: the folders it produced.
        note: a line for the summary.
    """

    name: str
    status: str
    seconds: float = 0.0
    steps: int | None = None
    outputs: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DemoResult:
    """What :func:`run_demo` did and where everything is.

    Attributes:
        out: the demo folder.
        config: the :class:`DemoConfig`.
        steps: run -> optimiser steps (:func:`plan_steps`).
        stages: one :class:`StageResult` per stage, in order.
        teacher_dir: ``OUT/teacher`` (``Jukebox.from_pretrained`` / ``FastJukebox``).
        students_dir: ``OUT/students`` (``<family>/<level>`` student folders).
        samples: mode -> its ``GenerationResult.save`` folder.
        report_dir: ``OUT/report`` when a report was written.
        data_dir, heldout_dir: the training audio and the held-out audio.
        seconds: wall time of this call.
    """

    out: Path
    config: DemoConfig
    steps: dict[str, int]
    stages: list[StageResult]
    teacher_dir: Path
    students_dir: Path
    samples: dict[str, Path]
    report_dir: Path | None
    data_dir: Path
    heldout_dir: Path
    seconds: float

    def stage(self, name: str) -> StageResult:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def statuses(self) -> dict[str, str]:
        """Stage name -> status."""
        return {s.name: s.status for s in self.stages}


# ---------------------------------------------------------------------------------------------
# the runner


def run_demo(cfg: DemoConfig, progress: bool = True) -> DemoResult:
    """Run (or resume) the demo recipe of ``cfg`` into ``cfg.out``; see the module docs.

    ``progress``: a stage header before each stage and a final summary table of stage times on
    the console (rich); the trainers and the samplers draw their own bars (the trainers always
    do on the main process). Everything is also logged and recorded in ``OUT/demo.json``.
    """
    cfg = cfg.validate()
    if cfg.threads is None:
        return _run_demo(cfg, progress)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(cfg, progress)
    finally:
        torch.set_num_threads(before)


def _run_demo(cfg: DemoConfig, progress: bool) -> DemoResult:
    recipe = RECIPES[cfg.preset]
    out = Path(cfg.out)
    t_start = time.perf_counter()
    _check_out_folder(out, cfg)
    demo = _Demo(cfg, recipe, out, progress)
    demo.preflight()  # every data error before any training
    steps = demo.steps
    est = planned_seconds(steps, recipe)
    console = demo.console
    if console is not None:
        console.rule(f"[bold]fastjukebox demo[/] ({cfg.preset} preset) into {out}")
        console.print(
            f"budget {cfg.minutes:g} min; planned ~{sum(est.values()) / 60:.1f} min on a 2-core "
            "CPU; steps: " + ", ".join(f"{r} {n}" for r, n in steps.items())
        )
    record = demo.load_record()
    results: list[StageResult] = []
    for i, stage in enumerate(STAGES):
        if console is not None:
            console.rule(
                f"[bold cyan]stage {i + 1}/{len(STAGES)}: {stage}[/]  (~{est[stage]:.0f} s)"
            )
        log.info("demo stage %d/%d: %s", i + 1, len(STAGES), stage)
        t0 = time.perf_counter()
        res = getattr(demo, f"stage_{stage}")()
        res.seconds = time.perf_counter() - t0
        results.append(res)
        log.info("demo stage %s %s in %.1f s%s", stage, res.status, res.seconds, _suffix(res.note))
        record["stages"][stage] = res.to_dict()
        record["planned_seconds"] = est
        atomic_write_json(out / DEMO_FILE, record)
    total = time.perf_counter() - t_start
    record["seconds"] = total
    record.setdefault("history", []).append(
        {"time": time.time(), "seconds": total, "statuses": {r.name: r.status for r in results}}
    )
    atomic_write_json(out / DEMO_FILE, record)
    if console is not None:
        console.print(summary_table(results, est, total))
    report = out / "report"
    return DemoResult(
        out=out,
        config=cfg,
        steps=steps,
        stages=results,
        teacher_dir=out / "teacher",
        students_dir=out / "students",
        samples={m: out / "samples" / m for m in SAMPLE_MODES},
        report_dir=report if (report / "metrics.json").is_file() else None,
        data_dir=demo.data_dir,
        heldout_dir=demo.heldout_dir,
        seconds=total,
    )


def summary_table(results: list[StageResult], planned: Mapping[str, float], total: float) -> Any:
    """A rich table: stage, status, steps, planned and measured seconds."""
    from rich.table import Table

    table = Table(title=f"demo stages ({total / 60:.1f} min)")
    for col, justify in (
        ("stage", "left"),
        ("status", "left"),
        ("steps", "right"),
        ("planned s", "right"),
        ("wall s", "right"),
        ("note", "left"),
    ):
        table.add_column(col, justify=justify)
    for r in results:
        table.add_row(
            r.name,
            r.status,
            "" if r.steps is None else str(r.steps),
            f"{planned.get(r.name, 0.0):.0f}",
            f"{r.seconds:.1f}",
            r.note,
        )
    table.add_row("total", "", "", f"{sum(planned.values()):.0f}", f"{total:.1f}", "")
    return table


def _suffix(note: str) -> str:
    return f" ({note})" if note else ""


def _recipe_key(cfg: DemoConfig) -> dict[str, Any]:
    """What must match for a demo folder to be resumed (the budget may change)."""
    data = str(Path(cfg.data).resolve()) if cfg.data else None
    return {"preset": cfg.preset, "seed": cfg.seed, "data": data}


def _check_out_folder(out: Path, cfg: DemoConfig) -> None:
    path = out / DEMO_FILE
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a folder")
    if not path.is_file():
        return
    try:
        saved = read_json(path).get("recipe", {})
    except (OSError, ValueError) as err:
        raise DemoError(f"{path} is unreadable ({err}); delete it or use another --out") from err
    want = _recipe_key(cfg)
    diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if diff:
        what = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in diff.items())
        raise DemoError(
            f"{out} holds a demo made with {what}: use another --out, or delete {out} to start over"
        )


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _publish(src: Path, dst: Path) -> None:
    """Copy the model folder ``src`` to ``dst`` atomically (``dst`` appears complete or not at
    all; a re-run that finds it skips the stage)."""
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


class _Demo:
    """The stages of one demo run over a folder (kept together: they share paths and plan)."""

    def __init__(self, cfg: DemoConfig, recipe: Recipe, out: Path, progress: bool) -> None:
        self.cfg, self.recipe, self.out, self.progress = cfg, recipe, out, progress
        self.steps = plan_steps(cfg.minutes, recipe)
        self.data_dir = Path(cfg.data) if cfg.data else out / "data"
        # your own audio has no held-out part: the report then evaluates on it (logged)
        self.heldout_dir = out / "heldout" if cfg.data is None else Path(cfg.data)
        self.teacher_dir = out / "teacher"
        self.students_dir = out / "students"
        self.cache_dir = out / "cache"
        self.runs_dir = out / "runs"
        self.console = None
        if progress:
            from rich.console import Console

            self.console = Console()

    # -- shared pieces -------------------------------------------------------------------------

    def load_record(self) -> dict[str, Any]:
        path = self.out / DEMO_FILE
        record: dict[str, Any] = read_json(path) if path.is_file() else {}
        record.update(
            recipe=_recipe_key(self.cfg),
            config=config_to_dict(self.cfg),
            steps=self.steps,
        )
        record.setdefault("stages", {})
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
        return record

    def vq_cfg(self) -> Any:
        return VQVAE_PRESETS[self.recipe.vqvae](sample_rate=self.recipe.sample_rate)

    def prior_cfg(self, name: str, vq_cfg: Any) -> Any:
        from teacher.train import level_index, prior_preset

        level = level_index(name, vq_cfg.levels)
        r = self.recipe
        n_ctx = r.upsampler_n_ctx if name != "top" else None
        n_tokens = r.n_tokens if name == "top" else None
        return prior_preset(r.prior, level, vq_cfg, n_ctx, n_tokens)

    def data_cfg(self, sample_length: int, **kw: Any) -> Any:
        from teacher.data import DataConfig

        return DataConfig(
            root=str(self.data_dir),
            sample_rate=self.recipe.sample_rate,
            sample_length=sample_length,
            cache_dir=str(self.cache_dir),
            seed=self.cfg.seed,
            **kw,
        )

    def train_cfg(self, run: str, output_dir: Path) -> Any:
        from teacher.train import TrainConfig

        steps = self.steps[run]
        return TrainConfig(
            output_dir=str(output_dir),
            train_batch_size=self.recipe.batch,
            learning_rate=self.recipe.learning_rate[run],
            lr_scheduler="cosine",
            lr_warmup_steps=min(100, steps // 10),
            max_train_steps=steps,
            # four checkpoints a run: an interruption loses at most a quarter of it
            checkpointing_steps=max(1, math.ceil(steps / 4)),
            checkpoints_total_limit=1,
            resume_from_checkpoint="latest",
            seed=self.cfg.seed,
            logging_steps=max(1, min(10, steps // 10)),
        )

    def synth_cfgs(self) -> tuple[Any, Any]:
        from teacher.synth import SynthConfig

        r = self.recipe
        train = SynthConfig(
            n_songs=r.n_songs,
            seconds=r.song_seconds,
            sample_rate=r.sample_rate,
            seed=self.cfg.seed,
        )
        heldout = dataclasses.replace(
            train, n_songs=r.heldout_songs, seed=self.cfg.seed + HELDOUT_SEED_OFFSET
        )
        return train, heldout

    def top_window(self) -> int:
        """Samples of one top-prior window: the shortest file every stage can use."""
        vq_cfg = self.vq_cfg()
        return self.prior_cfg("top", vq_cfg).sample_length

    # -- preflight ------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check a ``--data`` folder before anything is trained (one clear error)."""
        if self.cfg.data is None:
            return
        from teacher.data import DataError, scan_audio

        root = Path(self.cfg.data)
        if not root.is_dir():
            raise DataError(f"--data {root}: no such folder")
        window = self.top_window()
        sr = self.recipe.sample_rate
        # one pass over the files (streamed, nothing cached): the scan the trainers repeat
        data_cfg = dataclasses.replace(self.data_cfg(window), cache="none")
        try:
            scan = scan_audio(data_cfg)
        except DataError as err:
            raise DataError(
                f"--data {root} has no usable audio for the demo (every file must be at least "
                f"one top-prior window, {window / sr:.2f} s at {sr} Hz): {err}"
            ) from err
        top = self.prior_cfg("top", self.vq_cfg())
        lab = top.labels
        if lab is not None and lab.include_timing:
            too_long = [f for f in scan.files if f.length >= lab.max_duration * sr]
            if too_long:
                raise ConfigError(
                    f"--data {root}: {len(too_long)} files are longer than the top prior's "
                    f"timing range ({lab.max_duration:g} s), e.g. {too_long[0].rel}: cut them"
                )
        log.info(
            "--data %s: %d usable files, %.1f min of audio",
            root,
            len(scan.files),
            scan.total_length / sr / 60,
        )

    # -- stages ---------------------------------------------------------------------------------

    def stage_data(self) -> StageResult:
        if self.cfg.data is not None:
            return StageResult(
                "data", SKIPPED, outputs=[str(self.data_dir)], note=f"your audio: {self.data_dir}"
            )
        from teacher.config import load_config
        from teacher.synth import SynthConfig, write_synth_dataset

        train, heldout = self.synth_cfgs()
        done = 0
        for folder, want in ((self.data_dir, train), (self.heldout_dir, heldout)):
            path = folder / "synth_config.json"  # written last by write_synth_dataset
            if path.is_file() and load_config(SynthConfig, str(path)) == want:
                done += 1
                continue
            write_synth_dataset(folder, want, progress=self.progress)
        status = SKIPPED if done == 2 else (RESUMED if done else RAN)
        note = (
            f"{train.n_songs} songs x {train.seconds:g} s + {heldout.n_songs} held out, "
            f"{train.sample_rate} Hz"
        )
        return StageResult(
            "data", status, outputs=[str(self.data_dir), str(self.heldout_dir)], note=note
        )

    def stage_vqvae(self) -> StageResult:
        from teacher.train import train_vqvae

        product = self.teacher_dir / "vqvae"
        steps = self.steps["vqvae"]
        if _is_model(product):
            return StageResult("vqvae", SKIPPED, steps=steps, outputs=[str(product)])
        run_dir = self.runs_dir / "vqvae"
        resumed = latest_checkpoint(run_dir / "checkpoints") is not None
        vq_cfg = self.vq_cfg()
        model = train_vqvae(
            vq_cfg, self.data_cfg(vq_cfg.sample_length), self.train_cfg("vqvae", run_dir)
        )
        _publish(model, product)
        return StageResult(
            "vqvae", RESUMED if resumed else RAN, steps=steps, outputs=[str(product)]
        )

    def _stage_prior(self, name: str) -> StageResult:
        from teacher.codes import vqvae_fingerprint
        from teacher.train import VQVAE_LINK_FILE, train_prior

        vq_dir = self.teacher_dir / "vqvae"
        product = self.teacher_dir / name
        run_dir = self.runs_dir / name
        steps = self.steps[name]
        fp = vqvae_fingerprint(vq_dir)

        def linked(folder: Path) -> bool:
            link = folder / VQVAE_LINK_FILE
            return link.is_file() and read_json(link).get("fingerprint") == fp

        if _is_model(product):
            if linked(product):
                return StageResult(name, SKIPPED, steps=steps, outputs=[str(product)])
            log.warning("%s models the codes of another VQ-VAE: training it again", product)
            shutil.rmtree(product)
        if (run_dir / "model").is_dir() and not linked(run_dir / "model"):
            shutil.rmtree(run_dir)  # checkpoints of a stale run cannot be resumed
        resumed = latest_checkpoint(run_dir / "checkpoints") is not None
        vq_cfg = self.vq_cfg()
        prior_cfg = self.prior_cfg(name, vq_cfg)
        model = train_prior(
            prior_cfg,
            vq_dir,
            self.data_cfg(prior_cfg.sample_length),
            self.train_cfg(name, run_dir),
            codes_mode="cache",
        )
        _publish(model, product)
        return StageResult(name, RESUMED if resumed else RAN, steps=steps, outputs=[str(product)])

    def stage_top(self) -> StageResult:
        return self._stage_prior("top")

    def stage_middle(self) -> StageResult:
        return self._stage_prior("middle")

    def stage_bottom(self) -> StageResult:
        return self._stage_prior("bottom")

    def stage_students(self) -> StageResult:
        from distill.train import (
            TEACHER_LINK_FILE,
            DistillConfig,
            distill,
            model_fingerprint,
        )
        from teacher.data import DataConfig
        from teacher.train import level_index

        statuses, outputs, total = [], [], 0
        for fam in FAMILIES:
            for name in UPSAMPLERS:
                run = f"{fam}/{name}"
                product = self.students_dir / fam / name
                run_dir = self.runs_dir / "students" / f"{fam}-{name}"
                steps = self.steps[run]
                total += steps
                outputs.append(str(product))
                fp = model_fingerprint(self.teacher_dir / name)

                def linked(folder: Path, fp: str = fp) -> bool:
                    link = folder / TEACHER_LINK_FILE
                    return link.is_file() and read_json(link).get("fingerprint") == fp

                if _is_model(product):
                    if linked(product):
                        statuses.append(SKIPPED)
                        continue
                    log.warning("%s distils another teacher: distilling it again", product)
                    shutil.rmtree(product)
                if (run_dir / "student").is_dir() and not linked(run_dir / "student"):
                    shutil.rmtree(run_dir)
                resumed = latest_checkpoint(run_dir / "checkpoints") is not None
                run_cfg = self.train_cfg(run, run_dir)
                warm = max(1, int(self.recipe.ce_warmup_fraction * steps))
                dcfg = DistillConfig(
                    level=level_index(name, 3),
                    family=fam,
                    preset=self.recipe.student,
                    weights={"ce": 1.0},
                    ce_warmup_steps=warm,
                    n_ctx=self.recipe.distill_n_ctx,
                    ema_decay=0.99,
                )
                data_cfg = DataConfig(
                    root=str(self.data_dir),
                    sample_rate=self.recipe.sample_rate,
                    aug_blend=False,
                    cache_dir=str(self.cache_dir),
                    seed=self.cfg.seed,
                )
                model = distill(self.teacher_dir, data_cfg, dcfg, run_cfg)
                _publish(model, product)
                statuses.append(RESUMED if resumed else RAN)
        if all(s == SKIPPED for s in statuses):
            status = SKIPPED
        elif all(s == RAN for s in statuses):
            status = RAN
        else:
            status = RESUMED
        return StageResult(
            "students",
            status,
            steps=total,
            outputs=outputs,
            note="categorical + gaussian, middle + bottom",
        )

    def song_names(self) -> dict[str, Any]:
        """Artist, genre and lyrics of the first training file with metadata (none: unknown)."""
        from teacher.data import scan_audio

        scan = scan_audio(
            dataclasses.replace(self.data_cfg(self.recipe.sample_rate // 4), cache="none")
        )
        for f in scan.files:
            if f.has_metadata:
                m = f.meta
                return {"artist": m.artist, "genre": list(m.genre) or None, "lyrics": m.lyrics}
        return {"artist": None, "genre": None, "lyrics": ""}

    def stage_samples(self) -> StageResult:
        from distill.pipeline import FastJukebox
        from teacher.io import load_tensors

        folders = {m: self.out / "samples" / m for m in SAMPLE_MODES}
        done = {m for m, f in folders.items() if (f / "labels.json").is_file()}
        outputs = [str(f) for f in folders.values()]
        if len(done) == len(SAMPLE_MODES):
            return StageResult("samples", SKIPPED, outputs=outputs)
        fj = FastJukebox.from_pretrained(
            self.teacher_dir, students=self.students_dir / SAMPLE_FAMILY
        )
        top = fj.levels - 1
        names = self.song_names()
        secs = self.recipe.sample_seconds
        seed = self.cfg.seed
        notes = []
        # one song: the exact mode samples every level; the other modes upsample ITS top-level
        # codes, so the four differ only in how the middle and bottom levels were drawn
        if "exact" in done:
            top_codes = load_tensors(folders["exact"] / "codes.safetensors")[f"level{top}"]
        else:
            res = fj.generate(
                **names, duration_seconds=secs, mode="exact", seed=seed, progress=self.progress
            )
            res.save(folders["exact"])
            top_codes = res.codes[top]
            notes.append(_mode_note("exact", res))
        for mode in SAMPLE_MODES[1:]:
            if mode in done:
                continue
            res = fj.upsample(
                top_codes,
                **names,
                mode=mode,
                level_modes=HYBRID if mode == "hybrid" else None,
                seed=seed,
                progress=self.progress,
            )
            res.save(folders[mode])
            notes.append(_mode_note(mode, res))
        return StageResult(
            "samples",
            RESUMED if done else RAN,
            outputs=outputs,
            note=f"{secs:g} s song; upsampling " + ", ".join(notes) if notes else f"{secs:g} s",
        )

    def stage_report(self) -> StageResult:
        folder = self.out / "report"
        if (folder / "metrics.json").is_file():
            return StageResult("report", SKIPPED, outputs=[str(folder)])
        if self.recipe.report_clips < 2:
            return StageResult("report", SKIPPED, note="this preset writes no report")
        try:
            from eval.evaluate import evaluate
            from eval.report import write_report
        except ImportError as err:
            log.info("no report: eval.report is not available (%s)", err)
            return StageResult("report", SKIPPED, note="eval.report not available")
        if self.cfg.data is not None:
            log.info("the report evaluates on --data %s itself (no held-out audio)", self.cfg.data)
        result = evaluate(
            self.teacher_dir,
            students=self.students_dir / SAMPLE_FAMILY,
            data_dir=self.heldout_dir,
            n_clips=self.recipe.report_clips,
            seconds=self.recipe.report_seconds,
            seed=self.cfg.seed,
            modes=self.recipe.report_modes,
            hybrid=HYBRID,
        )
        write_report(result, folder)
        return StageResult("report", RAN, outputs=[str(folder)], note=str(folder / "report.html"))


def _mode_note(mode: str, res: Any) -> str:
    """``mode 3.4 s``: the seconds a result's upsampling levels spent in their samplers."""
    stats = getattr(res, "stats", {}) or {}
    secs = sum(st.seconds for name, st in stats.items() if name != "top")
    return f"{mode} {secs:.1f} s"


# ---------------------------------------------------------------------------------------------
# command line (``fastjukebox demo`` and ``python -m eval.demo``)


def add_demo_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``fastjukebox demo``."""
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help="the demo folder (re-running on it resumes)")
    p.add_argument(
        "--minutes",
        type=float,
        default=d.minutes,
        help="wall-clock budget the training steps are sized for (2-core CPU measurements)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="your own audio folder (+ metadata.jsonl/.csv) instead of the built-in synth songs",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default=d.preset,
        help="demo: small models (~15 min on 2 CPU cores); smoke: tiny models (seconds)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: all cores; 1 on a machine other jobs share)",
    )
    p.add_argument("--no_progress", action="store_true", help="no stage headers or bars")


def demo_config_from_args(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        out=args.out,
        minutes=args.minutes,
        data=args.data,
        seed=args.seed,
        preset=args.preset,
        threads=args.threads,
    ).validate()


def run_from_args(args: argparse.Namespace) -> DemoResult:
    """Run the demo from parsed :func:`add_demo_args` flags."""
    return run_demo(demo_config_from_args(args), progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    from fastjukebox.cli import setup_logging
    from teacher.data import DataError

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__.splitlines()[0])
    add_demo_args(p)
    try:
        res = run_from_args(p.parse_args(argv))
    except (ConfigError, DataError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    log.info("demo finished in %.1f min: samples in %s", res.seconds / 60, res.out / "samples")
    return 0


__all__ = [
    "DEMO",
    "PRESETS",
    "RECIPES",
    "RUNS",
    "SAMPLE_MODES",
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


if __name__ == "__main__":
    import sys

    sys.exit(main())
