"""Is it music? Offline measures of pitch and tonality (DESIGN §11), beside MR-STFT in reports.

* :func:`voiced_fraction` — the fraction of frames librosa's pyin calls voiced (fmin 80 Hz,
  fmax 1 kHz): the synth songs' sung melody is voiced in 0.7-0.99 of frames, noise in ~0;
* :func:`pitch_agreement` — of the reference's voiced frames, the fraction where the estimate
  is voiced too and within 50 cents of the reference's f0 (mir_eval's raw pitch accuracy, with
  unvoiced estimates counted as misses): the measure where a ground truth exists, since a
  wrong-pitch tone is voiced;
* :func:`chroma_similarity` — mean frame-wise cosine similarity of the two signals'
  ``chroma_cqt`` (pitch classes: harmony and melody, octave-blind);
* :func:`spectral_flatness` — mean spectral flatness (Wiener entropy): ~0 for tones, → 1 for
  white noise.

:func:`musicality` computes all of them for one clip (pyin once per signal). Everything runs on
the CPU from numpy arrays ``float[T]``; pyin costs about a second per few seconds of audio.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

FMIN, FMAX = 80.0, 1000.0
#: pitch agreement tolerance (mir_eval's raw pitch accuracy)
CENTS = 50.0
#: the metric names (keys of :meth:`Musicality.to_dict`)
METRICS = ("voiced", "pitch_agreement", "chroma_similarity", "flatness")


def _mono(audio: np.ndarray | Sequence[float]) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("audio holds NaN or Inf samples")
    return x


def _frame(sample_rate: int) -> int:
    """pyin frame length: ~93 ms at 22.05 kHz (2048), 64 ms at 16 kHz (1024), >= 2 periods of
    ``FMIN``."""
    return 2048 if sample_rate > 20000 else 1024


def pitch_track(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(f0 Hz float[F] with NaN where unvoiced, voiced bool[F])`` by pyin, hop = frame / 4."""
    import librosa

    x = _mono(audio)
    frame = _frame(sample_rate)
    if x.size < frame:
        return np.full(0, np.nan), np.zeros(0, dtype=bool)
    f0, voiced, _ = librosa.pyin(
        x, fmin=FMIN, fmax=FMAX, sr=sample_rate, frame_length=frame, hop_length=frame // 4
    )
    voiced = np.asarray(voiced, dtype=bool) & np.isfinite(f0)
    return np.where(voiced, f0, np.nan), voiced


def voiced_fraction(audio: np.ndarray, sample_rate: int) -> float:
    """Fraction of pyin frames that are voiced (``nan`` for audio shorter than one frame)."""
    _, voiced = pitch_track(audio, sample_rate)
    return float(voiced.mean()) if voiced.size else float("nan")


def agreement_of_tracks(
    ref: tuple[np.ndarray, np.ndarray], est: tuple[np.ndarray, np.ndarray], cents: float = CENTS
) -> float:
    """Pitch agreement of two :func:`pitch_track` results (see :func:`pitch_agreement`)."""
    (f_ref, v_ref), (f_est, v_est) = ref, est
    n = min(v_ref.size, v_est.size)
    f_ref, v_ref, f_est, v_est = f_ref[:n], v_ref[:n], f_est[:n], v_est[:n]
    if not v_ref.any():
        return float("nan")
    both = v_ref & v_est
    diff = np.abs(1200.0 * np.log2(f_est[both] / f_ref[both]))
    return float((diff < cents).sum() / v_ref.sum())


def pitch_agreement(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, cents: float = CENTS
) -> float:
    """Of the reference's voiced frames, the fraction where ``estimate`` is voiced within
    ``cents`` of the reference's f0 (``nan`` when the reference has no voiced frame). The two
    signals are aligned at their first sample and compared over the shorter one."""
    return agreement_of_tracks(
        pitch_track(reference, sample_rate), pitch_track(estimate, sample_rate), cents
    )


def _chroma(x: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    with warnings.catch_warnings():  # the CQT's low octaves on short clips: expected
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        warnings.filterwarnings("ignore", message="Trying to estimate tuning", category=UserWarning)
        # 7 octaves from C1 as librosa does, fewer where they would pass the Nyquist frequency
        fmin = float(librosa.note_to_hz("C1"))
        octaves = int(np.clip(np.floor(np.log2(sample_rate / 2 / (fmin * 1.1))), 1, 7))
        return librosa.feature.chroma_cqt(
            y=x, sr=sample_rate, hop_length=512, fmin=fmin, n_octaves=octaves
        )


def chroma_similarity(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """Mean over frames of the cosine similarity of the two signals' ``chroma_cqt`` vectors
    (12 pitch classes; frames where either is silent count as 0)."""
    a, b = _chroma(_mono(reference), sample_rate), _chroma(_mono(estimate), sample_rate)
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n], b[:, :n]
    norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    cos = np.where(norms > 0, (a * b).sum(0) / np.maximum(norms, 1e-12), 0.0)
    return float(cos.mean()) if n else float("nan")


def spectral_flatness(audio: np.ndarray, sample_rate: int) -> float:
    """Mean spectral flatness (geometric / arithmetic mean of the power spectrum), frames of
    ``_frame(sample_rate)`` samples: ~0 for a tone, → 1 for white noise."""
    import librosa

    x = _mono(audio)
    frame = _frame(sample_rate)
    return float(librosa.feature.spectral_flatness(y=x, n_fft=frame, hop_length=frame // 4).mean())


@dataclass(frozen=True)
class Musicality:
    """The musicality of one clip; the reference-based numbers are ``nan`` without one."""

    voiced: float
    pitch_agreement: float
    chroma_similarity: float
    flatness: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def musicality(
    audio: np.ndarray,
    sample_rate: int,
    reference: np.ndarray | None = None,
    reference_track: tuple[np.ndarray, np.ndarray] | None = None,
) -> Musicality:
    """Every measure of this module for ``audio`` (``float[T]``), against ``reference`` (the
    ground truth of the same clip) when given; pyin runs once per signal (pass the reference's
    :func:`pitch_track` as ``reference_track`` to reuse it)."""
    x = _mono(audio)
    track = pitch_track(x, sample_rate)
    voiced = float(track[1].mean()) if track[1].size else float("nan")
    agree = chroma = float("nan")
    if reference is not None:
        ref = _mono(reference)
        agree = agreement_of_tracks(reference_track or pitch_track(ref, sample_rate), track)
        chroma = chroma_similarity(ref, x, sample_rate)
    return Musicality(voiced, agree, chroma, spectral_flatness(x, sample_rate))


def mean_musicality(rows: Sequence[Musicality]) -> dict[str, float]:
    """Per-metric mean over clips, ignoring ``nan`` (``nan`` when every clip has none)."""
    out = {}
    for name in METRICS:
        vals = np.array([getattr(r, name) for r in rows], dtype=float)
        vals = vals[np.isfinite(vals)]
        out[name] = float(vals.mean()) if vals.size else float("nan")
    return out


__all__ = [
    "CENTS",
    "METRICS",
    "Musicality",
    "agreement_of_tracks",
    "chroma_similarity",
    "mean_musicality",
    "musicality",
    "pitch_agreement",
    "pitch_track",
    "spectral_flatness",
    "voiced_fraction",
]
