"""Distillation losses of the parallel students (DESIGN §5).

Every loss computes in fp32 with autocast disabled (softmax, KL and STFT lose too much in bf16).
Terms are returned under their log keys and combined by :func:`total_loss` with the named
weights of :class:`~student.config.LossConfig` (DAC-style ``lambdas``):

* ``"kl"`` — reverse KL per token ``Σ_v q_t(v) [log q_t(v) − log p_T(v | x̂_<t)]`` of the final
  stage against the teacher, scored in ONE teacher-forced pass (under ``no_grad``, at the
  teacher's sampling temperature) on the student's own tokens. Closed form for the categorical
  student (q_t is exact given the noise); its sum over t bounds the sequence KL from above.
  Gradients flow through q only — no REINFORCE.
* ``"kl_intermediate"`` — the same for the earlier stages, against the SAME teacher pass (the
  final stage's tokens): no gradient crosses the argmax between stages, so without it the early
  stages would not learn (DESIGN §5, weight 0.1).
* ``"tv"`` — total variation distance per token ``½ Σ_v |q_t(v) − p_T(v | x̂_<t)| = 1 − Σ_v
  min(q_t, p_T)`` of the final stage against the same teacher pass: one minus the probability
  that a speculative draft drawn from q_t is accepted (Leviathan et al. 2023), the objective a
  draft model is judged by (DistillSpec, Zhou et al. 2024, tunes drafts on it). Off by default.
* ``"mrstft"`` — multi-resolution STFT loss (auraloss) between audio decoded by the frozen
  VQ-VAE decoder from the student's straight-through code embeddings and the decoded ground
  truth: KL alone gives quiet, whispery audio (Parallel WaveNet §3.2).
* ``"power"`` — Parallel WaveNet's power loss (average power per frequency band).
* ``"ce"`` — warm-up cross-entropy on real or teacher-sampled codes, decayed to 0.

A typical categorical step::

    s = student(upper, labels, tau=cfg.loss.tau)
    with torch.no_grad():
        p = teacher.logits(s.codes, labels, upper) / cfg.loss.teacher_temperature
    terms = categorical_distill_terms(s, p)
    audio = vqvae.decode_latents(straight_through_embeddings(s.soft, vqvae.codebook(level)), level)
    terms["mrstft"] = mrstft_loss(audio, target_audio)
    loss = total_loss(terms, weights)
"""

from __future__ import annotations

import functools
import math

import auraloss
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from student.base import StudentSample, autocast_off

# Jukebox's multispectral resolutions (n_fft, hop, window), also auraloss's defaults
JUKEBOX_FFT_SIZES = (2048, 1024, 512)
JUKEBOX_HOP_SIZES = (240, 120, 50)
JUKEBOX_WIN_LENGTHS = (1200, 600, 240)


def fp32(fn):
    """Run ``fn`` with autocast disabled (CPU and CUDA)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with autocast_off():
            return fn(*args, **kwargs)

    return wrapper


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``Tensor[B, T]`` over the positions where ``mask [B, T]`` is true."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# KL terms


def _same_shape(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """A ValueError unless the student's and the teacher's logits have one shape."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )


@fp32
def reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Per-token reverse KL ``KL(q_t ‖ p_t) = Σ_v q (log q − log p)`` -> ``Tensor[B, T]`` nats.

    Args:
        student_logits: ``Tensor[B, T, V]``; ``q = softmax(student_logits)``.
        teacher_logits: ``Tensor[B, T, V]`` already divided by the teacher's sampling
            temperature by the caller; detached here (gradients flow through q only).
        mask: optional ``Tensor[B, T]`` (bool or 0/1); masked-out positions give 0.
    """
    _same_shape(student_logits, teacher_logits)
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    if mask is not None:
        kl = kl * mask.to(kl.dtype)
    return kl


@fp32
def total_variation(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Per-token total variation distance ``½ Σ_v |q_t(v) − p_t(v)| = 1 − Σ_v min(q_t, p_t)``
    -> ``Tensor[B, T]`` in [0, 1]: one minus the expected acceptance of a draft drawn from q_t
    when the teacher draws from p_t (speculative sampling's ``min(1, p/q)`` rule).

    Args:
        student_logits: ``Tensor[B, T, V]``; ``q = softmax(student_logits)``.
        teacher_logits: ``Tensor[B, T, V]`` already divided by the teacher's sampling
            temperature; detached here (gradients flow through q only).
        mask: optional ``Tensor[B, T]``; masked-out positions give 0.
    """
    _same_shape(student_logits, teacher_logits)
    q = torch.softmax(student_logits.float(), dim=-1)
    p = torch.softmax(teacher_logits.detach().float(), dim=-1)
    tv = 1.0 - torch.minimum(q, p).sum(dim=-1)
    if mask is not None:
        tv = tv * mask.to(tv.dtype)
    return tv


def categorical_distill_terms(
    sample: StudentSample,
    teacher_logits: Tensor,
    intermediate_weight: float = 0.1,
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """The KL terms of one student run against ONE teacher pass on ``sample.codes``.

    Works for both families: for the Gaussian student ``sample.logits`` are the calibrated
    soft-assignment logits, and this is DESIGN §5's calibrated reverse KL.

    Returns:
        ``"kl"``: mean final-stage reverse KL per token (the logged KL estimate, nats/token);
        ``"kl_intermediate"``: mean over the earlier stages of their mean KL against the same
        teacher logits (0 when K = 1); ``"tv"``: the final stage's mean total variation
        distance to the teacher per token (:func:`total_variation`); ``"kl_stages"``:
        ``Tensor[K]`` per-stage KL, detached,
        for logging; ``"distill"``: ``kl + intermediate_weight · kl_intermediate`` for callers
        that do not use :func:`total_loss` (whose weights dict applies its own
        ``kl_intermediate`` weight to the unweighted term).
    """
    per_stage = [_masked_mean(reverse_kl(lg, teacher_logits), mask) for lg in sample.logits]
    kl = per_stage[-1]
    inter = torch.stack(per_stage[:-1]).mean() if len(per_stage) > 1 else kl.new_zeros(())
    return {
        "kl": kl,
        "kl_intermediate": inter,
        "tv": _masked_mean(total_variation(sample.logits[-1], teacher_logits), mask),
        "kl_stages": torch.stack([x.detach() for x in per_stage]),
        "distill": kl + intermediate_weight * inter,
    }


@fp32
def gaussian_mc_terms(
    sample: StudentSample,
    teacher_logits: Tensor,
    codebook: Tensor,
    bandwidth: float = 0.1,
    mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Parallel-WaveNet-style Monte-Carlo KL of the Gaussian student (the option; DESIGN §5
    reports it fails at every bandwidth — kept for the comparison).

    The discrete teacher is lifted to a density in the code space, a Gaussian mixture around
    the unit-norm codes ``p(v) = Σ_k p_T(k | x̂_<t) N(v; e_k, s² I)`` (s = ``bandwidth``), and
    the per-token KL is estimated on the student's own pre-snap vector ``v_t`` as the
    cross-entropy ``−log p(v_t)`` minus the exact entropy of the student's Gaussian
    ``H = Σ_d log σ_tot,d + D/2 · log(2πe)`` (the log-det term). Differentiable through v
    (reparameterised) and log σ.

    Args:
        sample: a :class:`~student.gaussian.GaussianIAF` run (``extras`` v, log_sigma).
        teacher_logits: ``Tensor[B, T, V]`` on ``sample.codes``, temperature applied; detached.
        codebook: ``Tensor[V, D]`` the student's unit-norm codes (``student.codes_unit()``).
        bandwidth: s.

    Returns ``"kl"`` (mean per token, nats), ``"cross_entropy"`` and ``"entropy"``.
    """
    v = sample.extras["v"].float()
    log_sigma = sample.extras["log_sigma"].float()
    e = codebook.detach().float()
    d = v.shape[-1]
    log_p_code = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    sq = (v * v).sum(-1, keepdim=True) - 2.0 * (v @ e.T) + (e * e).sum(-1)  # [B, T, V]
    log_mix = torch.logsumexp(log_p_code - sq / (2.0 * bandwidth**2), dim=-1)
    log_mix = log_mix - 0.5 * d * math.log(2.0 * math.pi * bandwidth**2)
    cross_entropy = -log_mix
    entropy = log_sigma.sum(-1) + 0.5 * d * math.log(2.0 * math.pi * math.e)
    return {
        "kl": _masked_mean(cross_entropy - entropy, mask),
        "cross_entropy": _masked_mean(cross_entropy, mask),
        "entropy": _masked_mean(entropy, mask),
    }


# ---------------------------------------------------------------------------------------------
# audio terms


@functools.lru_cache(maxsize=16)
def _mrstft_module(
    fft_sizes: tuple[int, ...], hop_sizes: tuple[int, ...], win_lengths: tuple[int, ...]
) -> auraloss.freq.MultiResolutionSTFTLoss:
    # auraloss keeps its windows as plain attributes and moves them to the input's device on
    # each call, so one cached module per resolution set serves every device
    return auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=list(fft_sizes), hop_sizes=list(hop_sizes), win_lengths=list(win_lengths)
    )


@fp32
def mrstft_loss(
    student_audio: Tensor,
    target_audio: Tensor,
    fft_sizes: tuple[int, ...] = JUKEBOX_FFT_SIZES,
    hop_sizes: tuple[int, ...] = JUKEBOX_HOP_SIZES,
    win_lengths: tuple[int, ...] = JUKEBOX_WIN_LENGTHS,
) -> Tensor:
    """Multi-resolution STFT loss (spectral convergence + log magnitude, auraloss 0.4.0,
    Yamamoto et al. 2020) between ``Tensor[B, C, T]`` signals -> scalar.

    Defaults are Jukebox's three resolutions (n_fft 2048/1024/512, hop 240/120/50, window
    1200/600/240); pass smaller ones for tiny sample rates (each n_fft must be < T)."""
    if student_audio.shape != target_audio.shape or student_audio.dim() != 3:
        raise ValueError(
            f"expected two Tensor[B, C, T] of one shape, got {tuple(student_audio.shape)} and "
            f"{tuple(target_audio.shape)}"
        )
    module = _mrstft_module(tuple(fft_sizes), tuple(hop_sizes), tuple(win_lengths))
    return module(student_audio.float(), target_audio.float())


@fp32
def power_loss(
    student_audio: Tensor, target_audio: Tensor, n_fft: int = 1024, hop: int | None = None
) -> Tensor:
    """Parallel WaveNet's power loss (van den Oord et al. 2018, §3.2):
    ``‖φ(x̂) − φ(x)‖²`` with ``φ(x) = mean over frames of |STFT(x)|²`` (average power per
    frequency band), averaged over bands and batch. ``Tensor[B, C, T]`` × 2 -> scalar."""
    hop = hop or n_fft // 4
    window = torch.hann_window(n_fft, device=student_audio.device)

    def band_power(x: Tensor) -> Tensor:
        flat = rearrange(x.float(), "b c t -> (b c) t")
        spec = torch.stft(flat, n_fft, hop, n_fft, window, return_complex=True)
        return spec.abs().pow(2).mean(dim=-1)  # [(B C), F]

    return F.mse_loss(band_power(student_audio), band_power(target_audio))


def straight_through_embeddings(soft: Tensor, codebook: Tensor) -> Tensor:
    """Straight-through code vectors for ``VQVAE.decode_latents``:
    ``soft Tensor[B, T, V]`` (forward exactly one-hot) × ``codebook Tensor[V, D]`` ->
    ``Tensor[B, D, T]``. Equals the codebook rows of the tokens in the forward pass; the
    gradient reaches the student's logits through the soft part of ``soft``. The codebook is
    the frozen VQ-VAE's (detached)."""
    return einsum(soft.float(), codebook.detach().float(), "b t v, v d -> b d t")


# ---------------------------------------------------------------------------------------------
# warm-up and combination


@fp32
def ce_warmup(logits: Tensor, target_codes: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy (nats/token) of ``Tensor[B, T, V]`` logits against real or
    teacher-sampled ``LongTensor[B, T]`` codes — the warm start, decayed by
    :func:`warmup_weight`. Apply it to every stage's logits if all should be warmed."""
    ce = F.cross_entropy(
        rearrange(logits.float(), "b t v -> b v t"), target_codes, reduction="none"
    )
    return _masked_mean(ce, mask)


def warmup_weight(step: int, warmup_steps: int) -> float:
    """Linear decay from 1 at step 0 to 0 at ``warmup_steps`` (0 steps: always 0)."""
    if warmup_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - step / warmup_steps)


def total_loss(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``Σ_k weights[k] · terms[k]`` over the weighted keys; zero weights are skipped (their
    terms need not exist). A weighted key missing from ``terms`` is an error."""
    missing = [k for k, w in weights.items() if w and k not in terms]
    if missing:
        raise KeyError(f"loss terms {missing} have non-zero weights but were not computed")
    parts = [w * terms[k] for k, w in weights.items() if w]
    if not parts:
        raise ValueError("every loss weight is zero")
    return torch.stack([p.float() for p in parts]).sum()


__all__ = [
    "JUKEBOX_FFT_SIZES",
    "JUKEBOX_HOP_SIZES",
    "JUKEBOX_WIN_LENGTHS",
    "categorical_distill_terms",
    "ce_warmup",
    "gaussian_mc_terms",
    "mrstft_loss",
    "power_loss",
    "reverse_kl",
    "straight_through_embeddings",
    "total_loss",
    "total_variation",
    "warmup_weight",
]
