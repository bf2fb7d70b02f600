"""Running the demo: :func:`run_demo` checks the ``OUT`` folder, plans the steps, runs every
stage of :class:`~eval.demo.stages.Demo` in order, records each in ``OUT/demo.json`` and
returns a :class:`DemoResult`; :func:`summary_table` is its closing table of stage times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.demo.recipe import (
    DEMO_FILE,
    PRETRAINED_STAGES,
    RECIPES,
    SAMPLE_MODES,
    STAGES,
    DemoConfig,
    Recipe,
    fixed_seconds,
    plan_steps,
    planned_seconds,
)
from eval.demo.stages import Demo, StageResult, recipe_key
from teacher.config import ConfigError
from teacher.io import atomic_write_json, read_json

log = logging.getLogger(__name__)


class DemoError(ConfigError):
    """The demo cannot run as asked (e.g. ``OUT`` holds another recipe's demo)."""


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


def run_demo(
    cfg: DemoConfig, progress: bool = True, pretrained_dir: str | Path | None = None
) -> DemoResult:
    """Run (or resume) the demo of ``cfg`` into ``cfg.out``; see the module docs.

    By default it samples and evaluates the shipped models (``pretrained_dir``, default
    :data:`eval.demo.pretrained.PRETRAINED_DIR`); ``cfg.from_scratch`` trains the recipe in the
    budget first (step counts from step times measured on this machine).

    ``progress``: a stage header before each stage and a final summary table of stage times on
    the console (rich); the trainers and the samplers draw their own bars (the trainers always
    do on the main process). Everything is also logged and recorded in ``OUT/demo.json``.
    """
    import torch

    from teacher.device import idle_cpu_threads

    cfg = cfg.validate()
    threads = cfg.threads or idle_cpu_threads()
    if cfg.threads is None:
        log.info("demo: %d torch CPU thread(s) (the cores other jobs leave idle)", threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_demo(cfg, progress, pretrained_dir)
    finally:
        torch.set_num_threads(before)


def plan(demo: Demo, record: dict[str, Any]) -> tuple[dict[str, int], dict[str, float]]:
    """The ``--from_scratch`` plan: steps per run and estimated seconds per stage, from step
    times measured on this machine (kept in ``demo.json``: a resumed demo with the same budget
    keeps its plan, so its runs resume with the steps they started with)."""
    cfg, recipe = demo.cfg, demo.recipe
    saved = record.get("plan", {})
    if saved.get("minutes") == cfg.minutes and set(saved.get("steps", {})) == set(
        plan_steps(1.0, recipe)
    ):
        return dict(saved["steps"]), dict(saved["planned_seconds"])
    t0 = time.perf_counter()
    if recipe.fixed_steps is None:
        if demo.console is not None:
            demo.console.print("measuring the step time of every run on this machine ...")
        sec = demo.calibrate()
    else:
        sec = dict(recipe.sec_per_step)
    spent = time.perf_counter() - t0
    speed = sec["vqvae"] / recipe.sec_per_step["vqvae"] if recipe.fixed_steps is None else 1.0
    steps = plan_steps(cfg.minutes, recipe, sec, speed=speed, spent=spent)
    est = planned_seconds(steps, recipe, sec, speed=speed)
    record["plan"] = {
        "minutes": cfg.minutes,
        "sec_per_step": sec,
        "speed_vs_reference": speed,
        "calibration_seconds": spent,
        "steps": steps,
        "planned_seconds": est,
    }
    log.info(
        "plan: step times measured in %.1f s (%.2fx the reference machine): %s",
        spent,
        speed,
        ", ".join(f"{r} {n} steps ({sec[r]:.2f} s)" for r, n in steps.items()),
    )
    return steps, est


def _pretrained_estimate(recipe: Recipe) -> dict[str, float]:
    fixed = fixed_seconds(recipe)
    return {"models": 5.0, "heldout": 5.0, "samples": fixed["samples"], "report": fixed["report"]}


def _run_demo(cfg: DemoConfig, progress: bool, pretrained_dir: str | Path | None) -> DemoResult:
    recipe = RECIPES[cfg.preset]
    out = Path(cfg.out)
    t_start = time.perf_counter()
    _check_out_folder(out, cfg)
    demo = Demo(cfg, recipe, out, progress, Path(pretrained_dir) if pretrained_dir else None)
    console = demo.console
    if cfg.from_scratch:
        demo.preflight()  # every data error before anything is written
    else:
        from eval.demo.pretrained import load_pretrained

        load_pretrained(demo.pretrained_dir)  # a damaged shipped model: one error, nothing written
    record = demo.load_record()
    if cfg.from_scratch:
        steps, est = plan(demo, record)
        demo.steps = steps
        stages = STAGES
        what = f"the {cfg.preset} recipe from scratch in {cfg.minutes:g} min"
    else:
        steps, est, stages = {}, _pretrained_estimate(recipe), PRETRAINED_STAGES
        what = f"the shipped models ({demo.pretrained_dir})"
    if console is not None:
        console.rule(f"[bold]fastjukebox demo[/]: {what}, into {out}")
        console.print(
            f"planned ~{sum(est.values()) / 60:.1f} min"
            + ("; steps: " + ", ".join(f"{r} {n}" for r, n in steps.items()) if steps else "")
        )
    record["steps"] = steps
    atomic_write_json(out / DEMO_FILE, record)
    results: list[StageResult] = []
    for i, stage in enumerate(stages):
        if console is not None:
            console.rule(
                f"[bold cyan]stage {i + 1}/{len(stages)}: {stage}[/]  (~{est[stage]:.0f} s)"
            )
        log.info("demo stage %d/%d: %s", i + 1, len(stages), stage)
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
    want = recipe_key(cfg)
    diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if diff:
        what = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in diff.items())
        raise DemoError(
            f"{out} holds a demo made with {what}: use another --out, or delete {out} to start over"
        )
