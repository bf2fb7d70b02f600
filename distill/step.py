"""One distillation step and its validation (DESIGN §5).

Per optimiser step (:func:`distill_step`):

1. the student samples every code of a window in K passes from fresh noise
   (``Student.forward``), conditioned on the true upper codes and labels of a data window;
2. the frozen teacher prior of that level scores the student's OWN tokens in one
   teacher-forced pass under ``no_grad``; its logits are divided by ``teacher_temperature``
   (its sampling temperature, 0.99 as in Jukebox);
3. the loss terms (their names are the log keys, DAC-style ``lambdas``): ``kl`` the per-token
   reverse KL of the final stage (closed form for the categorical student; for the Gaussian one
   the calibrated soft-assignment KL, or the Monte-Carlo cross-entropy minus the log-det entropy
   with ``gaussian_loss="mc"``), ``kl_intermediate`` the same for the earlier stages against
   the same teacher pass, ``tv`` the final stage's total variation distance to the teacher
   (1 − a speculative draft's expected acceptance; off by default), ``mrstft`` the
   multi-resolution STFT loss between the audio decoded by
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
``accuracy`` (tokens equal to the true codes), ``student_entropy`` (nats/token of q),
``draft_acceptance`` (``1 − tv``: the expected acceptance of a speculative draft drawn from the
final stage, on the student's own tokens, at ``teacher_temperature``) and the
per-stage KL ``kl_stage{k}``; they are the main process's last micro-batch (not averaged over
ranks). Every ``validation_steps`` the EMA student is scored on fixed windows (``val_*``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

from distill.teacher import Teacher

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# one step's terms


@dataclass
class DistillOutput:
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
) -> DistillOutput:
    """The loss terms of one batch (see the module docstring).

    Args:
        student: the student (possibly DDP-wrapped: it is called, never inspected).
        teacher: the frozen teacher.
        batch: a :class:`~teacher.data.codes.CodeDataset` batch: ``codes [B, T]``, ``upper``,
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
    if weights.get("tv"):
        terms["tv"] = kl["tv"]
    metrics: dict[str, Tensor] = {
        "kl_per_token": kl["kl"].detach(),
        # the expected acceptance of a speculative draft drawn from the final stage here
        "draft_acceptance": 1.0 - kl["tv"].detach(),
    }
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
    return DistillOutput(loss=loss, terms=terms, metrics=metrics, codes=sample.codes)


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
    from teacher.generate.sampler import ExactSampler

    sampler = ExactSampler(teacher.prior, temperature=loss_cfg.teacher_temperature)
    empty = upper.new_zeros(upper.shape[0], 0)
    return sampler.sample_window(length, empty, labels, upper, generator=generator)


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
    from teacher.data.audio import write_wav

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


__all__ = [
    "DistillOutput",
    "decode_codes",
    "decode_straight_through",
    "distill_step",
    "run_validation",
    "step_generator",
    "teacher_samples",
    "validation_batch",
]
