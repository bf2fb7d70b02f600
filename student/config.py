"""Configuration of the parallel students and of their distillation losses (DESIGN.md §5).

One frozen :class:`StudentConfig` per student, nested like the teacher's
:class:`~teacher.prior.config.PriorConfig`:

* the geometry of the level it replaces (``level``, ``l_bins``, ``downs_t``/``strides_t``) and
  the conditioning it copies from the teacher at init (``conditioner``, ``labels``,
  ``cond_width`` = the teacher's transformer width, which is the conditioner's output width);
* :class:`StageConfig`: one causal dilated conv stack (a categorical stage or a flow's
  shift/log-scale network);
* ``family``: ``"categorical"`` (Gumbel-max IAF) or ``"gaussian"`` (ClariNet-style affine IAF in a
  code-embedding space, with a :class:`GaussianConfig`);
* :class:`LossConfig`: the named loss weights (the log keys) and the loss settings the student
  was distilled with, saved beside the weights.

Presets are plain functions that match the teacher presets of :mod:`teacher.prior.config`
(``tiny_student`` ↔ ``tiny_upsampler``, ``small_student`` ↔ ``small_upsampler``);
:func:`student_config_for` builds a config for any teacher config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from teacher.config import ConfigError, check, check_stft_resolutions, load_config, save_config
from teacher.levels import hop_length
from teacher.presets import small_upsampler, tiny_upsampler
from teacher.prior.config import LabelConditionerConfig, PriorConfig, UpsamplerConditionerConfig

FAMILIES = ("categorical", "gaussian")
CODE_SPACES = ("vqvae", "teacher_head", "learned")
GAUSSIAN_OBJECTIVES = ("calibrated", "mc")
LOSS_NAMES = ("kl", "kl_intermediate", "tv", "mrstft", "power", "ce")
_Sizes = tuple[int, ...]


@dataclass(frozen=True)
class StageConfig:
    """One gated causal dilated conv stack (WaveNet, van den Oord et al. 2016).

    ``depth`` layers of ``tanh · sigmoid`` gated convolutions of ``kernel_size`` taps with
    dilation ``dilation_growth_rate ** (d % dilation_cycle)``; ``width`` residual channels,
    ``skip_width`` skip channels (``None``: ``width``). The receptive field of one stack is
    ``1 + (kernel_size - 1) · Σ dilations`` positions of the (shifted) input.
    """

    width: int = 64
    depth: int = 6
    kernel_size: int = 2
    dilation_growth_rate: int = 2
    dilation_cycle: int | None = None
    skip_width: int | None = None

    @property
    def dilations(self) -> tuple[int, ...]:
        c = self.dilation_cycle
        return tuple(
            self.dilation_growth_rate ** (d if c is None else d % c) for d in range(self.depth)
        )

    @property
    def receptive_field(self) -> int:
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def validate(self) -> StageConfig:
        """Raise :class:`ConfigError` on a bad field; return ``self``."""
        check(self.width >= 1 and self.depth >= 1, "stage width and depth must be >= 1")
        check(self.kernel_size >= 2, f"stage kernel_size must be >= 2, got {self.kernel_size}")
        check(self.dilation_growth_rate >= 1, "stage dilation_growth_rate must be >= 1")
        check(
            self.dilation_cycle is None or self.dilation_cycle >= 1,
            f"stage dilation_cycle must be None or >= 1, got {self.dilation_cycle}",
        )
        check(self.skip_width is None or self.skip_width >= 1, "stage skip_width must be >= 1")
        return self


@dataclass(frozen=True)
class GaussianConfig:
    """The Gaussian IAF's code-embedding space and flow settings.

    ``code_space``:

    * ``"vqvae"`` — the VQ-VAE codebook of this level, rows normalised to unit norm
      (``code_dim`` = the VQ-VAE's ``emb_width``); set with ``GaussianIAF.set_codebook`` or
      ``from_teacher(..., codebook=)``. Until then the table holds random unit vectors.
    * ``"teacher_head"`` — the teacher's output-head rows, normalised (``code_dim`` = the
      teacher's width), so ``μ·e_k`` has the form of the teacher's logits (DESIGN §5, untested).
    * ``"learned"`` — a learned table, normalised on use.

    ``log_sigma_min/max`` clamp each flow's log-scale (ClariNet: about [−7, 2]).
    """

    code_space: str = "vqvae"
    code_dim: int = 64
    log_sigma_min: float = -7.0
    log_sigma_max: float = 2.0

    def validate(self) -> GaussianConfig:
        """Raise :class:`ConfigError` on a bad field; return ``self``."""
        check(
            self.code_space in CODE_SPACES,
            f"code_space must be one of {CODE_SPACES}, got {self.code_space!r}",
        )
        check(self.code_dim >= 1, f"code_dim must be >= 1, got {self.code_dim}")
        check(
            self.log_sigma_min < self.log_sigma_max,
            f"need log_sigma_min < log_sigma_max, got {self.log_sigma_min}, {self.log_sigma_max}",
        )
        return self


@dataclass(frozen=True)
class LossConfig:
    """Named distillation loss weights (the log keys of :mod:`distill.losses`) and settings.

    Weights: ``kl`` final-stage reverse KL per token; ``kl_intermediate`` the same on earlier
    stages (DESIGN §5: 0.1); ``tv`` the final stage's total variation distance to the teacher
    per token (one minus the expected acceptance of a speculative draft drawn from it: the
    objective of a draft model, DistillSpec); ``mrstft`` multi-resolution STFT of decoded
    audio; ``power``
    Parallel WaveNet's power loss; ``ce`` the warm-up cross-entropy at step 0, decayed linearly
    to 0 over ``ce_warmup_steps``.

    Settings: ``tau`` the Gumbel-softmax temperature of the straight-through codes;
    ``teacher_temperature`` divides the teacher's logits (its sampling temperature; track the
    KL at 1.0, DESIGN §5); ``gaussian_objective`` ``"calibrated"`` (closed-form reverse KL on the
    calibrated soft assignment) or ``"mc"`` (Monte-Carlo cross-entropy minus log-det entropy)
    with ``mc_bandwidth`` the std of the Gaussian mixture around the unit-norm codes;
    ``stft_*`` the MR-STFT resolutions (Jukebox's three by default; smaller for tiny sample
    rates); ``power_n_fft`` the power loss's FFT size.
    """

    kl: float = 1.0
    kl_intermediate: float = 0.1
    tv: float = 0.0
    mrstft: float = 1.0
    power: float = 0.0
    ce: float = 0.0
    ce_warmup_steps: int = 0
    tau: float = 1.0
    teacher_temperature: float = 1.0
    gaussian_objective: str = "calibrated"
    mc_bandwidth: float = 0.1
    stft_fft_sizes: tuple[int, ...] = (2048, 1024, 512)
    stft_hop_sizes: tuple[int, ...] = (240, 120, 50)
    stft_win_lengths: tuple[int, ...] = (1200, 600, 240)
    power_n_fft: int = 1024

    def weights(self) -> dict[str, float]:
        """The weight of every loss term name (``ce`` at step 0, before its decay)."""
        return {name: float(getattr(self, name)) for name in LOSS_NAMES}

    def validate(self) -> LossConfig:
        """Raise :class:`ConfigError` on a bad field; return ``self``."""
        for name in LOSS_NAMES:
            check(getattr(self, name) >= 0, f"loss weight {name} must be >= 0")
        check(self.ce_warmup_steps >= 0, "ce_warmup_steps must be >= 0")
        check(self.tau > 0, f"tau must be positive, got {self.tau}")
        check(self.teacher_temperature > 0, "teacher_temperature must be positive")
        check(
            self.gaussian_objective in GAUSSIAN_OBJECTIVES,
            f"gaussian_objective must be one of {GAUSSIAN_OBJECTIVES}, "
            f"got {self.gaussian_objective!r}",
        )
        check(self.mc_bandwidth > 0, "mc_bandwidth must be positive")
        check_stft_resolutions(
            self.stft_fft_sizes,
            self.stft_hop_sizes,
            self.stft_win_lengths,
            "MR-STFT loss (stft_fft_sizes, stft_hop_sizes, stft_win_lengths)",
        )
        check(self.power_n_fft >= 2, "power_n_fft must be >= 2")
        return self


@dataclass(frozen=True)
class StudentConfig:
    """A parallel student replacing the upsampler of one level.

    Attributes:
        family: ``"categorical"`` or ``"gaussian"``.
        level: the level it generates (0 bottom, below the top level).
        l_bins: the code vocabulary V.
        cond_width: width of the conditioning vectors (the teacher's transformer width: the
            copied conditioner outputs it).
        downs_t, strides_t, sample_rate: the VQ-VAE geometry (upsampling ratio, label units).
        conditioner: the upper-code conditioner (a copy of the teacher's at init).
        labels: artist/genre conditioning (no timing below the top), or ``None``.
        n_stages: K, the number of network passes (categorical stages or Gaussian flows).
        stage: each stage's conv stack.
        share_stages: categorical only — stages 1..K−1 share one network (a learned Jacobi
            operator applied K−1 times; untested idea of DESIGN §5). Stage 0 stays separate.
        gaussian: the Gaussian family's settings (required iff ``family == "gaussian"``).
        init_scale: the teacher's init scale (the conditioner's init std).
        loss: loss weights and settings the student is distilled with.
    """

    family: str
    level: int
    l_bins: int
    cond_width: int
    conditioner: UpsamplerConditionerConfig
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    sample_rate: int = 44100
    labels: LabelConditionerConfig | None = None
    n_stages: int = 4
    stage: StageConfig = field(default_factory=StageConfig)
    share_stages: bool = False
    gaussian: GaussianConfig | None = None
    init_scale: float = 1.0
    loss: LossConfig = field(default_factory=LossConfig)

    @property
    def levels(self) -> int:
        return len(self.downs_t)

    @property
    def upsample_ratio(self) -> int:
        """Codes of this level per upper-level code."""
        return self.strides_t[self.level + 1] ** self.downs_t[self.level + 1]

    @property
    def hop_length(self) -> int:
        """Audio samples per code of this level."""
        return hop_length(self.downs_t, self.strides_t, self.level)

    @property
    def label_size(self) -> int:
        """Length of a label vector ``4 + max_genres`` (0 when unlabelled); lyric tokens at the
        end of a longer vector are ignored."""
        return 0 if self.labels is None else 4 + self.labels.max_genres

    def validate(self) -> StudentConfig:
        """Raise :class:`ConfigError` naming the first bad field; return ``self``."""
        check(self.family in FAMILIES, f"family must be one of {FAMILIES}, got {self.family!r}")
        check(
            len(self.downs_t) == len(self.strides_t) >= 2,
            "downs_t and strides_t need the same length, at least 2 levels",
        )
        check(all(d >= 1 for d in self.downs_t), f"downs_t must be >= 1, got {self.downs_t}")
        check(all(s >= 2 for s in self.strides_t), f"strides_t must be >= 2, got {self.strides_t}")
        check(
            0 <= self.level < self.levels - 1,
            f"a student replaces an upsampler: level must be in [0, {self.levels - 1}), "
            f"got {self.level}",
        )
        check(self.l_bins >= 2, f"l_bins must be >= 2, got {self.l_bins}")
        check(self.cond_width >= 1, f"cond_width must be >= 1, got {self.cond_width}")
        check(self.sample_rate > 0, "sample_rate must be positive")
        check(self.n_stages >= 1, f"n_stages must be >= 1, got {self.n_stages}")
        check(self.init_scale > 0, "init_scale must be positive")
        self.conditioner.validate()
        self.stage.validate()
        self.loss.validate()
        if self.labels is not None:
            self.labels.validate()
            check(
                not self.labels.include_timing,
                "timing conditioning is for the top prior only: set labels.include_timing=False",
            )
        if self.family == "gaussian":
            check(self.gaussian is not None, "a gaussian student needs a GaussianConfig")
            self.gaussian.validate()
            check(not self.share_stages, "share_stages is a categorical-student option")
        else:
            check(self.gaussian is None, "a categorical student takes no GaussianConfig")
        return self

    def check_teacher(self, prior_cfg: PriorConfig) -> None:
        """Raise :class:`ConfigError` unless this student can replace ``prior_cfg``'s level and
        take a copy of its conditioner (and label embeddings)."""
        for name, theirs in teacher_fields(prior_cfg).items():
            mine = getattr(self, name)
            check(mine == theirs, f"student {name} {mine} does not match the teacher's {theirs}")
        if self.labels is not None:
            check(prior_cfg.labels is not None, "a labelled student needs a labelled teacher")
            mine, theirs = self.labels, prior_cfg.labels
            check(
                (mine.artist_bins, mine.genre_bins, mine.max_genres)
                == (theirs.artist_bins, theirs.genre_bins, theirs.max_genres),
                f"student labels {mine} do not match the teacher's {theirs}",
            )


def teacher_fields(prior_cfg: PriorConfig) -> dict[str, Any]:
    """The :class:`StudentConfig` fields taken from the teacher's config, which must keep
    matching it (:meth:`StudentConfig.check_teacher`): geometry and conditioner."""
    return {
        "level": prior_cfg.level,
        "l_bins": prior_cfg.l_bins,
        "cond_width": prior_cfg.transformer.width,
        "downs_t": prior_cfg.downs_t,
        "strides_t": prior_cfg.strides_t,
        "conditioner": prior_cfg.conditioner,
    }


def save_student_config(cfg: StudentConfig, path: str) -> None:
    """Write ``cfg`` as tagged JSON (nested configs included)."""
    save_config(cfg, path)


def load_student_config(path: str) -> StudentConfig:
    """Read a :class:`StudentConfig` written by :func:`save_student_config` and validate it."""
    return load_config(StudentConfig, path).validate()


# ---------------------------------------------------------------------------------------------
# presets


def student_config_for(
    prior_cfg: PriorConfig,
    family: str = "categorical",
    n_stages: int = 4,
    stage: StageConfig | None = None,
    code_dim: int | None = None,
    code_space: str = "vqvae",
    loss: LossConfig | None = None,
    share_stages: bool = False,
) -> StudentConfig:
    """A student config whose geometry and conditioning match the upsampler ``prior_cfg``.

    ``code_dim`` (gaussian, ``code_space="vqvae"``) is the VQ-VAE's ``emb_width``; with
    ``"teacher_head"`` it is forced to the teacher's width.
    """
    if not prior_cfg.is_upsampler:
        raise ConfigError("students replace upsamplers: the teacher must be below the top level")
    gaussian = None
    if family == "gaussian":
        if code_space == "teacher_head":
            code_dim = prior_cfg.transformer.width
        gaussian = GaussianConfig(code_space=code_space, code_dim=code_dim or 64)
    labels = prior_cfg.labels
    if labels is not None:
        labels = dataclasses.replace(labels, include_timing=False)
    return StudentConfig(
        family=family,
        **teacher_fields(prior_cfg),
        sample_rate=prior_cfg.sample_rate,
        labels=labels,
        n_stages=n_stages,
        stage=stage or StageConfig(),
        share_stages=share_stages,
        gaussian=gaussian,
        init_scale=prior_cfg.transformer.init_scale,
        loss=loss or LossConfig(),
    ).validate()


def _stft_loss(ffts: _Sizes, hops: _Sizes, wins: _Sizes, power_n_fft: int) -> LossConfig:
    """Default loss weights with these MR-STFT resolutions and power-loss FFT size."""
    return LossConfig(
        stft_fft_sizes=ffts, stft_hop_sizes=hops, stft_win_lengths=wins, power_n_fft=power_n_fft
    )


def tiny_student(
    level: int = 1, family: str = "categorical", labels: bool = True, n_stages: int = 3
) -> StudentConfig:
    """A seconds-to-run student matching ``tiny_upsampler(level, labels)`` (and ``tiny_vqvae``:
    ``emb_width`` 16, 8 kHz): stages of 4 gated convs at width 32 (receptive field 16), STFT
    resolutions small enough for clips of a few hundred samples."""
    loss = _stft_loss((128, 64, 32), (32, 16, 8), (128, 64, 32), power_n_fft=64)
    prior_cfg, stage = tiny_upsampler(level, labels=labels), StageConfig(width=32, depth=4)
    return student_config_for(prior_cfg, family, n_stages, stage, code_dim=16, loss=loss)


def small_student(
    level: int, family: str = "categorical", *, n_stages: int = 4, **teacher: Any
) -> StudentConfig:
    """The demo's students, matching ``small_upsampler(level, **teacher)`` (``teacher``: its
    ``n_artists``, ``n_genres``, ``max_genres``, ``sample_rate``) and ``small_vqvae``
    (``emb_width`` 64): K = 4 stages (DESIGN §5's best prototype) of 8 gated convs at width 128,
    dilations 1…128 (receptive field 256 per stage); STFT resolutions scaled to 22 kHz."""
    prior_cfg = small_upsampler(level, **teacher)
    loss = _stft_loss((1024, 512, 256), (120, 60, 25), (600, 300, 120), power_n_fft=512)
    stage = StageConfig(width=128, depth=8)
    return student_config_for(prior_cfg, family, n_stages, stage, code_dim=64, loss=loss)


STUDENT_PRESETS = {"tiny": tiny_student, "small": small_student}

__all__ = [
    "CODE_SPACES",
    "FAMILIES",
    "GAUSSIAN_OBJECTIVES",
    "LOSS_NAMES",
    "STUDENT_PRESETS",
    "GaussianConfig",
    "LossConfig",
    "StageConfig",
    "StudentConfig",
    "load_student_config",
    "save_student_config",
    "small_student",
    "student_config_for",
    "teacher_fields",
    "tiny_student",
]
