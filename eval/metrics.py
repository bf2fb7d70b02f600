"""Evaluation metrics of the teacher, the students and the decoded audio (DESIGN §5-§6).

Every metric computes in fp32 (fp64 for the Fréchet distance) with autocast disabled, on the
device of its inputs, and needs no download. The reference comes first, the estimate second.
Per-item metrics return ``Tensor[B]``; aggregate ones return Python numbers.

Audio (``Tensor[B, C, T]`` or ``Tensor[B, T]``; multi-channel audio is averaged to mono for the
spectral metrics, as Jukebox does):

* :func:`sc_db` — Jukebox's spectral convergence in dB, ``20·log10(SC)`` (lower is better).
* :func:`mrstft_distance` — auraloss's multi-resolution STFT loss (spectral convergence + log
  magnitude, Yamamoto et al. 2020) per item; 0 for identical signals.
* :func:`mel_l1` — mean absolute difference of natural-log mel power spectrograms.
* :func:`si_sdr` — scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019).

Codes and distributions (``V`` = vocabulary, the level's ``l_bins``):

* :func:`teacher_nll_bits` — mean teacher NLL in bits/token of any codes, one teacher-forced pass.
* :func:`kl_per_token` / :func:`entropy_per_token` — the student's closed-form reverse KL to the
  teacher and its own entropy, nats/token.
* :func:`codebook_usage` — codes used, fraction of the codebook, perplexity of the histogram.
* :func:`token_accuracy` — agreement with the true lower codes when upsampling true upper codes.

Embedding distance: :func:`frechet_distance` on :func:`encoder_features` — the teacher VQ-VAE
encoder's pre-quantisation latents pooled to clip vectors. Report it as "Fréchet distance on
VQ-VAE encoder features (FD-VQ)", never as FAD: FAD means a VGGish embedding, and FAD packages
download their networks at run time (DESIGN §6). Use :func:`fd_vq` for both steps at once.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from distill.losses import JUKEBOX_FFT_SIZES, JUKEBOX_HOP_SIZES, JUKEBOX_WIN_LENGTHS, reverse_kl
from distill.losses import mrstft_loss as _mrstft_loss
from student.base import autocast_off
from teacher.vqvae import losses as teacher_losses

log = logging.getLogger(__name__)

LN2 = math.log(2.0)

# (n_fft, hop, window) of Jukebox's multispectral loss, tuned for 44.1 kHz (auraloss's defaults)
JUKEBOX_RESOLUTIONS: tuple[tuple[int, int, int], ...] = tuple(
    zip(JUKEBOX_FFT_SIZES, JUKEBOX_HOP_SIZES, JUKEBOX_WIN_LENGTHS)
)
RESOLUTIONS_SAMPLE_RATE = 44100
# the shortest signal any STFT metric here accepts
MIN_STFT_SAMPLES = 16

FD_VQ_NAME = "FD-VQ (Fréchet distance on VQ-VAE encoder features)"


def _pair(ref: Tensor, est: Tensor) -> None:
    if ref.shape != est.shape:
        raise ValueError(
            f"reference {tuple(ref.shape)} and estimate {tuple(est.shape)} differ in shape"
        )
    if ref.dim() not in (2, 3):
        raise ValueError(f"expected audio Tensor[B, C, T] or Tensor[B, T], got {tuple(ref.shape)}")


def _as_bct(x: Tensor) -> Tensor:
    """``Tensor[B, T]`` or ``Tensor[B, C, T]`` -> fp32 ``Tensor[B, C, T]``."""
    return (x.unsqueeze(1) if x.dim() == 2 else x).float()


# ---------------------------------------------------------------------------------------------
# audio


def sc_db(ref: Tensor, est: Tensor, epsilon: float = 2e-3, floor: float = 1e-10) -> Tensor:
    """Spectral convergence in decibels, ``20·log10(SC)``, per item: ``Tensor[B]``.

    ``SC = ‖|S(ref)| − |S(est)|‖_F / ‖|S(ref)|‖_F`` with Jukebox's STFT (n_fft 2048, hop 256,
    window 1536; :func:`teacher.vqvae.losses.spectral_convergence`). SC is an amplitude ratio, hence
    20·log10 (the paper's table: bottom level about −21 to −23 dB; lower is better). A scaled
    copy ``a·ref`` scores ``20·log10|1 − a|``. Identical signals, and references whose spectrum
    norm is at most ``epsilon`` (near silence, which Jukebox masks to SC = 0), score the floor
    ``20·log10(floor)`` = −200 dB: drop silent references before averaging.

    Args:
        ref, est: audio ``Tensor[B, C, T]`` or ``Tensor[B, T]`` of one shape.
    """
    _pair(ref, est)
    with autocast_off():
        sc = teacher_losses.spectral_convergence(ref.float(), est.float(), epsilon)
        return teacher_losses.sc_db(sc, floor)


def scaled_resolutions(
    sample_rate: int,
    resolutions: Sequence[tuple[int, int, int]] = JUKEBOX_RESOLUTIONS,
    reference_rate: int = RESOLUTIONS_SAMPLE_RATE,
) -> tuple[tuple[int, int, int], ...]:
    """STFT resolutions ``(n_fft, hop, window)`` made for ``reference_rate`` rescaled so each
    window and hop spans the same duration at ``sample_rate`` (n_fft rounded to a power of two
    at least as long as the window). At 8 kHz Jukebox's three become (512, 44, 218),
    (256, 22, 109), (128, 9, 44)."""
    f = sample_rate / reference_rate
    out = []
    for n_fft, hop, win in resolutions:
        win_s = max(2, round(win * f))
        n_fft_s = max(MIN_STFT_SAMPLES, 2 ** round(math.log2(max(n_fft * f, 1.0))), win_s)
        n_fft_s = 2 ** math.ceil(math.log2(n_fft_s))
        out.append((n_fft_s, max(1, round(hop * f)), win_s))
    return tuple(out)


def _fit_resolutions(
    resolutions: Sequence[tuple[int, int, int]], n_samples: int
) -> tuple[tuple[int, int, int], ...]:
    """Drop resolutions whose n_fft exceeds the signal; if none is left, one resolution with
    the longest power-of-two FFT that fits (hop n_fft/4, window n_fft)."""
    fit = tuple(r for r in resolutions if r[0] <= n_samples)
    if fit:
        if len(fit) < len(resolutions):
            log.debug("mrstft_distance: %d samples, kept resolutions %s", n_samples, fit)
        return fit
    if n_samples < MIN_STFT_SAMPLES:
        raise ValueError(f"signals of {n_samples} samples are too short for an STFT metric")
    n_fft = 2 ** int(math.log2(n_samples))
    log.debug("mrstft_distance: %d samples, fell back to n_fft %d", n_samples, n_fft)
    return ((n_fft, n_fft // 4, n_fft),)


def mrstft_distance(
    ref: Tensor,
    est: Tensor,
    sample_rate: int | None = None,
    resolutions: Sequence[tuple[int, int, int]] = JUKEBOX_RESOLUTIONS,
) -> Tensor:
    """Multi-resolution STFT distance per item (auraloss ``MultiResolutionSTFTLoss``: spectral
    convergence + L1 of log magnitudes, averaged over resolutions): ``Tensor[B]``, 0 for
    identical signals. The same loss :func:`distill.losses.mrstft_loss` trains students with.

    Args:
        ref, est: audio ``Tensor[B, C, T]`` or ``Tensor[B, T]`` of one shape.
        sample_rate: when given, ``resolutions`` (made for 44.1 kHz) are rescaled to the same
            durations at this rate (:func:`scaled_resolutions`); ``None`` uses them as they are.
        resolutions: ``(n_fft, hop, window)`` triples; default Jukebox's three.

    Short signals: resolutions with ``n_fft > T`` are dropped; when none fits, one resolution
    with the longest power-of-two FFT ``<= T`` is used (T must be at least 16). Each item is
    scored on its own because auraloss pools spectral convergence over the batch.
    """
    _pair(ref, est)
    if sample_rate is not None:
        resolutions = scaled_resolutions(sample_rate, resolutions)
    ffts, hops, wins = zip(*_fit_resolutions(resolutions, ref.shape[-1]))
    ref3, est3 = _as_bct(ref), _as_bct(est)
    # auraloss's SC is ‖target − input‖/‖target‖: the reference is its target
    return torch.stack(
        [
            _mrstft_loss(est3[b : b + 1], ref3[b : b + 1], ffts, hops, wins)
            for b in range(ref3.shape[0])
        ]
    )


@functools.lru_cache(maxsize=16)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """librosa's Slaney mel filterbank ``Tensor[n_mels, n_fft // 2 + 1]`` fp32 on the CPU,
    built once per (sample rate, n_fft, n_mels)."""
    import librosa  # heavy import, only needed here

    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    return torch.from_numpy(fb).float()


def log_mel(
    x: Tensor,
    sample_rate: int,
    n_mels: int = 64,
    n_fft: int = 1024,
    hop: int = 256,
    eps: float = 1e-5,
) -> Tensor:
    """Natural-log mel power spectrogram ``log(max(M·|STFT|², eps))``: audio ``Tensor[B, C, T]``
    or ``[B, T]`` -> ``Tensor[B, n_mels, N]`` fp32 (Hann window of n_fft, centred frames)."""
    with autocast_off():
        mag = teacher_losses.stft_magnitude(x.float(), n_fft, hop, n_fft)  # [B, F, N]
        fb = _mel_filterbank(sample_rate, n_fft, n_mels).to(mag.device)
        mel = torch.einsum("mf,bfn->bmn", fb, mag.pow(2))
        return mel.clamp_min(eps).log()


def mel_l1(ref: Tensor, est: Tensor, sample_rate: int, **mel: Any) -> Tensor:
    """Mean absolute difference of natural-log mel power spectrograms (:func:`log_mel`) per
    item: ``Tensor[B]``. 0 for identical signals; ``2·ln a`` for ``a·ref`` where the mel power
    is above ``eps`` (power floor, about −50 dB for full-scale audio).

    Args:
        ref, est: audio ``Tensor[B, C, T]`` or ``Tensor[B, T]`` of one shape, at ``sample_rate``.
        mel: :func:`log_mel`'s settings (``n_mels``, ``n_fft``, ``hop``, ``eps``), for both.
    """
    _pair(ref, est)
    a = log_mel(ref, sample_rate, **mel)
    b = log_mel(est, sample_rate, **mel)
    return (a - b).abs().mean(dim=(1, 2))


def si_sdr(ref: Tensor, est: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB per item (Le Roux et al. 2019, "SDR – half-baked or well
    done?"): ``Tensor[B]``.

    Both signals are made zero-mean (per channel); the estimate is projected on the reference,
    ``s = (⟨est, ref⟩ / ‖ref‖²)·ref``, and ``SI-SDR = 10·log10(‖s‖² / ‖est − s‖²)``. Invariant
    to scaling the estimate; ``ref + noise`` scores the SNR; identical signals score very high
    (bounded by ``eps``, about 80 dB above the signal energy at the default). Channels are
    pooled into one item.

    Args:
        ref, est: audio ``Tensor[B, C, T]`` or ``Tensor[B, T]`` of one shape.
    """
    _pair(ref, est)
    with autocast_off():
        r = _as_bct(ref)
        e = _as_bct(est)
        r = rearrange(r - r.mean(dim=-1, keepdim=True), "b c t -> b (c t)")
        e = rearrange(e - e.mean(dim=-1, keepdim=True), "b c t -> b (c t)")
        alpha = (e * r).sum(-1, keepdim=True) / ((r * r).sum(-1, keepdim=True) + eps)
        target = alpha * r
        noise = e - target
        return 10.0 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


# ---------------------------------------------------------------------------------------------
# codes and distributions


@torch.no_grad()
def teacher_nll_bits(
    prior: torch.nn.Module,
    codes: Tensor,
    labels: Tensor | None = None,
    upper: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Mean teacher NLL of ``codes`` in bits/token, ``−mean_t log2 p_T(z_t | z_<t, ·)``, per item:
    ``Tensor[B]``, from ONE teacher-forced pass (:meth:`teacher.prior.model.Prior.logits`).

    Score any codes: real (encoded) ones, the teacher's own samples, a student's. ``temperature``
    divides the logits first (score at the sampling temperature the samples were drawn at; 1 for
    the model's own likelihood). Put the prior in ``eval()`` mode first, or dropout adds noise.

    Args:
        prior: a :class:`~teacher.prior.model.Prior`.
        codes: ``LongTensor[B, T]``, ``T <= n_ctx``.
        labels: ``LongTensor[B, label_size]`` for labelled priors.
        upper: ``LongTensor[B, T_up]`` upper-level codes for upsamplers.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if prior.training:
        log.warning("teacher_nll_bits: the prior is in training mode (dropout is active)")
    with autocast_off():
        logits = prior.logits(codes, labels, upper).float() / temperature  # [B, T, V]
        nll = F.cross_entropy(rearrange(logits, "b t v -> b v t"), codes, reduction="none")
        return nll.mean(dim=1) / LN2


def _reduce_tokens(x: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """``Tensor[B, T]`` -> ``Tensor[B]`` masked mean over T (``"mean"``) or as is (``"none"``)."""
    if mask is not None:
        x = x * mask.to(x.dtype)
    if reduction == "none":
        return x
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if mask is None:
        return x.mean(dim=1)
    return x.sum(dim=1) / mask.to(x.dtype).sum(dim=1).clamp_min(1.0)


def kl_per_token(
    student_logits: Tensor,
    teacher_logits: Tensor,
    teacher_temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Estimated reverse KL per token ``KL(q_t ‖ p_t)`` in nats (:func:`distill.losses.reverse_kl`):
    ``Tensor[B]`` mean over (unmasked) positions, or ``Tensor[B, T]`` with ``reduction="none"``.

    For the categorical student ``q_t`` is exact given the noise, so this is closed form and its
    sum over t bounds the sequence KL from above (DESIGN §5). Track it at temperature 1.

    Args:
        student_logits: ``Tensor[B, T, V]`` (e.g. ``StudentSample.logits[-1]``).
        teacher_logits: ``Tensor[B, T, V]`` from one teacher-forced pass on the student's codes;
            divided by ``teacher_temperature`` here.
        mask: optional ``Tensor[B, T]`` of positions to count.
    """
    if teacher_temperature <= 0:
        raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}")
    with torch.no_grad():
        kl = reverse_kl(student_logits, teacher_logits.float() / teacher_temperature)
    return _reduce_tokens(kl, mask, reduction)


def entropy_per_token(
    logits: Tensor, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Entropy ``−Σ_v q log q`` of ``softmax(logits)`` in nats: ``Tensor[B, T, V]`` ->
    ``Tensor[B]`` mean over (unmasked) positions, or ``Tensor[B, T]`` with ``reduction="none"``.
    ``log V`` for uniform logits; a collapsing student shows it falling towards 0."""
    with torch.no_grad(), autocast_off():
        log_q = F.log_softmax(logits.float(), dim=-1)
        ent = -(log_q.exp() * log_q).sum(dim=-1)
    return _reduce_tokens(ent, mask, reduction)


def codebook_usage(codes: Tensor, l_bins: int) -> dict[str, float]:
    """Codebook statistics of codes of any shape (values in ``[0, l_bins)``).

    Returns ``{"used": codes seen at least once, "fraction": used / l_bins, "entropy": entropy
    of the code histogram in nats, "perplexity": exp(entropy)}`` — the effective number of
    codes: k for uniform use of k codes, 1 for a single code (histogram helpers of
    :mod:`teacher.vqvae.losses`).
    """
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= l_bins):
        raise ValueError(f"codes must lie in [0, {l_bins})")
    counts = teacher_losses.code_counts(codes.long(), l_bins)
    entropy = float(teacher_losses.codebook_entropy(counts))
    used = int(teacher_losses.codebook_usage(counts))
    return {
        "used": used,
        "fraction": used / l_bins,
        "entropy": entropy,
        "perplexity": math.exp(entropy),
    }


def token_accuracy(pred_codes: Tensor, true_codes: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of positions where ``pred_codes`` equals ``true_codes`` (``LongTensor[B, T]``),
    per item: ``Tensor[B]``. Use it on the lower codes an upsampler (or student) produces from
    the TRUE upper codes of a clip, against the clip's true lower codes."""
    if pred_codes.shape != true_codes.shape:
        raise ValueError(
            f"predicted {tuple(pred_codes.shape)} and true {tuple(true_codes.shape)} codes "
            "differ in shape"
        )
    hits = (pred_codes == true_codes).float().reshape(pred_codes.shape[0], -1)
    if mask is not None:
        mask = mask.reshape(pred_codes.shape[0], -1)
    return _reduce_tokens(hits, mask, "mean")


# ---------------------------------------------------------------------------------------------
# Fréchet distance on an embedding we own


def _psd_sqrt(cov: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD ``Tensor[D, D]`` by eigen-decomposition."""
    vals, vecs = torch.linalg.eigh(cov)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


#: the (N, M, D) shapes frechet_distance already warned about
_WARNED_FD: set[tuple[int, int, int]] = set()


def frechet_distance(feats_a: Tensor, feats_b: Tensor, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``Tensor[N, D]`` and
    ``Tensor[M, D]`` (Dowson & Landau 1982; the FID/FAD formula):

        ``FD = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})``.

    Numerics (fp64): ``tr (Σ_a Σ_b)^{1/2}`` is computed as ``Σ_i sqrt(λ_i)`` with ``λ_i`` the
    eigenvalues of the symmetric PSD ``Σ_a^{1/2} Σ_b Σ_a^{1/2}`` (similar to ``Σ_a Σ_b``), so no
    non-symmetric ``sqrtm`` and no complex round-off to discard. Both covariances get a ridge
    ``eps·v̄·I`` (``v̄`` the mean feature variance of the two sets, so the ridge follows the
    features' scale; cf. pytorch-fid's offset for near-singular products): with fewer samples than
    dimensions (N <= D) the sample covariance is rank-deficient and the ridge keeps every
    square root defined; equal covariances still give 0. Rounding can push the result a hair
    below 0; it is clamped at 0. The estimate is biased upwards by O(D/N): compare numbers
    computed on equally many samples. Symmetric in its arguments.
    """
    if feats_a.dim() != 2 or feats_b.dim() != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"expected Tensor[N, D] and Tensor[M, D], got {tuple(feats_a.shape)} and "
            f"{tuple(feats_b.shape)}"
        )
    n, d = feats_a.shape
    m = feats_b.shape[0]
    if min(n, m) < 2:
        raise ValueError("need at least 2 feature vectors per set for a covariance")
    if min(n, m) <= d and (n, m, d) not in _WARNED_FD:  # once per shape: a report computes many
        _WARNED_FD.add((n, m, d))
        log.warning(
            "frechet_distance: %d and %d samples for %d dimensions; the covariances are "
            "rank-deficient and only the ridge (eps=%g, relative) keeps the distance defined",
            n,
            m,
            d,
            eps,
        )
    a = feats_a.detach().to(torch.float64)
    b = feats_b.detach().to(torch.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = torch.cov(a.T).reshape(d, d)
    cov_b = torch.cov(b.T).reshape(d, d)
    # ridge relative to the mean variance, so the distance scales as c² with the features
    scale = 0.5 * (torch.diagonal(cov_a).mean() + torch.diagonal(cov_b).mean())
    ridge = eps * scale.clamp_min(torch.finfo(torch.float64).tiny)
    eye = torch.eye(d, dtype=torch.float64, device=a.device)
    cov_a = cov_a + ridge * eye
    cov_b = cov_b + ridge * eye
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    inner = 0.5 * (inner + inner.T)  # symmetric up to rounding; eigvalsh needs it exactly
    tr_sqrt = torch.linalg.eigvalsh(inner).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * tr_sqrt
    return max(float(fd), 0.0)


@torch.no_grad()
def encoder_features(
    vqvae: torch.nn.Module, audio: Tensor, level: int, frames_per_vector: int | None = None
) -> Tensor:
    """Clip embeddings from the teacher VQ-VAE's level-``level`` encoder: the pre-quantisation
    latents ``Tensor[B, D, T_L]`` (:meth:`teacher.vqvae.VQVAE.encode_latents`) pooled over time
    into ``[mean ‖ std]`` -> ``Tensor[N, 2D]`` fp32.

    With ``frames_per_vector=None`` each clip gives one vector (N = B); with ``W`` frames, each
    clip is cut into ``T_L // W`` non-overlapping segments of W latent frames (the remainder is
    dropped), each pooled on its own (N = B · (T_L // W)) — more vectors per clip, which a
    2D-dimensional covariance needs. These features need no download; name distances on them
    after them (:data:`FD_VQ_NAME`), not "FAD".

    Args:
        audio: ``Tensor[B, 1, T]``, T a multiple of the level's hop length.
    """
    with autocast_off():
        z = vqvae.encode_latents(audio, level).float()  # [B, D, T_L]
    if frames_per_vector is not None:
        if frames_per_vector < 2:
            raise ValueError("frames_per_vector must be at least 2 (a std needs two frames)")
        n_seg = z.shape[-1] // frames_per_vector
        if n_seg < 1:
            raise ValueError(
                f"{z.shape[-1]} latent frames are fewer than frames_per_vector={frames_per_vector}"
            )
        z = rearrange(
            z[..., : n_seg * frames_per_vector], "b d (s w) -> (b s) d w", w=frames_per_vector
        )
    mean = z.mean(dim=-1)
    std = z.std(dim=-1, unbiased=False)
    return torch.cat([mean, std], dim=-1)


def fd_vq(
    vqvae: torch.nn.Module,
    audio_a: Tensor,
    audio_b: Tensor,
    level: int,
    frames_per_vector: int | None = None,
    eps: float = 1e-6,
) -> float:
    """FD-VQ: :func:`frechet_distance` between :func:`encoder_features` of two audio sets
    ``Tensor[B, 1, T]`` and ``Tensor[B', 1, T']`` at ``level``. Report it as
    :data:`FD_VQ_NAME` with the level (and ``frames_per_vector``)."""
    return frechet_distance(
        encoder_features(vqvae, audio_a, level, frames_per_vector),
        encoder_features(vqvae, audio_b, level, frames_per_vector),
        eps,
    )


__all__ = [
    "FD_VQ_NAME",
    "JUKEBOX_RESOLUTIONS",
    "codebook_usage",
    "encoder_features",
    "entropy_per_token",
    "fd_vq",
    "frechet_distance",
    "kl_per_token",
    "log_mel",
    "mel_l1",
    "mrstft_distance",
    "sc_db",
    "scaled_resolutions",
    "si_sdr",
    "teacher_nll_bits",
    "token_accuracy",
]
