"""Distillation dry run (``fastjukebox distill ... --dry_run``): the shapes and the memory plan of
one distillation step at the teacher's shapes, without allocating.

It reads only the ``config.json`` of the teacher folder's VQ-VAE and upsampler (no weights:
a converted released teacher checks in seconds on a laptop), runs every check :func:`distill.
train.distill` runs before training, then builds the frozen teacher prior (in
``--teacher_dtype``), the VQ-VAE and the student on the meta device
(:func:`teacher.train.memory.shape_only`) and runs one :func:`distill.step.distill_step` and its
backward pass on tensors without data at ``--train_batch_size`` × ``--n_ctx``. The tensors of
the step are checked against the shapes they must have, and the memory plan is printed and
written to ``OUTPUT_DIR/dry_run.json``:

* teacher: the frozen upsampler and VQ-VAE weights (no gradients, no optimizer state; the
  teacher scores under ``no_grad``, so it keeps no activations either);
* student: weights, gradients, Adam state, the EMA copy of the weights, and the activations of
  the step (student passes, the straight-through decode through the frozen VQ-VAE decoder, the
  MR-STFT, the teacher's fp32 logits the KL reads).

Gradient checkpointing has no effect on distillation: the teacher's pass keeps no activations
and the students are convolutional (no transformer blocks), so ``--gradient_checkpointing`` is
refused by ``distill``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.config import DistillConfig
from student.config import StudentConfig
from teacher.config import ConfigError
from teacher.io import atomic_write_json
from teacher.train.loop import TrainConfig
from teacher.train.memory import StepMemory, default_dtype, step_memory
from teacher.vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)

DRY_RUN_FILE = "dry_run.json"
_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class DistillPlan:
    """One distillation step at the teacher's shapes (bytes; per process).

    Attributes:
        level, family, batch, n_ctx: what was planned (``n_ctx`` codes per window).
        precision: ``fp32`` or the autocast dtype of ``--mixed_precision``.
        teacher_dtype: the frozen prior's dtype.
        teacher_params, student_params: parameter counts.
        step: the student's :class:`~teacher.train.memory.StepMemory` (its ``frozen_weights``
            are the teacher prior + VQ-VAE).
        ema: the EMA copy of the student's weights.
        shapes: name -> shape of the step's tensors (checked).
    """

    level: int
    family: str
    batch: int
    n_ctx: int
    precision: str
    teacher_dtype: str
    teacher_params: int
    student_params: int
    step: StepMemory
    ema: int
    shapes: dict[str, list[int]]

    @property
    def total(self) -> int:
        """Everything the step holds at the end of its forward pass."""
        return self.step.total + self.ema

    def rows(self) -> list[tuple[str, int]]:
        """(what, bytes) of the plan, the total last."""
        s = self.step
        return [
            ("teacher prior + VQ-VAE weights (frozen)", s.frozen_weights),
            ("student weights", s.weights),
            ("student gradients", s.grads),
            ("student Adam state", s.optimizer),
            ("student EMA weights", self.ema),
            ("activations of the step", s.activations),
            ("total", self.total),
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in dataclasses.asdict(self).items() if k != "step"},
            "step": dataclasses.asdict(self.step),
            "memory_bytes": dict(self.rows()),
        }


def _expect(shapes: dict[str, list[int]], name: str, t: torch.Tensor, want: tuple) -> None:
    got = list(t.shape)
    shapes[name] = got
    if got != list(want):
        raise RuntimeError(f"dry run: {name} has shape {got}, the step needs {list(want)}")


def plan_distillation(
    prior_cfg: Any,
    vq_cfg: VQVAEConfig,
    student_cfg: StudentConfig,
    dcfg: DistillConfig,
    batch: int,
    mixed_precision: str = "no",
) -> DistillPlan:
    """Build the teacher prior ``prior_cfg`` (in ``dcfg.teacher_dtype``), the VQ-VAE ``vq_cfg``
    and the student ``student_cfg`` on the meta device and run one distillation step and its
    backward pass at ``batch`` × ``dcfg.n_ctx`` (default: the teacher's window) codes.

    Checks the shapes of the step's tensors (the student's codes ``[B, T]`` and noise
    ``[B, T, noise_dim]``, per-stage logits and the teacher's logits ``[B, T, V]``, decoded audio
    ``[B, 1, T · hop]``, scalar loss terms) and returns the :class:`DistillPlan`. The warm-up
    cross-entropy (when weighted) is planned on the real codes (``ce_target="teacher"`` samples
    the teacher sequentially, which adds time, not memory). Nothing is allocated.
    """
    from distill.losses import _mrstft_module
    from distill.step import distill_step, step_generator
    from distill.teacher import Teacher
    from student import CategoricalIAF, GaussianIAF
    from teacher.device import resolve_dtype
    from teacher.prior.model import Prior
    from teacher.vqvae import VQVAE

    precision = _PRECISION[mixed_precision]
    n_ctx = dcfg.n_ctx or prior_cfg.n_ctx
    level, ratio, v = prior_cfg.level, prior_cfg.upsample_ratio, prior_cfg.l_bins
    hop = prior_cfg.hop_length
    dtype = resolve_dtype(dcfg.teacher_dtype)
    weights = dcfg.loss_weights()
    loss_cfg = student_cfg.loss
    shapes: dict[str, list[int]] = {}

    def frozen() -> list[torch.nn.Module]:
        with default_dtype(dtype):
            prior = Prior(prior_cfg).eval().requires_grad_(False)
        return [prior, VQVAE(vq_cfg).eval().requires_grad_(False)]

    def build() -> torch.nn.Module:
        # fresh weights: from_teacher's copy of the conditioner changes values, not shapes
        cls = GaussianIAF if student_cfg.family == "gaussian" else CategoricalIAF
        return cls(student_cfg)

    def loss(student: torch.nn.Module, fixed: list[torch.nn.Module]) -> torch.Tensor:
        prior, vqvae = fixed
        teacher = Teacher.in_memory(prior, vqvae)
        data = {
            "codes": torch.zeros(batch, n_ctx, dtype=torch.long),
            "upper": torch.zeros(batch, n_ctx // ratio, dtype=torch.long),
            "labels": torch.zeros(batch, max(prior_cfg.label_size, 1), dtype=torch.long),
        }
        gen = step_generator(torch.device("cpu"), 0, 0, 0, 0)
        out = distill_step(student, teacher, data, loss_cfg, weights, gen)
        _expect(shapes, "student codes", out.codes, (batch, n_ctx))
        for name, term in out.terms.items():
            _expect(shapes, f"loss term {name}", term, ())
        _expect(shapes, "loss", out.loss, ())
        # the intermediate tensors, re-run under no_grad: checked, never saved or measured
        labels = data["labels"] if prior_cfg.labels is not None else None
        s_labels = data["labels"] if student.cfg.labels is not None else None
        with torch.no_grad():
            noise = student.make_noise(batch, n_ctx)
            _expect(shapes, "student noise", noise, (batch, n_ctx, student.noise_dim))
            sample = student(data["upper"], s_labels, noise=noise)
            for k, lg in enumerate(sample.logits):
                _expect(shapes, f"student logits stage {k}", lg, (batch, n_ctx, v))
            t_logits = prior.logits(out.codes, labels, data["upper"])
            _expect(shapes, "teacher logits", t_logits, (batch, n_ctx, v))
            audio = vqvae.decode([out.codes], start_level=level)
            _expect(shapes, "decoded audio", audio, (batch, vq_cfg.channels, n_ctx * hop))
        return out.loss

    # the MR-STFT modules are cached per resolution set: none made with real windows may enter
    # the shape-only run, and none made inside it (fake windows) may outlive it
    _mrstft_module.cache_clear()
    try:
        step = step_memory(
            f"distill level {level}", build, loss, batch, n_ctx, precision, frozen=frozen
        )
    finally:
        _mrstft_module.cache_clear()
    with torch.device("meta"):
        teacher_params = sum(p.numel() for p in Prior(prior_cfg).parameters())
    return DistillPlan(
        level=level,
        family=student_cfg.family,
        batch=batch,
        n_ctx=n_ctx,
        precision=precision,
        teacher_dtype=dcfg.teacher_dtype,
        teacher_params=teacher_params,
        student_params=step.params,
        step=step,
        ema=step.weights,
        shapes=shapes,
    )


def format_plan(plan: DistillPlan) -> str:
    """The plan as a markdown table (GiB, or MiB under 1 GiB) with the checked shapes under it."""
    unit, scale = ("GiB", 2**30) if plan.total >= 2**30 else ("MiB", 2**20)
    lines = [
        f"distillation dry run: level {plan.level}, {plan.family} student "
        f"({plan.student_params / 1e6:.1f} M parameters), teacher {plan.teacher_params / 1e6:.1f} "
        f"M parameters in {plan.teacher_dtype}, batch {plan.batch} x {plan.n_ctx} codes, "
        f"{plan.precision}",
        "",
        f"| per process | {unit} |",
        "|---|---:|",
        *(f"| {what} | {n / scale:.2f} |" for what, n in plan.rows()),
        "",
        "shapes checked: " + ", ".join(f"{k} {tuple(v)}" for k, v in plan.shapes.items() if v),
    ]
    return "\n".join(lines)


def dry_run(
    teacher_dir: str | Path,
    distill_cfg: DistillConfig,
    run_cfg: TrainConfig,
    student_cfg: StudentConfig | None = None,
) -> Path:
    """``distill --dry_run``: the checks of :func:`distill.train.distill` on the teacher
    folder's configs (no weights are read), then :func:`plan_distillation` at
    ``run_cfg.train_batch_size``; prints the plan and writes it to ``OUTPUT_DIR/dry_run.json``
    (returned). Raises :class:`ConfigError` / :class:`ModelFolderError` as ``distill`` would."""
    from distill.teacher import read_teacher_configs
    from distill.train import resolve_student_config

    run_cfg.validate()
    dcfg = distill_cfg.validate()
    if run_cfg.gradient_checkpointing:
        raise ConfigError(GRADIENT_CHECKPOINTING_NO_EFFECT)
    prior_dir, vq_dir, prior_cfg, vq_cfg = read_teacher_configs(teacher_dir, dcfg.level)
    student_cfg = resolve_student_config(student_cfg, dcfg, prior_cfg, vq_cfg)
    plan = plan_distillation(
        prior_cfg, vq_cfg, student_cfg, dcfg, run_cfg.train_batch_size, run_cfg.mixed_precision
    )
    out = Path(run_cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / DRY_RUN_FILE
    atomic_write_json(
        path,
        {"teacher": str(Path(teacher_dir).resolve()), "prior": str(prior_dir), **plan.as_dict()},
    )
    print(format_plan(plan), flush=True)
    return path


#: why ``distill`` refuses ``--gradient_checkpointing``
GRADIENT_CHECKPOINTING_NO_EFFECT = (
    "--gradient_checkpointing has no effect on distillation: the frozen teacher scores the "
    "student's codes under no_grad (it keeps no activations) and the students are convolutional "
    "(no transformer blocks to recompute); drop the flag (see --dry_run for the step's memory)"
)


__all__ = [
    "DRY_RUN_FILE",
    "GRADIENT_CHECKPOINTING_NO_EFFECT",
    "DistillPlan",
    "dry_run",
    "format_plan",
    "plan_distillation",
]
