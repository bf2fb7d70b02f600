"""Distillation entry point: ``accelerate launch -m distill.train --teacher DIR --level middle ...``.

Trains a parallel student (:mod:`student`) to replace one upsampler of a trained teacher
(DESIGN §5), through the one training loop (:func:`teacher.train.loop.run_training`) with an EMA
of the weights. One optimiser step (the student samples a window, the frozen teacher scores
the student's own tokens in one pass, the named loss terms) and what is logged are described in
:mod:`distill.step`.

Output folder::

    OUTPUT_DIR/
      student/              exported EMA student: config.json + model.safetensors, teacher.json
                            (teacher folder, prior and VQ-VAE fingerprints, level, temperature)
                            and the teacher's vocab.json; refreshed at every checkpoint
      checkpoints/checkpoint-STEP/
                            accelerate state (live student, optimiser, scheduler, RNG) +
                            student/ (the EMA weights: resuming restores the EMA from it) +
                            state.json (written last; per-rank weight digests)
      validation/step-STEP/ decoded EMA-student samples and the decoded true codes (WAV), every
                            ``validation_steps``
      metrics.jsonl, train_args.json

Fine-tuning (``--init_from DIR``): the run starts from the weights of a distilled student folder
(a run's output folder, its ``student/``, or a shipped one) with its architecture, a fresh
optimiser and the run's loss weights, e.g. to tune a student as a speculative draft model
(``--tv_weight``, DESIGN §10).

Teacher folder layout (:mod:`distill.teacher`): ``TEACHER/vqvae``, ``TEACHER/top``,
``TEACHER/middle``, ``TEACHER/bottom``, each a model folder (prior folders also hold
``vocab.json`` and ``vqvae.json``). Only ``vqvae`` and the distilled level are read.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from distill.config import (
    CE_TARGETS,
    DEFAULT_WEIGHTS,
    EXPORT_DIR,
    DistillConfig,
    loss_config_for,
    student_config_from_preset,
    student_folder,
)
from distill.step import distill_step, run_validation, step_generator, validation_batch
from distill.teacher import (
    TEACHER_LINK_FILE,
    VOCAB_FILE,
    VQVAE_FOLDER,
    load_teacher,
    teacher_paths,
)
from student.config import (
    FAMILIES,
    GAUSSIAN_OBJECTIVES,
    LOSS_NAMES,
    STUDENT_PRESETS,
    StudentConfig,
    load_student_config,
)
from teacher.config import ConfigError, config_to_dict, load_config
from teacher.console import run_main
from teacher.device import DTYPES
from teacher.io import (
    atomic_write_json,
    load_model_weights,
    model_fingerprint,
    read_json,
    read_model_config,
    resolve_resume,
)
from teacher.levels import level_index, level_name
from teacher.train.cli import (
    add_data_args,
    add_train_args,
    check_init_flags,
    data_config_from_args,
    train_config_from_args,
)
from teacher.train.loop import (
    Job,
    LoopPosition,
    StepOutput,
    TrainConfig,
    make_accelerator,
    run_training,
)
from teacher.vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the trainer


def resolve_student_config(
    student_cfg: StudentConfig | None,
    dcfg: DistillConfig,
    prior_cfg: Any,
    vq_cfg: VQVAEConfig,
) -> StudentConfig:
    """The student config a distillation runs with: ``student_cfg`` (a resumed run's or the
    caller's) or the preset's for the teacher, with the run's loss weights; checked against the
    teacher (geometry, conditioning, the Gaussian code space, the window). One
    :class:`ConfigError` for the first mismatch."""
    if student_cfg is None:
        student_cfg = student_config_from_preset(dcfg, prior_cfg, vq_cfg)
    if student_cfg.family != dcfg.family:
        raise ConfigError(f"the student config is {student_cfg.family}, not {dcfg.family}")
    student_cfg = dataclasses.replace(
        student_cfg, loss=loss_config_for(dcfg, student_cfg.loss)
    ).validate()
    student_cfg.check_teacher(prior_cfg)
    if student_cfg.family == "gaussian" and student_cfg.gaussian.code_space == "vqvae":
        if student_cfg.gaussian.code_dim != vq_cfg.emb_width:
            raise ConfigError(
                f"gaussian code_dim {student_cfg.gaussian.code_dim} != VQ-VAE emb_width "
                f"{vq_cfg.emb_width}"
            )
    _check_window(student_cfg, prior_cfg, dcfg.n_ctx or prior_cfg.n_ctx)
    return student_cfg


def _check_window(cfg: StudentConfig, prior_cfg: Any, n_ctx: int) -> None:
    ratio = cfg.upsample_ratio
    if n_ctx > prior_cfg.n_ctx:
        raise ConfigError(
            f"--n_ctx {n_ctx} exceeds the teacher's window n_ctx={prior_cfg.n_ctx} (it scores "
            "a window in one pass)"
        )
    if n_ctx % ratio:
        raise ConfigError(f"--n_ctx {n_ctx} must be a multiple of the upsampling ratio {ratio}")
    loss, window = cfg.loss, n_ctx * cfg.hop_length
    if loss.mrstft and max(loss.stft_fft_sizes) > window:
        raise ConfigError(
            f"the MR-STFT resolutions (n_fft up to {max(loss.stft_fft_sizes)}) are longer than "
            f"the window of {window} samples: raise --n_ctx or use a smaller --preset"
        )
    if loss.power and loss.power_n_fft > window:
        raise ConfigError(f"power_n_fft {loss.power_n_fft} is longer than the window {window}")


def init_student_folder(folder: str | Path) -> Path:
    """The student folder ``--init_from`` names (:func:`~distill.config.student_folder`:
    ``folder`` itself or its run's ``student/`` export), or ``folder`` when it holds neither
    (its errors then name it)."""
    return student_folder(folder) or Path(folder)


def read_init_student(
    folder: str | Path, dcfg: DistillConfig, prior_dir: Path | None = None
) -> tuple[Path, StudentConfig]:
    """The student folder a fine-tuning run starts from (``--init_from``,
    :func:`init_student_folder`) and its config, checked before any work: a readable student
    config (else one :class:`~teacher.io.ModelFolderError` naming the folder), the family and
    the level of the run. A student distilled from other teacher weights than ``prior_dir``'s (a
    fine-tuned teacher) is allowed, with a warning (None: not compared, no weights read)."""
    folder = init_student_folder(folder)
    cfg = read_model_config(folder, StudentConfig, "student")
    if cfg.family != dcfg.family:
        raise ConfigError(
            f"--init_from {folder} is a {cfg.family} student; the run distils a {dcfg.family} "
            f"one (--student {cfg.family})"
        )
    if cfg.level != dcfg.level:
        raise ConfigError(
            f"--init_from {folder} replaces level {cfg.level}, the run distils level {dcfg.level}"
        )
    link = folder / TEACHER_LINK_FILE
    if (
        prior_dir is not None
        and link.is_file()
        and read_json(link).get("fingerprint") != model_fingerprint(prior_dir)
    ):
        log.warning(
            "--init_from %s was distilled from other weights than %s: fine-tuning it on them",
            folder,
            prior_dir,
        )
    return folder, cfg


def distill(
    teacher_dir: str | Path,
    data_cfg: Any,
    distill_cfg: DistillConfig,
    run_cfg: TrainConfig,
    student_cfg: StudentConfig | None = None,
    init_from: str | Path | None = None,
) -> Path:
    """Distil the level-``distill_cfg.level`` upsampler of ``teacher_dir`` into a parallel
    student; returns the exported ``OUTPUT_DIR/student`` folder (EMA weights).

    ``student_cfg`` (default: :func:`student_config_from_preset`) must match the teacher
    (:meth:`StudentConfig.check_teacher`); its loss settings are replaced by ``distill_cfg``'s.
    The data are windows of the teacher VQ-VAE's code cache over ``data_cfg.root`` (built once
    by the main process; :func:`teacher.data.codes.build_code_cache`), ``n_ctx`` codes of the level
    with the upper codes of the same span and the label vectors. A resumed run (``run_cfg.
    resume_from_checkpoint``) takes the student config from its checkpoint and refuses another
    teacher. ``init_from`` (fine-tuning; not with ``student_cfg``): start from the weights and
    the architecture of this student folder or distill output folder
    (:func:`read_init_student`), with a fresh optimiser and EMA; a resumed run takes precedence.
    See the module docstring for the step, the metrics and the output folder.
    """
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    from distill.losses import warmup_weight
    from student import CategoricalIAF, GaussianIAF
    from teacher.data.codes import CodeDataset, build_code_cache
    from teacher.data.labels import LabelConfig, Vocab
    from teacher.prior.config import PriorConfig
    from teacher.train.prior import window_data

    # -- everything that can be wrong is checked before any work -----------------------------
    run_cfg.validate()
    dcfg = distill_cfg.validate()
    data_cfg.validate()
    if run_cfg.gradient_checkpointing:
        from distill.dry_run import GRADIENT_CHECKPOINTING_NO_EFFECT

        raise ConfigError(GRADIENT_CHECKPOINTING_NO_EFFECT)
    level = dcfg.level
    prior_dir, vq_dir = teacher_paths(teacher_dir, level)
    prior_cfg = read_model_config(prior_dir, PriorConfig, "prior")
    vq_cfg = read_model_config(vq_dir, VQVAEConfig, "VQ-VAE")
    out_dir = Path(run_cfg.output_dir)
    resume = resolve_resume(run_cfg.resume_from_checkpoint, out_dir / "checkpoints")
    if init_from is not None and student_cfg is not None:
        raise ConfigError("give a student config or a folder to start from (init_from), not both")
    init = None
    if init_from is not None and resume is None:
        init, student_cfg = read_init_student(init_from, dcfg, prior_dir)
    if resume is not None:
        saved = resume / EXPORT_DIR
        student_cfg = load_student_config(str(saved / "config.json"))
        link = saved / TEACHER_LINK_FILE
        if link.is_file() and read_json(link)["fingerprint"] != model_fingerprint(prior_dir):
            raise ConfigError(
                f"{resume} distils another teacher ({read_json(link)['prior']}); "
                f"{prior_dir} has different weights"
            )
    student_cfg = resolve_student_config(student_cfg, dcfg, prior_cfg, vq_cfg)
    n_ctx = dcfg.n_ctx or prior_cfg.n_ctx
    window = n_ctx * prior_cfg.hop_length
    version = (
        Vocab.load(str(prior_dir)).version
        if (prior_dir / VOCAB_FILE).is_file()
        else data_cfg.labels.lyric_version
    )
    label_cfg = LabelConfig(
        max_genres=prior_cfg.labels.max_genres if prior_cfg.labels is not None else 1,
        n_tokens=0,
        lyric_version=version,
    ).validate()
    data_cfg = window_data(
        data_cfg, vq_cfg.sample_rate, level, n_ctx, prior_cfg.hop_length, label_cfg
    )

    # with kl_intermediate at 0 the earlier stages get no gradient (no gradient crosses the
    # argmax between stages): only then must DDP look for parameters without one
    unused = distill_cfg.weights.get("kl_intermediate", 0.0) == 0.0
    ddp = DistributedDataParallelKwargs(find_unused_parameters=unused)
    accelerator = make_accelerator(run_cfg, [ddp])
    main = accelerator.is_main_process
    device = accelerator.device
    set_seed(run_cfg.seed, device_specific=False)

    teacher = load_teacher(teacher_dir, level, device=device, dtype=dcfg.teacher_dtype)
    with accelerator.main_process_first():
        cache = build_code_cache(vq_dir, data_cfg, dcfg.code_cache_dir, progress=main)
    vocab = teacher.vocab or cache.vocab
    if teacher.vocab is None and prior_cfg.labels is not None:  # e.g. converted without --vocab
        lab = prior_cfg.labels
        where = f"the data's vocabulary (used as {prior_dir} has no {VOCAB_FILE})"
        vocab.check_rows(lab.artist_bins, lab.genre_bins, where)
    dataset = CodeDataset(cache, level, n_ctx, label_cfg, seed=data_cfg.seed, vocab=vocab)

    # -- the student and its loss step; the loop is teacher.train.loop --------------------------
    if student_cfg.family == "gaussian":
        codebook = teacher.vqvae.codebook(level)  # the code space of code_space="vqvae"
        model = GaussianIAF.from_teacher(teacher.prior, student_cfg, codebook=codebook)
    else:
        model = CategoricalIAF.from_teacher(teacher.prior, student_cfg)
    if init is not None:  # strict: a damaged folder is one error naming it
        load_model_weights(model, init, f"{student_cfg.family} student")
    n_params = sum(p.numel() for p in model.parameters())
    name = level_name(level, vq_cfg.levels)
    link = {
        "teacher_dir": str(Path(teacher_dir).resolve()),
        "prior": str(prior_dir.resolve()),
        "fingerprint": teacher.fingerprint,
        "vqvae": str(vq_dir.resolve()),
        "vqvae_fingerprint": teacher.vqvae_fingerprint,
        "level": level,
        "level_name": name,
        "teacher_temperature": dcfg.teacher_temperature,
        "n_ctx": n_ctx,
    }
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "distilling the level-%d (%s) upsampler of %s into a %s student: K=%d, %.2fM "
            "parameters; windows of %d codes (%.2f s), %d per epoch from %s",
            level,
            name,
            teacher_dir,
            student_cfg.family,
            student_cfg.n_stages,
            n_params / 1e6,
            n_ctx,
            window / data_cfg.sample_rate,
            len(dataset),
            cache.root,
        )
        atomic_write_json(
            out_dir / "train_args.json",
            {
                "train": config_to_dict(run_cfg),
                "data": config_to_dict(data_cfg),
                "distill": config_to_dict(dcfg),
                "student": config_to_dict(student_cfg),
                "teacher": link,
                "code_cache_dir": str(cache.root),
                "init_from": None
                if init is None
                else {"path": str(init.resolve()), "fingerprint": model_fingerprint(init)},
                "windows_per_epoch": len(dataset),
                "student_parameters": n_params,
            },
        )

    val_batch = validation_batch(dataset, dcfg.num_validation_samples, device)
    weights = dcfg.loss_weights()
    loss_cfg = student_cfg.loss

    def step(model: Any, batch: dict[str, Tensor], pos: LoopPosition) -> StepOutput:
        gen = step_generator(
            device, run_cfg.seed, pos.epoch, pos.epoch_batches, accelerator.process_index
        )
        ce_w = weights["ce"] * warmup_weight(pos.step, dcfg.ce_warmup_steps)
        out = distill_step(
            model,
            teacher,
            batch,
            loss_cfg,
            {**weights, "ce": ce_w},
            gen,
            ce_target=dcfg.ce_target,
            autocast=accelerator.autocast,
        )
        return StepOutput(out.loss, {"ce_weight": ce_w, **out.terms, **out.metrics})

    term_names = [k for k, w in weights.items() if w]

    def describe(r: Mapping[str, float]) -> str:
        terms = " ".join(f"{k} {r[k]:.3f}" for k in term_names if k in r)
        return (
            f"loss {r['loss']:.3f} ({terms}) KL/token {r['kl_per_token']:.3f} "
            f"(T=1 {r['kl_per_token_t1']:.3f}) NLL {r['teacher_nll_bits']:.2f} "
            f"bits acc {r['accuracy']:.2f} H {r['student_entropy']:.2f}"
        )

    def export(student: Any, folder: Path) -> None:
        student.save_pretrained(folder)
        atomic_write_json(folder / TEACHER_LINK_FILE, link)
        if teacher.vocab is not None:
            teacher.vocab.save(str(folder / VOCAB_FILE))

    def validate(step: int, student: Any) -> dict[str, float]:
        if not (dcfg.validation_steps and step % dcfg.validation_steps == 0):
            return {}
        folder = out_dir / "validation" / f"step-{step}"
        return run_validation(student, teacher, val_batch, loss_cfg, folder, run_cfg.seed)

    job = Job(
        name=f"distill {name} ({student_cfg.family}, K={student_cfg.n_stages})",
        project="distill",
        model=model,
        dataset=dataset,
        step=step,
        export=export,
        describe=describe,
        export_name=EXPORT_DIR,
        ema_decay=dcfg.ema_decay,
        after_step=validate,
        tracker_config={"lr": run_cfg.learning_rate, "level": level, **weights},
    )
    return run_training(accelerator, run_cfg, job, resume)


# ---------------------------------------------------------------------------------------------
# command line


def add_distill_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``python -m distill.train`` (shared by ``fastjukebox distill``)."""
    d = DistillConfig()
    p.add_argument(
        "--teacher",
        "--pretrained_teacher_model",
        dest="teacher",
        required=True,
        help="teacher folder: TEACHER/vqvae and TEACHER/middle|bottom model folders "
        "(--pretrained_teacher_model is the diffusers name)",
    )
    p.add_argument("--level", required=True, help="the upsampler to replace: middle or bottom")
    p.add_argument("--student", choices=FAMILIES, default=d.family, help="student family")
    add_data_args(p, stereo_blend=False)
    p.add_argument(
        "--preset",
        choices=sorted(STUDENT_PRESETS),
        default=None,
        help=f"student size preset (stage networks, MR-STFT resolutions; default {d.preset}; "
        "not with --init_from)",
    )
    p.add_argument(
        "--init_from",
        default=None,
        metavar="DIR",
        help="fine-tune this student folder (a run's student/ or a shipped one, e.g. as a "
        "speculative draft model with --tv_weight): its architecture (--preset is refused, "
        "--num_stages must agree), a fresh optimiser, the loss flags as given; "
        "--resume_from_checkpoint takes precedence",
    )
    p.add_argument("--num_stages", type=int, default=None, help="K passes (preset default)")
    p.add_argument("--n_ctx", type=int, default=None, help="codes per window (teacher's n_ctx)")
    for name in LOSS_NAMES:
        p.add_argument(
            f"--{name}_weight", type=float, default=DEFAULT_WEIGHTS[name], help=f"weight of {name}"
        )
    # flags named like their DistillConfig field, whose default they take: (name, type, help)
    for name, kind, text in (
        ("ce_warmup_steps", int, "the ce weight decays linearly to 0 over these steps"),
        ("ce_target", CE_TARGETS, "warm-up targets: the true codes or teacher samples (slow)"),
        ("teacher_temperature", float, "the teacher's sampling temperature (divides its logits)"),
        ("teacher_dtype", tuple(DTYPES), "the frozen teacher's precision (its logits are fp32)"),
        ("tau", float, "straight-through Gumbel-softmax tau"),
        ("gaussian_loss", GAUSSIAN_OBJECTIVES, "Gaussian student's KL: closed form or Monte-Carlo"),
        ("mc_bandwidth", float, "std of the Monte-Carlo mixture around the unit-norm codes"),
        ("ema_decay", float, "EMA decay of the exported weights"),
        ("validation_steps", int, "write decoded EMA-student samples every N steps (0: never)"),
        ("num_validation_samples", int, "windows per validation"),
    ):
        typed = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        p.add_argument(f"--{name}", default=getattr(d, name), help=text, **typed)
    p.add_argument("--code_cache_dir", default=None, help="code cache folder (default ~/.cache)")
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="read only the teacher's configs, build teacher and student on the meta device, "
        "check one step's shapes and print its memory plan (OUTPUT_DIR/dry_run.json); no data "
        "is read and nothing is allocated",
    )
    add_train_args(p)


def distill_configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`distill` from parsed arguments (the level name is resolved
    against the teacher's VQ-VAE, whose folder must exist)."""

    vq_dir = Path(args.teacher) / VQVAE_FOLDER
    if not (vq_dir / "config.json").is_file():
        raise ConfigError(f"teacher VQ-VAE folder {vq_dir} is missing (no config.json)")
    vq_cfg = load_config(VQVAEConfig, str(vq_dir / "config.json"))
    init_from = getattr(args, "init_from", None)
    if init_from is not None:
        cfg = read_model_config(init_student_folder(init_from), StudentConfig, "student")
        check_init_flags(args, {"num_stages": cfg.n_stages})
    dcfg = DistillConfig(
        level=level_index(args.level, vq_cfg.levels),
        family=args.student,
        preset=args.preset or DistillConfig().preset,
        n_stages=args.num_stages,
        weights={name: getattr(args, f"{name}_weight") for name in LOSS_NAMES},
        ce_warmup_steps=args.ce_warmup_steps,
        ce_target=args.ce_target,
        teacher_temperature=args.teacher_temperature,
        teacher_dtype=args.teacher_dtype,
        tau=args.tau,
        gaussian_loss=args.gaussian_loss,
        mc_bandwidth=args.mc_bandwidth,
        ema_decay=args.ema_decay,
        n_ctx=args.n_ctx,
        validation_steps=args.validation_steps,
        num_validation_samples=args.num_validation_samples,
        code_cache_dir=args.code_cache_dir,
    )
    data_cfg = data_config_from_args(args, vq_cfg.sample_rate)
    return dict(
        teacher_dir=args.teacher,
        data_cfg=data_cfg,
        distill_cfg=dcfg,
        run_cfg=train_config_from_args(args),
        init_from=init_from,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill.train",
        description="Distil a teacher upsampler into a parallel student (DESIGN §5).",
    )
    add_distill_args(parser)
    return parser


def run(args: argparse.Namespace) -> Path:
    """Distil from parsed arguments (shared by the console script); returns the student folder
    (with ``--dry_run``: the plan file, see :mod:`distill.dry_run`)."""
    kwargs = distill_configs_from_args(args)
    if getattr(args, "dry_run", False):
        from distill.dry_run import dry_run

        init = kwargs["init_from"]  # the plan of its architecture (its config only)
        cfg = None if init is None else read_init_student(init, kwargs["distill_cfg"])[1]
        return dry_run(kwargs["teacher_dir"], kwargs["distill_cfg"], kwargs["run_cfg"], cfg)
    return distill(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distill.train``: exit status 0, or 2 with one error line."""
    return run_main(build_parser(), _main_run, argv)


def _main_run(args: argparse.Namespace) -> int:
    out = run(args)
    log.info("%s written to %s", "dry-run plan" if args.dry_run else "student", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
