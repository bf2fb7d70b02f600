"""Audio losses and metrics of the Jukebox VQ-VAE (``jukebox/utils/audio_utils.py``, paper §3.2).

Conventions: audio is ``Tensor[B, C, T]`` (channels-first, like auraloss) or ``Tensor[B, T]``;
multi-channel audio is averaged to mono before an STFT, as Jukebox does. The first argument is
always the reference ``x``, the second the reconstruction ``x_hat``. STFTs run in fp32 with
autocast disabled, whatever the input dtype or device, because magnitudes of long fp16/bf16 FFTs
are too coarse for these losses. Per-item results have shape ``[B]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from teacher.device import has_values

# Jukebox's default STFT (DefaultSTFTValues): used by the spectral loss, spectral convergence
# and the "spec" bandwidth statistic.
DEFAULT_N_FFT = 2048
DEFAULT_HOP = 256
DEFAULT_WIN = 1536


def _mono(x: Tensor) -> Tensor:
    """``Tensor[B, C, T]`` or ``Tensor[B, T]`` -> ``Tensor[B, T]`` (mean over channels)."""
    if x.dim() == 3:
        return x.mean(dim=1)
    if x.dim() == 2:
        return x
    raise ValueError(f"expected audio Tensor[B, C, T] or Tensor[B, T], got {tuple(x.shape)}")


def stft_magnitude(
    x: Tensor,
    n_fft: int = DEFAULT_N_FFT,
    hop_length: int = DEFAULT_HOP,
    win_length: int = DEFAULT_WIN,
) -> Tensor:
    """|STFT| of mono audio, fp32: ``Tensor[B, C, T]`` or ``[B, T]`` -> ``Tensor[B, F, N]``.

    Hann window of ``win_length``, centred frames with reflect padding (``torch.stft`` defaults,
    as Jukebox used). Signals no longer than ``n_fft // 2`` cannot be reflect-padded and are
    zero-padded instead.
    """
    x = _mono(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
        pad_mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"
        spec = torch.stft(
            x,
            n_fft,
            hop_length,
            win_length=win_length,
            window=window,
            center=True,
            pad_mode=pad_mode,
            return_complex=True,
        )
        return spec.abs()


def _item_norm(x: Tensor) -> Tensor:
    """Frobenius norm of each item: ``Tensor[B, ...]`` -> ``Tensor[B]``."""
    return x.reshape(x.shape[0], -1).pow(2).sum(dim=-1).sqrt()


# -- sample-domain reconstruction ---------------------------------------------------------------


def l1_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean absolute error over everything; scalar."""
    return torch.mean(torch.abs(x_hat.float() - x.float()))


def l2_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared error over everything; scalar."""
    return torch.mean((x_hat.float() - x.float()) ** 2)


def linf_loss(x: Tensor, x_hat: Tensor, k: int) -> Tensor:
    """Mean of the ``k`` largest squared errors of each item (a soft L-infinity); scalar.

    ``k`` is capped at the number of samples per item so short clips still work.
    """
    residual = ((x_hat.float() - x.float()) ** 2).reshape(x.shape[0], -1)
    values, _ = torch.topk(residual, min(k, residual.shape[1]), dim=1)
    return torch.mean(values)


def lmix_loss(
    x: Tensor,
    x_hat: Tensor,
    l1: float = 0.0,
    l2: float = 1.0,
    linf: float = 0.02,
    linf_k: int = 2048,
    bandwidth_l1: float = 1.0,
    bandwidth_l2: float = 1.0,
) -> Tensor:
    """Jukebox's "lmix" reconstruction loss; scalar.

    ``l1 * L1/bw_l1 + l2 * MSE/bw_l2 + linf * top-k(sq. err)/bw_l2``. The bandwidths are data
    statistics (mean |x| and variance), so the loss is comparable across datasets; terms with
    weight 0 are skipped.
    """
    loss = torch.zeros((), device=x.device)
    if l1:
        loss = loss + l1 * l1_loss(x, x_hat) / bandwidth_l1
    if l2:
        loss = loss + l2 * l2_loss(x, x_hat) / bandwidth_l2
    if linf:
        loss = loss + linf * linf_loss(x, x_hat, linf_k) / bandwidth_l2
    return loss


# -- spectral ------------------------------------------------------------------------------------


def spectral_loss(
    x: Tensor,
    x_hat: Tensor,
    n_fft: int = DEFAULT_N_FFT,
    hop_length: int = DEFAULT_HOP,
    win_length: int = DEFAULT_WIN,
) -> Tensor:
    """``‖|S(x)| − |S(x̂)|‖_F`` per item (not normalised): ``Tensor[B]``."""
    return _item_norm(
        stft_magnitude(x, n_fft, hop_length, win_length)
        - stft_magnitude(x_hat, n_fft, hop_length, win_length)
    )


def multispectral_loss(
    x: Tensor,
    x_hat: Tensor,
    n_ffts: Sequence[int] = (2048, 1024, 512),
    hops: Sequence[int] = (240, 120, 50),
    wins: Sequence[int] = (1200, 600, 240),
) -> Tensor:
    """Mean over resolutions of :func:`spectral_loss` per item: ``Tensor[B]``.

    Jukebox divides this by ``bandwidth.spec`` and averages over the batch.
    """
    if not len(n_ffts) == len(hops) == len(wins):
        raise ValueError("n_ffts, hops and wins must have the same length")
    losses = [spectral_loss(x, x_hat, n, h, w) for n, h, w in zip(n_ffts, hops, wins)]
    return torch.stack(losses).mean(dim=0)


def spectral_convergence(x: Tensor, x_hat: Tensor, epsilon: float = 2e-3) -> Tensor:
    """Spectral convergence ``‖|S|−|Ŝ|‖_F / ‖|S|‖_F`` per item: ``Tensor[B]``.

    STFT 2048/256/1536. As in Jukebox, items whose reference spectrum norm is at most
    ``epsilon`` (near silence) score 0 instead of a huge ratio, and the denominator is clamped
    at ``epsilon``.
    """
    s = stft_magnitude(x)
    s_hat = stft_magnitude(x_hat)
    ref = _item_norm(s)
    residual = _item_norm(s - s_hat)
    mask = (ref > epsilon).float()
    return residual * mask / ref.clamp_min(epsilon)


def sc_db(sc: Tensor, floor: float = 1e-10) -> Tensor:
    """Spectral convergence in decibels, ``20·log10(SC)`` (an amplitude ratio, hence 20).

    The paper's table quotes SC in dB (bottom level about −21 to −23 dB); lower is better. SC is
    clamped at ``floor`` (−200 dB) so a perfect reconstruction gives a finite number.
    """
    return 20.0 * torch.log10(sc.float().clamp_min(floor))


# -- codebook statistics -----------------------------------------------------------------------


def code_counts(codes: Tensor, l_bins: int) -> Tensor:
    """Histogram of code indices (any shape) -> ``Tensor[K]`` float counts (zeros in a
    shape-only run on meta/fake tensors, whose values a histogram cannot read)."""
    if not has_values(codes):
        return codes.new_zeros(l_bins, dtype=torch.float32)
    return torch.bincount(codes.reshape(-1), minlength=l_bins).float()


def codebook_usage(counts: Tensor) -> Tensor:
    """Number of codes used at least once, from ``Tensor[K]`` counts; scalar float."""
    return (counts > 0).sum().float()


def codebook_entropy(counts: Tensor) -> Tensor:
    """Entropy in nats of the code histogram ``Tensor[K]``; at most ``log K``.

    Uses Jukebox's ``-Σ p log(p + 1e-8)``; an empty histogram has entropy 0.
    """
    counts = counts.float()
    prob = counts / counts.sum().clamp_min(1e-30)
    return -torch.sum(prob * torch.log(prob + 1e-8))


def max_entropy(l_bins: int) -> float:
    """Entropy of a uniform code distribution, ``log K`` nats (for normalising reports)."""
    return math.log(l_bins)
