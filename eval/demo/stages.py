"""The demo's stages over one ``OUT`` folder: :class:`Demo` runs each (data, vqvae, the three
priors, the students, samples, report) through the same code paths as the command line, skips
one whose product is complete, resumes one from its checkpoint, and says how it went in a
:class:`StageResult`. :func:`eval.demo.runner.run_demo` calls them in order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.demo.recipe import (
    DEMO_FILE,
    FAMILIES,
    HELDOUT_SEED_OFFSET,
    HYBRID,
    SAMPLE_FAMILY,
    SAMPLE_MODES,
    UPSAMPLERS,
    DemoConfig,
    Recipe,
    plan_steps,
)
from teacher.config import ConfigError, config_to_dict
from teacher.io import (
    atomic_dir,
    atomic_write_json,
    latest_checkpoint,
    model_fingerprint,
    read_json,
)
from teacher.presets import VQVAE_PRESETS

log = logging.getLogger(__name__)

#: a stage's status in :class:`StageResult`
RAN, RESUMED, SKIPPED = "ran", "resumed", "skipped"


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


def recipe_key(cfg: DemoConfig) -> dict[str, Any]:
    """What must match for a demo folder to be resumed (the budget may change)."""
    data = str(Path(cfg.data).resolve()) if cfg.data else None
    return {"preset": cfg.preset, "seed": cfg.seed, "data": data}


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _publish(src: Path, dst: Path) -> None:
    """Copy the model folder ``src`` to ``dst`` atomically (``dst`` appears complete or not at
    all; a re-run that finds it skips the stage)."""
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


class Demo:
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
            recipe=recipe_key(self.cfg),
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
        from teacher.levels import level_index
        from teacher.presets import prior_preset

        level = level_index(name, vq_cfg.levels)
        r = self.recipe
        n_ctx = r.upsampler_n_ctx if name != "top" else None
        n_tokens = r.n_tokens if name == "top" else None
        return prior_preset(r.prior, level, vq_cfg, n_ctx, n_tokens)

    def data_cfg(self, sample_length: int, **kw: Any) -> Any:
        from teacher.data.dataset import DataConfig

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
        from teacher.data.synth import SynthConfig

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
        from teacher.data.dataset import DataError, scan_audio

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
        from teacher.data.synth import SynthConfig, write_synth_dataset

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
        from teacher.train.prior import VQVAE_LINK_FILE, train_prior

        vq_dir = self.teacher_dir / "vqvae"
        product = self.teacher_dir / name
        run_dir = self.runs_dir / name
        steps = self.steps[name]
        fp = model_fingerprint(vq_dir)

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
        from distill.config import DistillConfig
        from distill.teacher import TEACHER_LINK_FILE
        from distill.train import distill
        from teacher.data.dataset import DataConfig
        from teacher.levels import level_index

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
        from teacher.data.dataset import scan_audio

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
