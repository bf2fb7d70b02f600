"""Distillation entry point: ``accelerate launch -m distill.train --teacher DIR --level middle ...``.

Trains a parallel student (:mod:`student`) to replace one upsampler of a trained teacher
(DESIGN §5). Per optimiser step:

1. the student samples every code of a window in K passes from fresh noise
   (``Student.forward``), conditioned on the true upper codes and labels of a data window;
2. the frozen teacher prior of that level scores the student's OWN tokens in one
   teacher-forced pass under ``no_grad``; its logits are divided by ``teacher_temperature``
   (its sampling temperature, 0.99 as in Jukebox);
3. the loss terms (their names are the log keys, DAC-style ``lambdas``): ``kl`` the per-token
   reverse KL of the final stage (closed form for the categorical student; for the Gaussian one
   the calibrated soft-assignment KL, or the Monte-Carlo cross-entropy minus the log-det entropy
   with ``gaussian_loss="mc"``), ``kl_intermediate`` the same for the earlier stages against
   the same teacher pass, ``mrstft`` the multi-resolution STFT loss between the audio decoded by
   the frozen VQ-VAE decoder of the level from the student's straight-through code embeddings
   and the decoded TRUE codes of the window (KL alone gives quiet, whispery audio: Parallel
   WaveNet §3.2), ``power`` Parallel WaveNet's power loss, and ``ce`` a warm-up cross-entropy on
   real (or teacher-sampled) codes whose weight decays linearly to 0 over ``ce_warmup_steps``;
4. ``total = Σ w·term``, accelerate backward, gradient clipping, optimiser step, EMA update.

Logged every ``logging_steps`` (``metrics.jsonl``, the progress bar): every term, the total,
``kl_per_token`` (nats, vs the teacher at ``teacher_temperature``), ``kl_per_token_t1`` (vs the
teacher at temperature 1: the main quality signal, DESIGN §5 — the teacher NLL of the student's
samples alone is misleading, low temperatures lower it while matching the teacher worse),
``teacher_nll_bits`` (bits/token of the student's tokens under the teacher at temperature 1),
``accuracy`` (tokens equal to the true codes), ``student_entropy`` (nats/token of q) and the
per-stage KL ``kl_stage{k}``; they are the main process's last micro-batch (not averaged over
ranks). Every ``validation_steps`` the EMA student is scored on fixed windows (``val_*``).

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

Teacher folder layout (``teacher/generate.py``): ``TEACHER/vqvae``, ``TEACHER/top``,
``TEACHER/middle``, ``TEACHER/bottom``, each a model folder (prior folders also hold
``vocab.json`` and ``vqvae.json``). Only ``vqvae`` and the distilled level are read.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

from student.config import (
    FAMILIES,
    GAUSSIAN_OBJECTIVES,
    LOSS_NAMES,
    STUDENT_PRESETS,
    StudentConfig,
    load_student_config,
    student_config_for,
)
from teacher.config import ConfigError, VQVAEConfig, config_to_dict, load_config
from teacher.io import atomic_dir, atomic_write_json, read_json, resolve_resume
from teacher.train import (
    MetricsLog,
    TrainConfig,
    add_train_args,
    level_index,
    make_accelerator,
    make_progress,
    prepare_training,
    restore_checkpoint,
    resumable_batches,
    save_checkpoint,
    train_config_from_args,
)

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
#: the named loss weights (keys = log keys of the terms). ``mrstft`` 1.0: auraloss's MR-STFT
#: (spectral convergence + log magnitude, ~1-2 for unrelated audio) is on the scale of a KL of
#: ~1 nat/token, so neither term swamps the other at the start; ``kl_intermediate`` 0.1 as the
#: prototype of DESIGN §5; ``power`` off (the MR-STFT term already matches the spectrum);
#: ``ce`` off (warm-up only, decays to 0 over ``ce_warmup_steps``).
DEFAULT_WEIGHTS: dict[str, float] = {
    "kl": 1.0,
    "kl_intermediate": 0.1,
    "mrstft": 1.0,
    "power": 0.0,
    "ce": 0.0,
}
CE_TARGETS = ("real", "teacher")
#: Jukebox samples its upsamplers at temperature 0.99 (sample.py / DESIGN §3)
TEACHER_SAMPLING_TEMPERATURE = 0.99
UPSAMPLER_FOLDERS = {0: "bottom", 1: "middle"}  # level index -> TEACHER/<name> (3 levels)
VQVAE_FOLDER = "vqvae"
EXPORT_NAME = "student"
TEACHER_LINK_FILE = "teacher.json"
VOCAB_FILE = "vocab.json"


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
        if not any(w[k] for k in ("kl", "kl_intermediate", "mrstft", "power")):
            raise ConfigError("every distillation weight (kl, kl_intermediate, mrstft, power) is 0")
        if self.ce_warmup_steps < 0:
            raise ConfigError("--ce_warmup_steps must be >= 0")
        if w["ce"] > 0 and self.ce_warmup_steps == 0:
            raise ConfigError("--ce_weight > 0 needs --ce_warmup_steps > 0 (it decays to 0)")
        if self.ce_target not in CE_TARGETS:
            raise ConfigError(f"--ce_target must be one of {CE_TARGETS}, got {self.ce_target!r}")
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


# ---------------------------------------------------------------------------------------------
# the teacher


@dataclass
class Teacher:
    """The frozen pieces of a teacher folder a distillation run needs.

    Attributes:
        prior: the upsampler prior of the level (eval, ``requires_grad`` off).
        vqvae: the VQ-VAE (eval, ``requires_grad`` off): codebook and level decoder.
        vocab: artist/genre names -> ids of the prior's labels.
        root, prior_dir, vqvae_dir: the folders.
        fingerprint: SHA-256 (16 hex) of the prior folder's config and weights.
        vqvae_fingerprint: the same of the VQ-VAE folder.
    """

    prior: Any
    vqvae: Any
    vocab: Any
    root: Path
    prior_dir: Path
    vqvae_dir: Path
    fingerprint: str
    vqvae_fingerprint: str

    @property
    def level(self) -> int:
        return self.prior.cfg.level


def model_fingerprint(folder: str | Path) -> str:
    """SHA-256 (hex, 16 chars) of a model folder's ``config.json`` and weight files (one
    ``model.safetensors`` or the shards of ``model.safetensors.index.json``); for a one-file
    folder it equals :func:`teacher.codes.vqvae_fingerprint` (what a prior's ``vqvae.json``
    records)."""
    folder = Path(folder)
    files = [folder / "config.json"] + sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files.append(index)
    h = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a model folder (no {path.name})")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def teacher_paths(teacher_dir: str | Path, level: int) -> tuple[Path, Path]:
    """``(prior folder, VQ-VAE folder)`` of ``level`` in a teacher folder, checked to exist.

    Raises :class:`ConfigError` naming the missing path, or when ``level`` is not an upsampler
    of the teacher's VQ-VAE.
    """
    root = Path(teacher_dir)
    vq_dir = root / VQVAE_FOLDER
    if not (vq_dir / "config.json").is_file():
        raise ConfigError(f"teacher VQ-VAE folder {vq_dir} is missing (no config.json)")
    vq_cfg = load_config(VQVAEConfig, str(vq_dir / "config.json"))
    if not 0 <= level < vq_cfg.levels - 1:
        raise ConfigError(
            f"--level must be an upsampler level (middle or bottom), not the top: level {level} "
            f"of a {vq_cfg.levels}-level VQ-VAE"
        )
    name = UPSAMPLER_FOLDERS[level] if vq_cfg.levels == 3 else f"level{level}"
    prior_dir = root / name
    if not (prior_dir / "config.json").is_file():
        raise ConfigError(
            f"teacher prior folder {prior_dir} for level {level} ({name}) is missing "
            "(no config.json): train it with `python -m teacher.train prior --level "
            f"{name} ... --output_dir ...` and copy its model/ folder there"
        )
    return prior_dir, vq_dir


def load_teacher(
    teacher_dir: str | Path, level: int, device: str | torch.device = "cpu"
) -> Teacher:
    """Load and freeze the level-``level`` upsampler and the VQ-VAE of ``teacher_dir``.

    Checks that the prior is that level's upsampler, matches the VQ-VAE's geometry and, when
    its ``vqvae.json`` names a fingerprint, was trained on this VQ-VAE's codes.
    """
    from teacher.labels import Vocab
    from teacher.prior.config import load_prior_config
    from teacher.prior.model import Prior
    from teacher.train import VQVAE_LINK_FILE, _check_prior_against_vqvae
    from teacher.vqvae import VQVAE

    prior_dir, vq_dir = teacher_paths(teacher_dir, level)
    prior_cfg = load_prior_config(str(prior_dir / "config.json"))
    if not prior_cfg.is_upsampler or prior_cfg.level != level:
        raise ConfigError(
            f"{prior_dir} holds a level-{prior_cfg.level} prior"
            f"{'' if prior_cfg.is_upsampler else ' (not an upsampler)'}, expected the "
            f"level-{level} upsampler"
        )
    vq_cfg = load_config(VQVAEConfig, str(vq_dir / "config.json"))
    _check_prior_against_vqvae(prior_cfg, vq_cfg)
    vq_fp = model_fingerprint(vq_dir)
    link = prior_dir / VQVAE_LINK_FILE
    if link.is_file():
        linked = read_json(link).get("fingerprint")
        if linked is not None and linked != vq_fp:
            raise ConfigError(
                f"{prior_dir} was trained on the codes of another VQ-VAE "
                f"({read_json(link).get('path')}, fingerprint {linked}); {vq_dir} is {vq_fp}"
            )
    else:
        log.warning("%s has no %s: cannot check it belongs to %s", prior_dir, link.name, vq_dir)
    if (prior_dir / VOCAB_FILE).is_file():
        vocab = Vocab.load(str(prior_dir))
    else:
        vocab = None
        log.warning("%s has no %s: the code cache's vocabulary is used", prior_dir, VOCAB_FILE)
    # loaded on the CPU, then moved: safetensors refuses device strings such as "cpu:0"
    prior = Prior.from_pretrained(prior_dir).to(device).eval().requires_grad_(False)
    vqvae = VQVAE.from_pretrained(vq_dir).to(device).eval().requires_grad_(False)
    return Teacher(
        prior=prior,
        vqvae=vqvae,
        vocab=vocab,
        root=Path(teacher_dir),
        prior_dir=prior_dir,
        vqvae_dir=vq_dir,
        fingerprint=model_fingerprint(prior_dir),
        vqvae_fingerprint=vq_fp,
    )


# ---------------------------------------------------------------------------------------------
# student config and EMA


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


class EMA:
    """Exponential moving average of a model's parameters (Polyak averaging), kept in a frozen
    copy of the model (``self.model``, the weights that are exported and validated).

    The decay at update n is ``min(decay, (1 + n) / (10 + n))`` (diffusers' ``EMAModel``), so a
    short run's average is not dominated by the random initialisation. Buffers are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """``ema ← d·ema + (1 − d)·param`` for every parameter of ``model``."""
        d = self.current_decay()
        self.num_updates += 1
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def load_folder(self, folder: Path, num_updates: int) -> None:
        """Restore the averaged weights from an exported student folder."""
        from teacher.io import load_tensors

        state = load_tensors(
            folder / "model.safetensors", device=next(self.model.parameters()).device
        )
        self.model.load_state_dict(state, strict=True)
        self.num_updates = num_updates


# ---------------------------------------------------------------------------------------------
# one step's terms


@dataclass
class StepOutput:
    """The loss of one micro-batch and what is logged about it.

    Attributes:
        loss: scalar ``Σ w·term`` with the step's weights (``ce`` decayed).
        terms: every computed term under its log key (scalars, with gradients).
        metrics: detached scalars: ``kl_per_token``, ``kl_per_token_t1``,
            ``teacher_nll_bits``, ``accuracy``, ``student_entropy``, ``kl_stage{k}`` (+ the
            Monte-Carlo parts for ``gaussian_loss="mc"``).
        codes: ``LongTensor[B, T]`` the student's tokens.
    """

    loss: Tensor
    terms: dict[str, Tensor]
    metrics: dict[str, Tensor]
    codes: Tensor


def _no_autocast(device: torch.device) -> Any:
    return torch.autocast(device_type=device.type, enabled=False)


def decode_straight_through(vqvae: Any, soft: Tensor, level: int) -> Tensor:
    """Audio ``Tensor[B, 1, T·hop]`` decoded in fp32 by the frozen level decoder from the
    straight-through one-hot ``soft [B, T, V]`` (forward: the codebook rows of the tokens;
    gradient: through the Gumbel-softmax relaxation into the student's logits)."""
    from distill.losses import straight_through_embeddings

    with _no_autocast(soft.device):
        z = straight_through_embeddings(soft, vqvae.codebook(level))  # [B, D, T]
        return vqvae.decode_latents(z.float(), level).float()


@torch.no_grad()
def decode_codes(vqvae: Any, codes: Tensor, level: int) -> Tensor:
    """Audio ``Tensor[B, 1, T·hop]`` (fp32, no grad) of ``LongTensor[B, T]`` codes."""
    with _no_autocast(codes.device):
        return vqvae.decode([codes], start_level=level).float()


def distill_step(
    student: torch.nn.Module,
    teacher: Teacher,
    batch: dict[str, Tensor],
    loss_cfg: Any,
    weights: dict[str, float],
    generator: torch.Generator,
    ce_target: str = "real",
    autocast: Any = None,
) -> StepOutput:
    """The loss terms of one batch (see the module docstring).

    Args:
        student: the student (possibly DDP-wrapped: it is called, never inspected).
        teacher: the frozen teacher.
        batch: a :class:`~teacher.codes.CodeDataset` batch: ``codes [B, T]``, ``upper``,
            ``labels``.
        loss_cfg: the student's :class:`~student.config.LossConfig` (settings, resolutions).
        weights: this step's weights (``ce`` already decayed).
        generator: draws the student's noise (and teacher samples for ``ce_target="teacher"``),
            on the batch's device.
        ce_target: warm-up targets, ``"real"`` (the window's codes) or ``"teacher"``.
        autocast: context manager factory for the teacher's forward (accelerate's autocast).
    """
    from distill.losses import (
        categorical_distill_terms,
        ce_warmup,
        gaussian_mc_terms,
        mrstft_loss,
        power_loss,
        reverse_kl,
        total_loss,
    )

    inner = getattr(student, "module", student)
    prior, vqvae, level = teacher.prior, teacher.vqvae, teacher.level
    codes, upper = batch["codes"], batch["upper"]
    labels = batch["labels"] if prior.cfg.labels is not None else None
    s_labels = labels if inner.cfg.labels is not None else None
    b, t = codes.shape
    noise = inner.make_noise(b, t, generator=generator, device=codes.device)
    sample = student(upper, s_labels, noise=noise, tau=loss_cfg.tau)

    # the teacher scores the student's own tokens, all positions in ONE pass (DESIGN §5)
    with torch.no_grad(), autocast() if autocast is not None else contextlib.nullcontext():
        t_logits = prior.logits(sample.codes, labels, upper).float()  # [B, T, V] at T=1
    t_scaled = t_logits / loss_cfg.teacher_temperature

    kl = categorical_distill_terms(sample, t_scaled)
    terms: dict[str, Tensor] = {"kl": kl["kl"], "kl_intermediate": kl["kl_intermediate"]}
    metrics: dict[str, Tensor] = {"kl_per_token": kl["kl"].detach()}
    if inner.cfg.family == "gaussian" and loss_cfg.gaussian_objective == "mc":
        mc = gaussian_mc_terms(sample, t_scaled, inner.codes_unit(), loss_cfg.mc_bandwidth)
        terms["kl"] = mc["kl"]
        metrics.update(
            mc_kl=mc["kl"].detach(),
            mc_cross_entropy=mc["cross_entropy"].detach(),
            mc_entropy=mc["entropy"].detach(),
        )

    if weights.get("mrstft") or weights.get("power"):
        audio = decode_straight_through(vqvae, sample.soft, level)
        target = decode_codes(vqvae, codes, level)
        if weights.get("mrstft"):
            terms["mrstft"] = mrstft_loss(
                audio,
                target,
                loss_cfg.stft_fft_sizes,
                loss_cfg.stft_hop_sizes,
                loss_cfg.stft_win_lengths,
            )
        if weights.get("power"):
            terms["power"] = power_loss(audio, target, loss_cfg.power_n_fft)

    if weights.get("ce"):
        if ce_target == "teacher":
            ce_codes = teacher_samples(teacher, labels, upper, t, loss_cfg, generator)
        else:
            ce_codes = codes
        # every stage is warmed towards the targets (no gradient crosses the argmax)
        terms["ce"] = torch.stack([ce_warmup(lg, ce_codes) for lg in sample.logits]).mean()

    loss = total_loss(terms, weights)
    with torch.no_grad():
        q_last = sample.logits[-1].float()
        log_q = F.log_softmax(q_last, dim=-1)
        metrics["kl_per_token_t1"] = reverse_kl(q_last, t_logits).mean()
        metrics["teacher_nll_bits"] = (
            F.cross_entropy(t_logits.reshape(-1, t_logits.shape[-1]), sample.codes.reshape(-1))
            / LN2
        )
        metrics["accuracy"] = (sample.codes == codes).float().mean()
        metrics["student_entropy"] = -(log_q.exp() * log_q).sum(-1).mean()
        for k, v in enumerate(kl["kl_stages"]):
            metrics[f"kl_stage{k}"] = v
    return StepOutput(loss=loss, terms=terms, metrics=metrics, codes=sample.codes)


def teacher_samples(
    teacher: Teacher,
    labels: Tensor | None,
    upper: Tensor,
    length: int,
    loss_cfg: Any,
    generator: torch.Generator,
) -> Tensor:
    """``LongTensor[B, length]`` codes sampled from the teacher (KV-cached, sequential) at its
    sampling temperature: the warm-up targets of ``ce_target="teacher"``."""
    from teacher.prior.sampling import sample_window

    cond = teacher.prior.condition(labels, upper)
    return sample_window(
        teacher.prior,
        upper.shape[0],
        cond,
        length,
        temperature=loss_cfg.teacher_temperature,
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------
# noise and validation


def step_generator(device: torch.device, seed: int, epoch: int, batch: int, rank: int) -> Any:
    """A generator on ``device`` seeded from (seed, epoch, batch of the epoch, rank): every
    micro-batch of every rank draws its own noise, and a resumed run draws the same noise as
    an unbroken one without saving any generator state."""
    key = f"{seed}|{epoch}|{batch}|{rank}".encode()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
    return g


def validation_batch(dataset: Any, n: int, device: torch.device) -> dict[str, Tensor]:
    """``n`` fixed windows (epoch 0, spread over the data) as one batch on ``device``."""
    count = min(n, len(dataset))
    idx = [round(i * (len(dataset) - 1) / max(1, count - 1)) for i in range(count)]
    batch = default_collate([dataset.item(i, 0) for i in idx])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def run_validation(
    model: torch.nn.Module,
    teacher: Teacher,
    batch: dict[str, Tensor],
    loss_cfg: Any,
    folder: Path,
    seed: int,
) -> dict[str, float]:
    """Sample the (EMA) student on the validation windows with fixed noise (so the files of
    successive validations are comparable), write ``{i}_student.wav`` and ``{i}_true.wav``
    (the decoded true codes) into ``folder`` and return ``val_*`` metrics."""
    from distill.losses import mrstft_loss, reverse_kl
    from teacher.audio import write_wav

    prior, vqvae, level = teacher.prior, teacher.vqvae, teacher.level
    codes, upper = batch["codes"], batch["upper"]
    labels = batch["labels"] if prior.cfg.labels is not None else None
    s_labels = labels if model.cfg.labels is not None else None
    b, t = codes.shape
    g = torch.Generator(device=codes.device).manual_seed(seed)
    noise = model.make_noise(b, t, generator=g, device=codes.device)
    sample = model(upper, s_labels, noise=noise)
    t_logits = prior.logits(sample.codes, labels, upper).float()
    audio = decode_codes(vqvae, sample.codes, level)
    target = decode_codes(vqvae, codes, level)
    folder.mkdir(parents=True, exist_ok=True)
    sr = vqvae.cfg.sample_rate
    for i in range(b):
        write_wav(str(folder / f"{i}_student.wav"), audio[i], sr)
        write_wav(str(folder / f"{i}_true.wav"), target[i], sr)
    q = sample.logits[-1].float()
    return {
        "val_kl_per_token": float(reverse_kl(q, t_logits / loss_cfg.teacher_temperature).mean()),
        "val_kl_per_token_t1": float(reverse_kl(q, t_logits).mean()),
        "val_teacher_nll_bits": float(
            F.cross_entropy(t_logits.reshape(-1, t_logits.shape[-1]), sample.codes.reshape(-1))
            / LN2
        ),
        "val_accuracy": float((sample.codes == codes).float().mean()),
        "val_mrstft": float(
            mrstft_loss(
                audio,
                target,
                loss_cfg.stft_fft_sizes,
                loss_cfg.stft_hop_sizes,
                loss_cfg.stft_win_lengths,
            )
        ),
    }


# ---------------------------------------------------------------------------------------------
# the trainer


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


def distill(
    teacher_dir: str | Path,
    data_cfg: Any,
    distill_cfg: DistillConfig,
    run_cfg: TrainConfig,
    student_cfg: StudentConfig | None = None,
) -> Path:
    """Distil the level-``distill_cfg.level`` upsampler of ``teacher_dir`` into a parallel
    student; returns the exported ``OUTPUT_DIR/student`` folder (EMA weights).

    ``student_cfg`` (default: :func:`student_config_from_preset`) must match the teacher
    (:meth:`StudentConfig.check_teacher`); its loss settings are replaced by ``distill_cfg``'s.
    The data are windows of the teacher VQ-VAE's code cache over ``data_cfg.root`` (built once
    by the main process; :func:`teacher.codes.build_code_cache`), ``n_ctx`` codes of the level
    with the upper codes of the same span and the label vectors. A resumed run (``run_cfg.
    resume_from_checkpoint``) takes the student config from its checkpoint and refuses another
    teacher. See the module docstring for the step, the metrics and the output folder.
    """
    from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed

    from distill.losses import warmup_weight
    from student import CategoricalIAF, GaussianIAF
    from teacher.codes import CodeDataset, build_code_cache
    from teacher.labels import LabelConfig, Vocab
    from teacher.prior.config import load_prior_config
    from teacher.train import _longest_file, _weights_digest

    # -- everything that can be wrong is checked before any work -----------------------------
    run_cfg.validate()
    dcfg = distill_cfg.validate()
    data_cfg.validate()
    level = dcfg.level
    prior_dir, vq_dir = teacher_paths(teacher_dir, level)
    prior_cfg = load_prior_config(str(prior_dir / "config.json"))
    vq_cfg = load_config(VQVAEConfig, str(vq_dir / "config.json"))
    out_dir = Path(run_cfg.output_dir)
    resume = resolve_resume(run_cfg.resume_from_checkpoint, out_dir / "checkpoints")
    if resume is not None:
        saved = resume / EXPORT_NAME
        student_cfg = load_student_config(str(saved / "config.json"))
        link = saved / TEACHER_LINK_FILE
        if link.is_file() and read_json(link)["fingerprint"] != model_fingerprint(prior_dir):
            raise ConfigError(
                f"{resume} distils another teacher ({read_json(link)['prior']}); "
                f"{prior_dir} has different weights"
            )
    elif student_cfg is None:
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
    n_ctx = dcfg.n_ctx or prior_cfg.n_ctx
    _check_window(student_cfg, prior_cfg, n_ctx)
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
    data_cfg = dataclasses.replace(
        data_cfg, sample_rate=vq_cfg.sample_rate, sample_length=window, labels=label_cfg
    ).validate()
    longest = _longest_file(data_cfg)
    if longest < window:
        raise ConfigError(
            f"the level-{level} window n_ctx·hop = {n_ctx}·{prior_cfg.hop_length} = {window} "
            f"samples ({window / data_cfg.sample_rate:.2f} s) is longer than every audio file "
            f"(longest {longest / data_cfg.sample_rate:.2f} s): lower --n_ctx"
        )

    # with kl_intermediate at 0 the earlier stages get no gradient (no gradient crosses the
    # argmax between stages): only then must DDP look for parameters without one
    unused = distill_cfg.weights.get("kl_intermediate", 0.0) == 0.0
    ddp = DistributedDataParallelKwargs(find_unused_parameters=unused)
    accelerator = make_accelerator(run_cfg, [ddp])
    main = accelerator.is_main_process
    device = accelerator.device
    set_seed(run_cfg.seed, device_specific=False)

    teacher = load_teacher(teacher_dir, level, device=device)
    with accelerator.main_process_first():
        cache = build_code_cache(vq_dir, data_cfg, dcfg.code_cache_dir, progress=main)
    vocab = teacher.vocab or cache.vocab
    dataset = CodeDataset(cache, level, n_ctx, label_cfg, seed=data_cfg.seed, vocab=vocab)

    # -- the student, optimiser, EMA ---------------------------------------------------------
    if student_cfg.family == "gaussian":
        codebook = teacher.vqvae.codebook(level)  # the code space of code_space="vqvae"
        model = GaussianIAF.from_teacher(teacher.prior, student_cfg, codebook=codebook)
    else:
        model = CategoricalIAF.from_teacher(teacher.prior, student_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    model, optimizer, loader, scheduler, generator = prepare_training(
        accelerator, model, dataset, run_cfg
    )
    unwrapped = accelerator.unwrap_model(model)
    ema = EMA(unwrapped, dcfg.ema_decay)
    pos = restore_checkpoint(accelerator, resume)
    if resume is not None:
        ema.load_folder(resume / EXPORT_NAME, num_updates=pos.step)
    if run_cfg.report_to != "none":
        accelerator.init_trackers(
            "distill", config={"lr": run_cfg.learning_rate, "level": level, **dcfg.loss_weights()}
        )

    level_name = UPSAMPLER_FOLDERS.get(level, f"level{level}") if vq_cfg.levels == 3 else level
    link = {
        "teacher_dir": str(Path(teacher_dir).resolve()),
        "prior": str(prior_dir.resolve()),
        "fingerprint": teacher.fingerprint,
        "vqvae": str(vq_dir.resolve()),
        "vqvae_fingerprint": teacher.vqvae_fingerprint,
        "level": level,
        "level_name": level_name,
        "teacher_temperature": dcfg.teacher_temperature,
        "n_ctx": n_ctx,
    }
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "distilling the level-%d (%s) upsampler of %s into a %s student: K=%d, %.2fM "
            "parameters; windows of %d codes (%.2f s), %d per epoch from %s",
            level,
            level_name,
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
                "windows_per_epoch": len(dataset),
                "student_parameters": n_params,
            },
        )

    metrics_log = MetricsLog(out_dir / "metrics.jsonl", main)
    val_batch = validation_batch(dataset, dcfg.num_validation_samples, device)

    def export(folder: Path) -> None:
        ema.model.save_pretrained(folder)
        atomic_write_json(folder / TEACHER_LINK_FILE, link)
        if teacher.vocab is not None:
            teacher.vocab.save(str(folder / VOCAB_FILE))

    def checkpoint_state() -> dict[str, Any]:
        per_rank = gather_object([(_weights_digest(unwrapped), _weights_digest(ema.model))])
        if any(tuple(d) != tuple(per_rank[0]) for d in per_rank):
            raise RuntimeError(f"student weights diverged across ranks: {per_rank}")
        return {
            **pos.as_state(),
            "world_size": accelerator.num_processes,
            "weight_digests": [d[0] for d in per_rank],
            "ema_digests": [d[1] for d in per_rank],
            "time": time.time(),
        }

    weights = dcfg.loss_weights()
    loss_cfg = student_cfg.loss
    model.train()
    with make_progress(main) as progress:
        start_step = pos.step
        task = progress.add_task(
            f"distill {level_name} ({student_cfg.family}, K={student_cfg.n_stages})",
            total=run_cfg.max_train_steps,
            completed=start_step,
            info="",
        )
        batches = resumable_batches(accelerator, loader, dataset, generator, run_cfg.seed, pos)
        while pos.step < run_cfg.max_train_steps:
            batch = next(batches)
            gen = step_generator(
                device, run_cfg.seed, pos.epoch, pos.epoch_batches, accelerator.process_index
            )
            ce_w = weights["ce"] * warmup_weight(pos.step, dcfg.ce_warmup_steps)
            step_weights = {**weights, "ce": ce_w}
            with accelerator.accumulate(model):
                out = distill_step(
                    model,
                    teacher,
                    batch,
                    loss_cfg,
                    step_weights,
                    gen,
                    ce_target=dcfg.ce_target,
                    autocast=accelerator.autocast,
                )
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), run_cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            ema.update(unwrapped)
            pos.step += 1
            step = pos.step
            loss = out.loss.detach().float().item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at step {step}")
            record: dict[str, float] = {"loss": loss, "lr": scheduler.get_last_lr()[0]}
            record["ce_weight"] = ce_w
            record.update({k: float(v.detach()) for k, v in out.terms.items()})
            record.update({k: float(v) for k, v in out.metrics.items()})
            terms = " ".join(f"{k} {record[k]:.3f}" for k in out.terms)
            progress.update(
                task,
                advance=1,
                info=(
                    f"loss {loss:.3f} ({terms}) KL/token {record['kl_per_token']:.3f} "
                    f"(T=1 {record['kl_per_token_t1']:.3f}) NLL {record['teacher_nll_bits']:.2f} "
                    f"bits acc {record['accuracy']:.2f} H {record['student_entropy']:.2f}"
                ),
            )
            validate_now = dcfg.validation_steps and step % dcfg.validation_steps == 0
            if validate_now and main:
                folder = out_dir / "validation" / f"step-{step}"
                record.update(
                    run_validation(ema.model, teacher, val_batch, loss_cfg, folder, run_cfg.seed)
                )
            if step % run_cfg.logging_steps == 0 or step == run_cfg.max_train_steps or validate_now:
                metrics_log.write(step, record)
                if run_cfg.report_to != "none":
                    accelerator.log(record, step=step)
            if step % run_cfg.checkpointing_steps == 0 or step == run_cfg.max_train_steps:
                save_checkpoint(
                    accelerator, run_cfg, step, export, checkpoint_state(), export_name=EXPORT_NAME
                )
    if pos.step == start_step:
        # nothing trained in this run (already at max_train_steps): export what was loaded
        if main:
            with atomic_dir(out_dir / EXPORT_NAME) as folder:
                export(folder)
        accelerator.wait_for_everyone()
    if run_cfg.report_to != "none":
        accelerator.end_training()
    return out_dir / EXPORT_NAME


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
    p.add_argument("--data_dir", required=True, help="folder of audio files (+ metadata)")
    p.add_argument("--metadata", default=None, help="metadata JSONL/CSV (default: in data_dir)")
    p.add_argument(
        "--preset",
        choices=sorted(STUDENT_PRESETS),
        default=d.preset,
        help="student size preset (stage networks, MR-STFT resolutions)",
    )
    p.add_argument("--num_stages", type=int, default=None, help="K passes (preset default)")
    p.add_argument("--n_ctx", type=int, default=None, help="codes per window (teacher's n_ctx)")
    for name in LOSS_NAMES:
        p.add_argument(
            f"--{name}_weight", type=float, default=DEFAULT_WEIGHTS[name], help=f"weight of {name}"
        )
    p.add_argument(
        "--ce_warmup_steps",
        type=int,
        default=d.ce_warmup_steps,
        help="the ce weight decays linearly to 0 over these steps",
    )
    p.add_argument(
        "--ce_target",
        choices=CE_TARGETS,
        default=d.ce_target,
        help="warm-up targets: the true codes or teacher samples (sequential, slow)",
    )
    p.add_argument(
        "--teacher_temperature",
        type=float,
        default=d.teacher_temperature,
        help="the teacher's sampling temperature (its logits are divided by it)",
    )
    p.add_argument("--tau", type=float, default=d.tau, help="straight-through Gumbel-softmax tau")
    p.add_argument(
        "--gaussian_loss",
        choices=GAUSSIAN_OBJECTIVES,
        default=d.gaussian_loss,
        help="Gaussian student's KL: calibrated closed form or Monte-Carlo",
    )
    p.add_argument("--mc_bandwidth", type=float, default=d.mc_bandwidth)
    p.add_argument("--ema_decay", type=float, default=d.ema_decay)
    p.add_argument(
        "--validation_steps",
        type=int,
        default=d.validation_steps,
        help="write decoded EMA-student samples every N steps (0: never)",
    )
    p.add_argument("--num_validation_samples", type=int, default=d.num_validation_samples)
    p.add_argument("--code_cache_dir", default=None, help="code cache folder (default ~/.cache)")
    p.add_argument(
        "--data_cache",
        choices=("decoded", "none"),
        default="decoded",
        help="decode each audio file once into a memory-mapped cache or seek every crop",
    )
    p.add_argument("--cache_dir", default=None, help="decoded audio cache folder")
    add_train_args(p)


def distill_configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`distill` from parsed arguments (the level name is resolved
    against the teacher's VQ-VAE, whose folder must exist)."""
    from teacher.data import DataConfig

    vq_dir = Path(args.teacher) / VQVAE_FOLDER
    if not (vq_dir / "config.json").is_file():
        raise ConfigError(f"teacher VQ-VAE folder {vq_dir} is missing (no config.json)")
    vq_cfg = load_config(VQVAEConfig, str(vq_dir / "config.json"))
    dcfg = DistillConfig(
        level=level_index(args.level, vq_cfg.levels),
        family=args.student,
        preset=args.preset,
        n_stages=args.num_stages,
        weights={name: getattr(args, f"{name}_weight") for name in LOSS_NAMES},
        ce_warmup_steps=args.ce_warmup_steps,
        ce_target=args.ce_target,
        teacher_temperature=args.teacher_temperature,
        tau=args.tau,
        gaussian_loss=args.gaussian_loss,
        mc_bandwidth=args.mc_bandwidth,
        ema_decay=args.ema_decay,
        n_ctx=args.n_ctx,
        validation_steps=args.validation_steps,
        num_validation_samples=args.num_validation_samples,
        code_cache_dir=args.code_cache_dir,
    )
    data_cfg = DataConfig(
        root=args.data_dir,
        metadata=args.metadata,
        sample_rate=vq_cfg.sample_rate,
        aug_blend=False,
        cache=args.data_cache,
        cache_dir=args.cache_dir,
        seed=args.seed,
    )
    return dict(
        teacher_dir=args.teacher,
        data_cfg=data_cfg,
        distill_cfg=dcfg,
        run_cfg=train_config_from_args(args),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill.train",
        description="Distil a teacher upsampler into a parallel student (DESIGN §5).",
    )
    add_distill_args(parser)
    return parser


def run(args: argparse.Namespace) -> Path:
    """Distil from parsed arguments (shared by the console script); returns the student folder."""
    return distill(**distill_configs_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    from fastjukebox.cli import setup_logging
    from teacher.data import DataError

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    log.info("student written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
