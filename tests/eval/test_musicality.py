"""Musicality measures on signals with known answers."""

import numpy as np
import pytest

from eval.musicality import (
    Musicality,
    chroma_similarity,
    mean_musicality,
    musicality,
    pitch_agreement,
    pitch_track,
    spectral_flatness,
    voiced_fraction,
)

SR = 16000


def _tone(f0: float, seconds: float = 1.0, harmonics: int = 4) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, harmonics + 1))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def test_a_tone_is_voiced_at_its_pitch_and_noise_is_not():
    tone = _tone(220.0)
    f0, voiced = pitch_track(tone, SR)
    assert voiced.mean() > 0.9
    assert abs(np.nanmedian(f0) - 220.0) < 2.0  # within ~15 cents
    assert voiced_fraction(_noise(), SR) < 0.1


def test_pitch_agreement_counts_right_pitches_only():
    ref = _tone(220.0)
    assert pitch_agreement(ref, ref, SR) > 0.95
    assert pitch_agreement(ref, _tone(221.0), SR) > 0.95  # 8 cents: inside the tolerance
    assert pitch_agreement(ref, _tone(233.1), SR) < 0.05  # a semitone off: voiced but wrong
    assert pitch_agreement(ref, _noise(), SR) < 0.05
    assert np.isnan(pitch_agreement(_noise(), ref, SR))  # no voiced reference frame


def test_chroma_similarity_and_flatness():
    c_major = _tone(261.63) + _tone(329.63) + _tone(392.0)
    f_sharp = _tone(369.99) + _tone(466.16) + _tone(277.18)
    assert chroma_similarity(c_major, c_major, SR) > 0.99
    assert chroma_similarity(c_major, f_sharp, SR) < 0.6
    assert spectral_flatness(_tone(220.0), SR) < 0.05
    assert spectral_flatness(_noise(), SR) > 0.3


def test_musicality_bundles_the_measures_and_means_skip_nan():
    ref = _tone(220.0)
    with_ref = musicality(_tone(220.0), SR, reference=ref)
    assert with_ref.voiced > 0.9 and with_ref.pitch_agreement > 0.95
    assert with_ref.chroma_similarity > 0.99 and with_ref.flatness < 0.05
    alone = musicality(_noise(), SR)
    assert np.isnan(alone.pitch_agreement) and np.isnan(alone.chroma_similarity)
    assert alone.voiced < 0.1 and alone.flatness > 0.3
    means = mean_musicality([with_ref, alone])
    assert means["pitch_agreement"] == pytest.approx(with_ref.pitch_agreement)
    assert means["voiced"] == pytest.approx((with_ref.voiced + alone.voiced) / 2)
    assert set(with_ref.to_dict()) == set(means)
    assert isinstance(with_ref, Musicality)


def test_non_finite_audio_is_refused():
    bad = _tone(220.0)
    bad[100] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        musicality(bad, SR)
