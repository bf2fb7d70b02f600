"""What a distillation run distils and with which losses: :class:`DistillConfig`, the named loss
weights, and the student config built for a teacher (:func:`student_config_from_preset`)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from student.config import (
    FAMILIES,
    GAUSSIAN_OBJECTIVES,
    LOSS_NAMES,
    STUDENT_PRESETS,
    StudentConfig,
    student_config_for,
)
from teacher.config import ConfigError
from teacher.device import DTYPES
from teacher.io import CONFIG_FILE
from teacher.vqvae.config import VQVAEConfig

#: the student folder a distillation run exports under its output folder
EXPORT_DIR = "student"


def student_folder(folder: str | os.PathLike) -> Path | None:
    """``folder`` if it holds a student (its config), else its distillation run's export
    ``folder/student``, else None: where sampling and ``--init_from`` find a student."""
    folder = Path(folder)
    for candidate in (folder, folder / EXPORT_DIR):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


#: the named loss weights (keys = log keys of the terms). ``mrstft`` 1.0: auraloss's MR-STFT
#: (spectral convergence + log magnitude, ~1-2 for unrelated audio) is on the scale of a KL of
#: ~1 nat/token, so neither term swamps the other at the start; ``kl_intermediate`` 0.1 as the
#: prototype of DESIGN §5; ``tv`` off (the total variation distance, 1 − a speculative draft's
#: expected acceptance: for students tuned as draft models); ``power`` off (the MR-STFT term
#: already matches the spectrum);
#: ``ce`` off (warm-up only, decays to 0 over ``ce_warmup_steps``).
DEFAULT_WEIGHTS: dict[str, float] = {
    "kl": 1.0,
    "kl_intermediate": 0.1,
    "tv": 0.0,
    "mrstft": 1.0,
    "power": 0.0,
    "ce": 0.0,
}
CE_TARGETS = ("real", "teacher")
#: Jukebox samples its upsamplers at temperature 0.99 (sample.py / DESIGN §3)
TEACHER_SAMPLING_TEMPERATURE = 0.99


@dataclass(frozen=True)
class DistillConfig:
    """What to distil and with which losses (the run itself is a :class:`TrainConfig`).

    Attributes:
        level: the upsampler level to replace (0 bottom, 1 middle); never the top.
        family: ``"categorical"`` (Gumbel-max IAF) or ``"gaussian"`` (affine IAF baseline).
        preset: student size preset (``student.config.STUDENT_PRESETS``): its stage networks
            and MR-STFT resolutions; the geometry and conditioning come from the teacher.
        n_stages: K (``None``: the preset's).
        weights: named loss weights, keys among :data:`student.config.LOSS_NAMES`; missing
            keys take :data:`DEFAULT_WEIGHTS`. ``ce`` is its value at step 0.
        ce_warmup_steps: the ``ce`` weight decays linearly to 0 over these optimiser steps.
        ce_target: warm-up targets: ``"real"`` (the window's true codes) or ``"teacher"``
            (codes sampled from the teacher at ``teacher_temperature``, sequential: slow).
        teacher_dtype: the frozen teacher prior's precision (``float32``, ``bfloat16``,
            ``float16``); its logits are fp32 either way.
        teacher_temperature: the teacher's logits are divided by it (its sampling temperature);
            the KL at temperature 1 is logged as well (``kl_per_token_t1``).
        tau: temperature of the straight-through Gumbel-softmax codes fed to the decoder.
        gaussian_loss: Gaussian student only: ``"calibrated"`` (closed-form reverse KL of the
            calibrated soft assignment, DESIGN §5) or ``"mc"`` (Monte-Carlo cross-entropy
            against the teacher lifted to a Gaussian mixture, minus the log-det entropy).
        mc_bandwidth: std of that mixture around the unit-norm codes.
        ema_decay: EMA of the student's weights (the exported weights), with the warm-up
            ``min(decay, (1 + n) / (10 + n))`` of diffusers' ``EMAModel``.
        n_ctx: codes per training window (``None``: the teacher's ``n_ctx``, the most it scores
            in one pass).
        validation_steps: every this many steps, decode a few EMA-student samples to WAV
            (diffusers' ``--validation_steps``); 0 = never.
        num_validation_samples: windows per validation.
        code_cache_dir: the code cache folder (``None``: the default under the data cache dir).
    """

    level: int = 1
    family: str = "categorical"
    preset: str = "small"
    n_stages: int | None = None
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    ce_warmup_steps: int = 0
    ce_target: str = "real"
    teacher_temperature: float = TEACHER_SAMPLING_TEMPERATURE
    teacher_dtype: str = "float32"
    tau: float = 1.0
    gaussian_loss: str = "calibrated"
    mc_bandwidth: float = 0.1
    ema_decay: float = 0.999
    n_ctx: int | None = None
    validation_steps: int = 0
    num_validation_samples: int = 2
    code_cache_dir: str | None = None

    def loss_weights(self) -> dict[str, float]:
        """Every loss name's weight: :data:`DEFAULT_WEIGHTS` updated by :attr:`weights`."""
        return {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in self.weights.items()}}

    def validate(self) -> DistillConfig:
        """Raise :class:`ConfigError` on the first bad value; return ``self``."""
        if self.level < 0:
            raise ConfigError(f"level must be >= 0, got {self.level}")
        if self.family not in FAMILIES:
            raise ConfigError(f"--student must be one of {FAMILIES}, got {self.family!r}")
        if self.preset not in STUDENT_PRESETS:
            raise ConfigError(f"--preset must be one of {sorted(STUDENT_PRESETS)}")
        if self.n_stages is not None and self.n_stages < 1:
            raise ConfigError(f"--num_stages must be >= 1, got {self.n_stages}")
        unknown = sorted(set(self.weights) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(f"unknown loss weights {unknown}; known: {list(LOSS_NAMES)}")
        w = self.loss_weights()
        bad = [k for k, v in w.items() if not (v >= 0 and math.isfinite(v))]
        if bad:
            raise ConfigError(f"loss weights must be finite and >= 0: {bad}")
        if not any(w[k] for k in ("kl", "kl_intermediate", "tv", "mrstft", "power")):
            raise ConfigError(
                "every distillation weight (kl, kl_intermediate, tv, mrstft, power) is 0"
            )
        if self.ce_warmup_steps < 0:
            raise ConfigError("--ce_warmup_steps must be >= 0")
        if w["ce"] > 0 and self.ce_warmup_steps == 0:
            raise ConfigError("--ce_weight > 0 needs --ce_warmup_steps > 0 (it decays to 0)")
        if self.ce_target not in CE_TARGETS:
            raise ConfigError(f"--ce_target must be one of {CE_TARGETS}, got {self.ce_target!r}")
        if self.teacher_dtype not in DTYPES:
            raise ConfigError(f"--teacher_dtype must be one of {sorted(DTYPES)}")
        if not self.teacher_temperature > 0:
            raise ConfigError(f"--teacher_temperature must be > 0, got {self.teacher_temperature}")
        if not self.tau > 0:
            raise ConfigError(f"--tau must be > 0, got {self.tau}")
        if self.gaussian_loss not in GAUSSIAN_OBJECTIVES:
            raise ConfigError(f"--gaussian_loss must be one of {GAUSSIAN_OBJECTIVES}")
        if not self.mc_bandwidth > 0:
            raise ConfigError("--mc_bandwidth must be > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.n_ctx is not None and self.n_ctx < 1:
            raise ConfigError(f"--n_ctx must be >= 1, got {self.n_ctx}")
        if self.validation_steps < 0 or self.num_validation_samples < 1:
            raise ConfigError("--validation_steps must be >= 0, --num_validation_samples >= 1")
        return self


def loss_config_for(dcfg: DistillConfig, base: Any) -> Any:
    """``base`` (a :class:`~student.config.LossConfig`, which carries the MR-STFT and power
    resolutions) with the weights and settings of ``dcfg``: saved beside the student's
    weights so the export records how it was distilled."""
    w = dcfg.loss_weights()
    return dataclasses.replace(
        base,
        **w,
        ce_warmup_steps=dcfg.ce_warmup_steps,
        tau=dcfg.tau,
        teacher_temperature=dcfg.teacher_temperature,
        gaussian_objective=dcfg.gaussian_loss,
        mc_bandwidth=dcfg.mc_bandwidth,
    ).validate()


def student_config_from_preset(
    dcfg: DistillConfig, prior_cfg: Any, vq_cfg: VQVAEConfig
) -> StudentConfig:
    """A student for the teacher ``prior_cfg``: the preset's stage networks, MR-STFT
    resolutions and K (unless ``dcfg.n_stages``); the teacher's geometry and conditioning; for
    the Gaussian family the VQ-VAE's code space (``code_dim = emb_width``)."""
    preset = STUDENT_PRESETS[dcfg.preset](level=dcfg.level, family=dcfg.family)
    return student_config_for(
        prior_cfg,
        family=dcfg.family,
        n_stages=dcfg.n_stages or preset.n_stages,
        stage=preset.stage,
        code_dim=vq_cfg.emb_width,
        loss=loss_config_for(dcfg, preset.loss),
    )


__all__ = [
    "CE_TARGETS",
    "DEFAULT_WEIGHTS",
    "EXPORT_DIR",
    "TEACHER_SAMPLING_TEMPERATURE",
    "DistillConfig",
    "loss_config_for",
    "student_config_from_preset",
    "student_folder",
]
