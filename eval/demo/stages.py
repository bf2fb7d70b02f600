"""The demo's stages over one ``OUT`` folder: :class:`Demo` runs each through the same code
paths as the command line, skips one whose product is complete, resumes one from its
checkpoint, and says how it went in a :class:`StageResult`. :func:`eval.demo.runner.run_demo`
calls them in order: by default ``models`` (the shipped teacher and students, checked, copied
into ``OUT``), ``heldout``, ``samples``, ``report``; with ``--from_scratch`` ``data``,
``vqvae``, the three priors, ``students``, ``samples``, ``report``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.demo.pretrained import PRETRAINED_DIR
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


#: written last into a folder of linked ``--data`` files (marks it complete)
SUBSET_FILE = "subset.json"


def link_subset(root: Path, out: Path, rels: list[str], scan: Any) -> None:
    """Make ``out`` a folder of symlinks to ``root/rel`` for each of ``rels`` (same relative
    paths) plus the metadata rows of those files (the same format as ``root``'s metadata),
    atomically."""
    from teacher.data.dataset import METADATA_FILES

    root = root.resolve()
    keep = set(rels)
    with atomic_dir(out) as tmp:
        for rel in rels:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(root / rel, tmp / rel)
        meta = Path(scan.metadata_path) if scan.metadata_path else None
        if meta is not None and meta.is_file():

            def wanted(row: dict[str, Any]) -> bool:
                file = str(row.get("file", ""))
                rel = os.path.relpath(file, root) if os.path.isabs(file) else file
                return os.path.normpath(rel).replace(os.sep, "/") in keep

            if meta.suffix.lower() == ".csv":
                with open(meta, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    rows = [r for r in reader if wanted(r)]
                    fields = reader.fieldnames or ["file"]
                with open(tmp / METADATA_FILES[1], "w", newline="", encoding="utf-8") as f:
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                lines = []
                for line in meta.read_text(encoding="utf-8").splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # the trainers' scan reports bad rows of the original
                    if isinstance(row, dict) and wanted(row):
                        lines.append(line)
                (tmp / METADATA_FILES[0]).write_text("".join(x + "\n" for x in lines))
        atomic_write_json(tmp / SUBSET_FILE, {"root": str(root), "files": rels})


def recipe_key(cfg: DemoConfig) -> dict[str, Any]:
    """What must match for a demo folder to be resumed (the budget may change)."""
    data = str(Path(cfg.data).resolve()) if cfg.data else None
    return {"preset": cfg.preset, "seed": cfg.seed, "data": data, "from_scratch": cfg.from_scratch}


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _publish(src: Path, dst: Path) -> None:
    """Copy the model folder ``src`` to ``dst`` atomically (``dst`` appears complete or not at
    all; a re-run that finds it skips the stage)."""
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


class Demo:
    """The stages of one demo run over a folder (kept together: they share paths and plan)."""

    def __init__(
        self,
        cfg: DemoConfig,
        recipe: Recipe,
        out: Path,
        progress: bool,
        pretrained_dir: Path | None = None,
    ) -> None:
        self.cfg, self.recipe, self.out, self.progress = cfg, recipe, out, progress
        self.steps: dict[str, int] = {}  # the plan (runner.plan), set before training stages
        # training data: the synth songs, or the part of --data the budget can use (symlinks)
        self.data_dir = out / "data"
        # held out: more synth songs, or the --data files left out of training (all of it
        # when nothing is left: the report then evaluates on training audio, logged)
        self.heldout_dir = out / "heldout"
        self.scan: Any = None  # preflight's scan of --data
        self.pretrained_dir = pretrained_dir or PRETRAINED_DIR
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
        from teacher.data.synth import ARTISTS, GENRES, SynthConfig

        r = self.recipe
        train = SynthConfig(
            n_songs=r.n_songs,
            seconds=r.song_seconds,
            sample_rate=r.sample_rate,
            seed=self.cfg.seed,
            artists=r.artists or tuple(ARTISTS),
            genres=r.genres or tuple(GENRES),
        )
        heldout = dataclasses.replace(
            train, n_songs=r.heldout_songs, seed=self.cfg.seed + HELDOUT_SEED_OFFSET
        )
        return train, heldout

    def top_window(self) -> int:
        """Samples of one top-prior window: the shortest file every stage can use."""
        vq_cfg = self.vq_cfg()
        return self.prior_cfg("top", vq_cfg).sample_length

    def calibrate(self) -> dict[str, float]:
        """Seconds per optimiser step of every run on this machine (:mod:`eval.demo.calibrate`),
        the priors' label bins sized for the data's artists and genres."""
        from distill.config import DistillConfig, student_config_from_preset
        from eval.demo.calibrate import measure_step_seconds
        from teacher.levels import level_index

        vq_cfg = self.vq_cfg()
        if self.scan is not None:
            n_artists, n_genres = self.scan.vocab.n_artists, self.scan.vocab.n_genres
        else:
            train, _ = self.synth_cfgs()
            n_artists, n_genres = len(train.artists) + 1, len(train.genres) + 1
        priors = {}
        for name in ("top", "middle", "bottom"):
            cfg = self.prior_cfg(name, vq_cfg)
            labels = dataclasses.replace(cfg.labels, artist_bins=n_artists, genre_bins=n_genres)
            priors[name] = dataclasses.replace(cfg, labels=labels).validate()

        def student(fam: str, name: str, prior_cfg: Any) -> Any:
            dcfg = DistillConfig(level=level_index(name, 3), family=fam, preset=self.recipe.student)
            return student_config_from_preset(dcfg, prior_cfg, vq_cfg)

        song = int(self.recipe.song_seconds * self.recipe.sample_rate)
        return measure_step_seconds(self.recipe, vq_cfg, priors, student, song)

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
        data_cfg = dataclasses.replace(self.data_cfg(window), root=str(root), cache="none")
        try:
            scan = self.scan = scan_audio(data_cfg)
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

    def stage_models(self) -> StageResult:
        """The shipped teacher and students, checked to load, copied into ``OUT`` (the demo
        folder is then a teacher folder like a ``--from_scratch`` one)."""
        from eval.demo.pretrained import STUDENT_PARTS, TEACHER_PARTS, load_pretrained

        shipped = load_pretrained(self.pretrained_dir)
        outputs = [str(self.teacher_dir), str(self.students_dir)]
        pairs = [(self.teacher_dir / p, shipped.teacher_dir / p) for p in TEACHER_PARTS]
        pairs += [(self.students_dir / p, shipped.students_dir / p) for p in STUDENT_PARTS]
        if all(_is_model(a) and model_fingerprint(a) == model_fingerprint(b) for a, b in pairs):
            return StageResult("models", SKIPPED, outputs=outputs)
        for stale in (self.out / "samples", self.out / "report"):  # made by other models
            shutil.rmtree(stale, ignore_errors=True)
        for src, dst in (
            (shipped.teacher_dir, self.teacher_dir),
            (shipped.students_dir, self.students_dir),
        ):
            _publish(src, dst)
        return StageResult("models", RAN, outputs=outputs, note=f"shipped: {shipped.root}")

    def stage_heldout(self) -> StageResult:
        """Held-out synth songs of the shipped models' recipe (another seed): the report's
        clips and the samples' artist, genre and lyrics."""
        from eval.demo.pretrained import load_pretrained
        from teacher.config import load_config
        from teacher.data.synth import SynthConfig, write_synth_dataset

        synth = load_pretrained(self.pretrained_dir).synth
        want = dataclasses.replace(
            synth, n_songs=self.recipe.heldout_songs, seed=self.cfg.seed + HELDOUT_SEED_OFFSET
        )
        path = self.heldout_dir / "synth_config.json"
        if path.is_file() and load_config(SynthConfig, str(path)) == want:
            return StageResult("heldout", SKIPPED, outputs=[str(self.heldout_dir)])
        write_synth_dataset(self.heldout_dir, want, progress=self.progress)
        note = f"{want.n_songs} songs x {want.seconds:g} s at {want.sample_rate} Hz"
        return StageResult("heldout", RAN, outputs=[str(self.heldout_dir)], note=note)

    def stage_data(self) -> StageResult:
        if self.cfg.data is not None:
            return self._stage_user_data()
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

    def audio_needed(self) -> float:
        """Seconds of audio the planned runs can read: the most any one run draws in windows
        (``steps · batch · window``). Encoding more into the code cache is wasted time."""
        vq_cfg = self.vq_cfg()
        windows = {"vqvae": vq_cfg.sample_length}
        for name in ("top", "middle", "bottom"):
            windows[name] = self.prior_cfg(name, vq_cfg).sample_length
        for name in UPSAMPLERS:
            n_ctx = self.recipe.distill_n_ctx or self.prior_cfg(name, vq_cfg).n_ctx
            for fam in FAMILIES:
                windows[f"{fam}/{name}"] = n_ctx * self.prior_cfg(name, vq_cfg).hop_length
        samples = max(self.steps[run] * self.recipe.batch * w for run, w in windows.items())
        return samples / self.recipe.sample_rate

    def _stage_user_data(self) -> StageResult:
        """``--data``: link the files the budget can use into ``OUT/data`` (a seeded shuffle,
        until :meth:`audio_needed` seconds), the rest (or, if none is left, everything) into
        ``OUT/heldout``, each with its metadata rows."""
        if (self.data_dir / SUBSET_FILE).is_file() and (self.heldout_dir / SUBSET_FILE).is_file():
            return StageResult("data", SKIPPED, outputs=[str(self.data_dir), str(self.heldout_dir)])
        scan, sr = self.scan, self.recipe.sample_rate
        files = sorted(scan.files, key=lambda f: f.rel)
        order = np.random.default_rng(self.cfg.seed).permutation(len(files))
        need, have, train = self.audio_needed(), 0.0, []
        for i in order:
            if have >= need and train:
                break
            train.append(files[i])
            have += files[i].length / sr
        rest = [f for f in files if f not in train][: max(2, self.recipe.report_clips)]
        link_subset(Path(self.cfg.data), self.data_dir, [f.rel for f in train], scan)
        link_subset(Path(self.cfg.data), self.heldout_dir, [f.rel for f in rest or train], scan)
        total = scan.total_length / sr
        note = (
            f"{len(train)} of {len(files)} files ({have / 60:.1f} of {total / 60:.1f} min: what "
            f"the budget reads, {need / 60:.1f} min); {len(rest)} held out"
        )
        if not rest:
            log.info("every file of --data trains: the report evaluates on training audio")
        log.info("--data %s: %s", self.cfg.data, note)
        return StageResult(
            "data", RAN, outputs=[str(self.data_dir), str(self.heldout_dir)], note=note
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
        """Artist, genre and lyrics of the first held-out file with metadata (none: unknown)."""
        from teacher.data.dataset import scan_audio

        data_cfg = self.data_cfg(self.recipe.sample_rate // 4)
        scan = scan_audio(dataclasses.replace(data_cfg, root=str(self.heldout_dir), cache="none"))
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
